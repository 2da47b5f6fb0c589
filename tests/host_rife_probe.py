"""Our IFNet against the IFNet of a real ComfyUI's own frame interpolation (`comfy_extras/frame_interpolation_models`,
ComfyUI >= 0.2x), run with that ComfyUI's Python by `tests/test_interpolate.py`: random RIFE 4.2x weights in ComfyUI's
names (`blocks.N.`, as its loader keeps them) for the light, default and heavy widths; prints one JSON line with the
largest output difference and how far the frames moved.

    python tests/host_rife_probe.py COMFYUI_DIR PACK_DIR
"""

import json
import sys

comfyui_dir, pack_dir = sys.argv[1:3]
sys.argv = [sys.argv[0], "--cpu"]
sys.path[:0] = [comfyui_dir, pack_dir]

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import torch  # noqa: E402
from comfy_extras.frame_interpolation_models.ifnet import IFNet, detect_rife_config  # noqa: E402

from wan_core.interpolate.weights import ifnet_from_state_dict  # noqa: E402

gen = torch.Generator().manual_seed(1)
report = []
for head_channels, widths in ((4, (192, 128, 96, 64, 32)), (8, (192, 128, 96, 64, 32)), (16, (256, 192, 128, 96, 48))):
    reference = IFNet(head_ch=head_channels, channels=widths).eval()
    state = {key: 0.5 + 0.1 * torch.randn(value.shape, generator=gen) if key.endswith("beta")
             else 0.05 * torch.randn(value.shape, generator=gen) for key, value in reference.state_dict().items()}
    state["blocks.4.lastconv.0.weight"][:, 16:20] *= 100  # a blend mask spread over (0, 1), not stuck at 0.5
    state["blocks.4.lastconv.0.bias"][16:20] *= 100
    reference.load_state_dict(state)
    assert detect_rife_config(state) == (head_channels, list(widths))
    ours = ifnet_from_state_dict(state, source="ComfyUI-named weights")
    img0, img1 = torch.rand(2, 3, 128, 192, generator=gen), torch.rand(2, 3, 128, 192, generator=gen)
    with torch.no_grad():
        for timestep in (0.5, 0.25):
            expected = reference(img0, img1, timestep)
            report.append({"head": head_channels, "timestep": timestep,
                           "max_difference": (ours(img0, img1, timestep) - expected).abs().max().item(),
                           "moved": (expected - 0.5 * (img0 + img1)).abs().mean().item()})
print(json.dumps(report))
