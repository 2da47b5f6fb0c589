"""DiT forwards replayed from CUDA graphs (`wan_core.dit.cuda_graphs`): the eager output bit for bit, one capture per
signature, weights that change in place or move, threads, and a whole sampling run. Skipped without CUDA."""

from __future__ import annotations

import threading

import pytest
import torch

from tests.test_gpu import _fp8_rows_capable, _skip_unless_runs, _tiny_pair
from wan_core.dit.cuda_graphs import MAX_GRAPHS, STATE_KEY, captured_signatures, graphed_forward, release_cuda_graphs
from wan_core.dit.model import WanDiT
from wan_core.placement_state import peek_state

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _inputs(seed: int, tokens: int = 20, device: str = "cuda"):
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(1, 16, 3, 16, 16, device=device, generator=gen)
    t = torch.tensor([100.0 + 50 * seed], device=device)
    return x, t, [torch.randn(tokens, 64, device=device, generator=gen).bfloat16()]


def _count_calls(model: WanDiT) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _captured(model: WanDiT) -> int:
    return captured_signatures(model)


@pytest.mark.parametrize("backend", ["sdpa", "flash_attn", "int8_triton"])
@pytest.mark.parametrize("fp8_compute", [False, True], ids=["bf16", "fp8"])
def test_replays_give_the_eager_output_bit_for_bit(backend, fp8_compute):
    from wan_core.dit.attention import get_backend

    _skip_unless_runs(backend)
    if fp8_compute and not _fp8_rows_capable():
        pytest.skip("rowwise fp8 needs sm_89+")
    model, _ = _tiny_pair(fp8_compute)
    attention = get_backend(backend, "cuda")
    calls = _count_calls(model)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for seed, tokens in ((0, 20), (1, 7), (2, 33)):  # prompts of any length share the graph
            x, t, context = _inputs(seed, tokens)
            want = model(x, t, context, attention=attention)
            got = graphed_forward(model, x, t, context, attention=attention)
            assert torch.equal(got, want), (seed, tokens)
    assert calls[0] == 3 + 2  # the eager references, then the first graphed call's eager run and its capture
    assert _captured(model) == 1


