"""What a LoRA costs on a GGUF expert, whose quantized layers apply it to the weight they dequantize for each call
(`wan_core/lora/deferred.py`).

One A14B expert at real shape with random Q4_K blocks (`low_vram.build_model`), bf16 compute, one forward per step
as Lightning's CFG 1 runs it. Variants, in rounds with the order rotated: no LoRA; a rank-64 LoRA on every block
Linear (low-rank pairs: added in the compute dtype); a LoKr on every block Linear (a change that needs the float32
weight). Prints seconds per forward, peak GPU memory and the LoRA's buffers, as JSON.

    python bench/gguf_lora.py                      # 480p, about 2 minutes on an H100
    python bench/gguf_lora.py --latent 21,90,160   # 720p
    python bench/gguf_lora.py --device cpu --tiny  # wiring check
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from low_vram import GIB, bench_device, build_model, report_head, time_steps  # noqa: E402
from report import emit  # noqa: E402

from wan_core.configs import DIT_CONFIGS  # noqa: E402
from wan_core.dit.gguf_linear import GGUFLinear  # noqa: E402
from wan_core.lora.adapters import Kronecker, LowRank  # noqa: E402
from wan_core.lora.formats import LoraLayer  # noqa: E402
from wan_core.lora.patch import merge_layer  # noqa: E402
from wan_core.patching import set_patches  # noqa: E402


class InMemoryLora:
    """A ModelPatch of random factors on every GGUF Linear (the bench needs no LoRA file of 0.6 GB)."""

    def __init__(self, form: str, rank: int, seed: int) -> None:
        self.form, self.rank, self.seed = form, rank, seed

    def __hash__(self) -> int:
        return hash((self.form, self.rank, self.seed))

    def apply(self, module: torch.nn.Module, expert: str, weights) -> None:  # noqa: ANN001 - PatchedWeights
        gen = torch.Generator().manual_seed(self.seed)
        for name, layer in module.named_modules():
            if not isinstance(layer, GGUFLinear):
                continue
            out, inp = layer.out_features, layer.in_features
            if self.form == "lora":
                adapter = LowRank(down=(torch.randn(self.rank, inp, generator=gen) * inp ** -0.5).bfloat16(),
                                  up=(torch.randn(out, self.rank, generator=gen) * 0.01).bfloat16())
            else:
                adapter = Kronecker(w1=torch.randn(8, 8, generator=gen).bfloat16(),
                                    w2=(torch.randn(out // 8, inp // 8, generator=gen) * 1e-3).bfloat16())
            merge_layer(module, LoraLayer(module=name, adapter=adapter), 1.0, weights)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--latent", default="21,60,104", help="frames,height,width of the latent (480p: 21,60,104)")
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default="none,lora,lokr")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--json", default="")
    args = p.parse_args()
    device = bench_device(args.device)
    cfg = DIT_CONFIGS["t2v-A14B"]
    frames, height, width = (int(v) for v in args.latent.split(","))
    if args.tiny:
        cfg = DIT_CONFIGS["tiny-t2v"].replace(dim=256, ffn_dim=512, num_heads=2, num_layers=2)
        frames, height, width = 1, 4, 4
    model = build_model(cfg, "Q4_K", device)
    gen = torch.Generator(device).manual_seed(0)
    latent = torch.randn(1, cfg.in_dim, frames, height, width, device=device, generator=gen)
    context = torch.randn(cfg.text_len, cfg.text_dim, device=device, generator=gen, dtype=torch.bfloat16)
    patches = {"none": [], "lora": [InMemoryLora("lora", args.rank, 1)], "lokr": [InMemoryLora("lokr", 0, 2)]}
    variants = [v.strip() for v in args.variants.split(",")]
    times: dict[str, list[float]] = {v: [] for v in variants}
    extra: dict[str, dict] = {}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for round_index in range(args.rounds):
            order = variants[round_index % len(variants):] + variants[: round_index % len(variants)]
            for variant in order:
                set_patches(model, patches[variant], "low_noise")
                time_steps(model, latent[:, :, :1, :8, :8].contiguous(), context, 1)  # warm the kernels
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                # time_steps runs two forwards a step (CFG); Lightning's CFG 1 runs one
                times[variant].append(time_steps(model, latent, context, 1) / 2)
                buffers = sum(b.numel() * b.element_size() for m in model.modules() if isinstance(m, GGUFLinear)
                              for b in m.changes.buffers())
                extra[variant] = {"lora_buffers_gib": round(buffers / GIB, 3)}
                if device.type == "cuda":
                    extra[variant]["peak_gpu_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 2)
    base = statistics.median(times["none"]) if "none" in times else None
    rows = {v: {"s_per_forward": [round(t, 3) for t in ts], "median": round(statistics.median(ts), 3),
                **({"vs_none": round(statistics.median(ts) / base, 3)} if base else {}), **extra[v]}
            for v, ts in times.items()}  # fmt: skip
    emit({**report_head(device), "model": "A14B expert, Q4_K blocks", "latent": [frames, height, width],
          "tokens": frames * height * width // 4, "rank": args.rank, "variants": rows}, args.json)


if __name__ == "__main__":
    main()