def test_a_new_signature_captures_again_and_old_ones_are_dropped_beyond_the_limit():
    model, _ = _tiny_pair()
    _, t, context = _inputs(0)
    x = torch.randn(1, 16, MAX_GRAPHS + 1, 16, 16, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for frames in range(1, MAX_GRAPHS + 2):
            graphed_forward(model, x[:, :, :frames], t, context)
        assert _captured(model) == MAX_GRAPHS
        # batch 2 (CFG as one batch), a context per item
        batched = graphed_forward(model, x.expand(2, -1, -1, -1, -1), t.expand(2), [context[0], context[0][:5]])
        assert torch.equal(batched, model(x.expand(2, -1, -1, -1, -1), t.expand(2), [context[0], context[0][:5]]))


def test_weights_changed_in_place_are_used_and_moved_weights_capture_again():
    model, _ = _tiny_pair()
    x, t, context = _inputs(0)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        graphed_forward(model, x, t, context)
        graphed_forward(model, x, t, context)
        weight = model.blocks[0].ffn[0].weight
        weight.mul_(1.5)  # a LoRA merge writes in place (`wan_core.patching`): the graph reads the new values
        assert torch.equal(graphed_forward(model, x, t, context), model(x, t, context))
        assert _captured(model) == 1
        model.blocks[0].ffn[0].weight = torch.nn.Parameter(weight * 0.5)  # a new tensor: a new address
        assert torch.equal(graphed_forward(model, x, t, context), model(x, t, context))
        assert _captured(model) == 1
        weight = model.patch_embedding.weight
        assert peek_state(model, STATE_KEY).weights[0] == (weight.device, weight.data_ptr())


def _overwrite_freed_memory() -> None:
    """Allocate and fill what the caching allocator holds free, so that a replay reading freed memory reads junk."""
    junk = [torch.randn(1 << 18, device="cuda") for _ in range(64)]
    del junk


def _replays_equal_eager(model: WanDiT, seeds: range) -> list[int]:
    """The seeds whose replayed forward differs from the eager one, in one autocast region."""
    differ = []
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for seed in seeds:
            x, t, context = _inputs(seed)
            if not torch.equal(graphed_forward(model, x, t, context), model(x, t, context)):
                differ.append(seed)
    return differ


def test_float32_weights_replay_in_later_autocast_regions():
    """Autocast caches its bf16 casts of float32 weights for one region and frees them at its end; a graph that read
    the cache would replay on freed memory in the next job (it gave NaN)."""
    _, model = _tiny_pair()  # float32 weights, as official checkpoints are stored
    assert _replays_equal_eager(model, range(3)) == []
    _overwrite_freed_memory()
    assert _replays_equal_eager(model, range(3, 6)) == []
    assert _captured(model) == 1


def test_replays_outlive_the_models_rope_cache():
    """The model keeps RoPE tables for a few grids and drops them all when it needs another; forwards on other sizes
    between replays (another job's size, an eager path) must not free the table a graph reads."""
    model, _ = _tiny_pair()
    assert _replays_equal_eager(model, range(3)) == []
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        _, t, context = _inputs(0)
        for frames in (1, 2, 4, 5, 6):
            model(torch.randn(1, 16, frames, 16, 16, device="cuda"), t, context)
    _overwrite_freed_memory()
    assert _replays_equal_eager(model, range(3, 6)) == []


def test_a_forward_that_cannot_be_captured_runs_eagerly_and_later_captures_still_work(caplog):
    """A forward with a host sync inside cannot be captured: it and its signature run eagerly from then on, and the
    thread's capture stream still serves other models."""
    failing, _ = _tiny_pair()
    failing.head.register_forward_hook(
        lambda module, args, out: out.sum().item() if torch.cuda.is_current_stream_capturing() else None)
    working, _ = _tiny_pair()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for seed in range(3):
            x, t, context = _inputs(seed)
            assert torch.equal(graphed_forward(failing, x, t, context), failing(x, t, context))
        assert _captured(failing) == 0
        for seed in range(3):
            x, t, context = _inputs(seed)
            assert torch.equal(graphed_forward(working, x, t, context), working(x, t, context))
        assert _captured(working) == 1
    assert sum("its capture failed" in r.getMessage() for r in caplog.records) == 1


def test_captures_leave_no_memory_behind_once_dropped():
    """Capture and drop again and again (weights that move, as ComfyUI's unloads do): what stays allocated must not
    grow (a new capture stream each time left a cuBLAS workspace in every graph's pool: 33 MiB a capture)."""
    import gc

    model, _ = _tiny_pair()
    x, t, context = _inputs(0)

    def cycle() -> int:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            graphed_forward(model, x, t, context)
            graphed_forward(model, x, t, context)
        assert _captured(model) == 1
        release_cuda_graphs(model)
        gc.collect()
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()

    after_first = cycle()
    for _ in range(4):
        after = cycle()
    assert after - after_first < 2**20


def test_moving_the_model_off_the_gpu_drops_its_graphs_and_staying_keeps_them():
    from wan_core.mapped_weights import move_weights
    from wan_core.runtime import move_to

    model, _ = _tiny_pair()
    x, t, context = _inputs(0)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        graphed_forward(model, x, t, context)
    assert _captured(model) == 1
    move_weights(model, "cuda")  # ComfyUI's memory manager "loads" a resident model at every prompt: nothing moves
    assert _captured(model) == 1
    move_to(model, "cpu")  # the sampler's offload
    assert _captured(model) == 0
    release_cuda_graphs(model)  # nothing left to drop
    move_to(model, "cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        graphed_forward(model, x, t, context)
    move_weights(model, "cpu")  # ComfyUI's memory manager unloading it (nodes/memory_manager.py)
    assert _captured(model) == 0


def test_forwards_the_graphs_cannot_hold_run_eagerly():
    from wan_core.dit.block_swap import enable_block_swap

    model, _ = _tiny_pair()
    x, t, context = _inputs(0)
    per_token = t.expand(1, 3 * 8 * 8).clone()
    per_token[:, :64] = 0  # ti2v's first frame
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.equal(graphed_forward(model, x, per_token, context), model(x, per_token, context))
        with torch.enable_grad():
            graphed_forward(model, x, t, context)
        assert _captured(model) == 0
        enable_block_swap(model, 1)
        assert torch.equal(graphed_forward(model, x, t, context), model(x, t, context))
    assert _captured(model) == 0


def test_sageattention_2_runs_eagerly():
    from wan_core.dit.attention import get_backend

    _skip_unless_runs("sage")
    model, _ = _tiny_pair()
    attention = get_backend("sage", "cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for seed in range(3):
            x, t, context = _inputs(seed)
            assert torch.equal(graphed_forward(model, x, t, context, attention=attention),
                               model(x, t, context, attention=attention))
    assert _captured(model) == 0


def test_the_cudamallocasync_allocator_runs_eagerly():
    """ComfyUI runs torch with `backend:cudaMallocAsync` by default; graphs there ended the server (freeing a graph's
    memory raised in the allocator, outside Python)."""
    import os
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from tests.test_gpu import _tiny_pair\n"
        "from tests.test_gpu_cuda_graphs import _inputs\n"
        "from wan_core.dit.cuda_graphs import captured_signatures, graphed_forward, release_cuda_graphs\n"
        "assert torch.cuda.get_allocator_backend() == 'cudaMallocAsync'\n"
        "model, _ = _tiny_pair()\n"
        "with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):\n"
        "    for seed in range(3):\n"
        "        x, t, context = _inputs(seed)\n"
        "        assert torch.equal(graphed_forward(model, x, t, context), model(x, t, context))\n"
        "assert captured_signatures(model) == 0\n"
        "release_cuda_graphs(model)\n"
        "print('eager')\n"
    )
    env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0 and done.stdout.strip() == "eager", done.stderr[-3000:]


def test_threads_capture_and_replay_while_others_allocate():
    """The batch queue's shape: a denoising thread per GPU (here all on the GPUs there are) and a thread that keeps
    allocating and synchronizing, as a decode on the same GPU does; captures are per thread."""
    devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    work = []
    for i in range(2):
        model, _ = _tiny_pair()
        device = devices[i % len(devices)]
        work.append((model.to(device), [_inputs(seed, 5 + seed, device) for seed in range(4)], device))
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    stop = threading.Event()

    def denoise(index: int) -> None:
        model, inputs, device = work[index]
        try:
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16), torch.cuda.device(device):
                results[index] = [graphed_forward(model, *item) for _ in range(3) for item in inputs]
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    def allocate() -> None:
        # Own generators: a capture takes over each device's default one (the pack's noise has its own, too).
        generators = [torch.Generator(device).manual_seed(0) for device in devices]
        while not stop.is_set():
            for device, generator in zip(devices, generators, strict=True):
                torch.randn(1 << 20, device=device, generator=generator).sum().item()

    noise = threading.Thread(target=allocate)
    noise.start()
    threads = [threading.Thread(target=denoise, args=(i,)) for i in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    noise.join()
    assert not errors, errors
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for index, (model, inputs, device) in enumerate(work):
            with torch.cuda.device(device):
                want = [model(*item) for item in inputs] * 3
            assert all(torch.equal(a, b) for a, b in zip(results[index], want, strict=True)), index


def test_a_sampling_run_with_graphs_is_the_run_without():
    from wan_core.pipeline.denoise import sample_latents
    from wan_core.pipeline.request import SamplingRequest
    from wan_core.runtime import Runtime

    high, _ = _tiny_pair()
    low, _ = _tiny_pair()
    with torch.no_grad():
        for p in low.parameters():
            p.mul_(0.9)
    request = SamplingRequest.create("t2v-A14B", width=128, height=128, frame_num=9, seed=3, steps=4, shift=5.0,
                                     guide_scale=(3.0, 4.0), boundary_step=2, has_image=False)
    cond, uncond = _inputs(0, 20)[2], _inputs(1, 9)[2]
    calls = [_count_calls(high), _count_calls(low)]
    runs = {}
    for graphs in (False, True):
        runtime = Runtime.create("cuda", cuda_graphs=graphs)
        runs[graphs] = sample_latents(request, high_noise_model=high, low_noise_model=low, cond=cond,
                                      uncond=uncond, runtime=runtime)
        if not graphs:
            assert [c[0] for c in calls] == [4, 4]  # 2 steps each, cond and uncond
    assert torch.equal(runs[True], runs[False])
    assert [c[0] for c in calls] == [4 + 2, 4 + 2]  # per expert one eager run and its capture, then replays


def test_a_gguf_expert_with_a_lora_replays_right_after_a_strength_switch(tmp_path):
    """The batch node on a small card: a GGUF expert (the Triton dequantization inside the graph) with a LoRA
    applied to the weights its layers dequantize; a strength switch makes new factor buffers, captured again."""
    pytest.importorskip("gguf")
    import numpy as np
    from test_gguf import _write_gguf
    from test_lora_gguf import lora_file

    from wan_core.dit.loader import load_dit
    from wan_core.lora import LoraPatch
    from wan_core.patching import set_patches

    path = tmp_path / "expert_Q4_K_M.gguf"
    reference, quantized = _write_gguf(path, np.random.default_rng(0))
    modules = sorted(name[: -len(".weight")] for name in quantized)
    lora = lora_file(tmp_path, "lora", modules, {m: tuple(reference[m + ".weight"].shape) for m in modules}, "lora", 2)
    model = load_dit(path, dtype=torch.bfloat16).cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    x, t = torch.randn(1, 16, 2, 4, 4, device="cuda", generator=gen), torch.tensor([500.0], device="cuda")
    context = [torch.randn(5, 64, device="cuda", generator=gen).bfloat16()]
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for strength in (1.0, 0.3):
            set_patches(model, [LoraPatch(lora, strength)], "low_noise")
            want = model(x, t, context)
            for _ in range(2):
                assert torch.equal(graphed_forward(model, x, t, context), want), strength
    assert _captured(model) == 1
