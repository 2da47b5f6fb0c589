"""IFNet, the flow network of Practical-RIFE 4.7 and later, with the published parameter names.

One class covers the RIFE 4.x files people run; the differences are read from the state dict (see
:func:`wan_core.interpolate.weights.arch_of`):
- 4.7-4.9 (`rife47.pth`, `rife49.pth`): a two-layer encoder `encode.0`/`encode.1` (4 feature channels), 4 blocks;
- 4.10-4.18: a four-layer encoder `encode.0/2/4/6` with LeakyReLUs (8 channels), 4 blocks;
- 4.2x: the `Head` encoder `encode.cnn0..cnn3` (8 or 16 channels), 5 blocks that also pass 8 feature channels on.
Every block estimates a flow residual and a blend mask at a coarser scale; the last mask blends the two warped frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.2
# Frame sides are padded to a multiple of this (the coarsest block works at 1/16 and downsamples 4x more).
PAD_MULTIPLE = 64


@dataclass(frozen=True)
class IFNetArch:
    """The shape of one IFNet variant."""

    encoder_names: tuple[str, ...]  # parameter-name prefixes of the encoder layers, in order
    encoder_activations: bool  # LeakyReLU between the encoder layers (4.10+), or none (4.7-4.9)
    encoder_width: int  # channels of the encoder's hidden layers
    feature_channels: int  # channels the encoder gives per frame
    block_widths: tuple[int, ...]  # `c` of block0, block1, ...
    carried_channels: int  # feature channels a block hands to the next (4.2x: 8, else 0)
    head_outputs: int  # channels of each block's output before the pixel shuffle, divided by 4

    @property
    def scales(self) -> tuple[int, ...]:
        """The downscale each block works at: 8, 4, 2, 1 (4 blocks) or 16, 8, 4, 2, 1."""
        return tuple(2 ** i for i in reversed(range(len(self.block_widths))))


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: output(x) = image(x + flow(x)); flow in pixels, border padding (as Practical-RIFE)."""
    batch, _, height, width = flow.shape
    xs = torch.linspace(-1.0, 1.0, width, device=flow.device, dtype=flow.dtype).view(1, 1, width).expand(
        batch, height, width)
    ys = torch.linspace(-1.0, 1.0, height, device=flow.device, dtype=flow.dtype).view(1, height, 1).expand(
        batch, height, width)
    grid = torch.stack(
        [xs + flow[:, 0] / ((image.shape[3] - 1.0) / 2.0), ys + flow[:, 1] / ((image.shape[2] - 1.0) / 2.0)], dim=-1
    )
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def _conv(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.LeakyReLU(LEAKY_SLOPE, True))


class ResConv(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones((1, channels, 1, 1)))
        self.relu = nn.LeakyReLU(LEAKY_SLOPE, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x) * self.beta + x)


class IFBlock(nn.Module):
    """Flow residual, mask logit (and carried features) at 1/scale resolution, returned at full resolution."""

    def __init__(self, in_channels: int, width: int, head_outputs: int) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(_conv(in_channels, width // 2, 2), _conv(width // 2, width, 2))
        self.convblock = nn.Sequential(*(ResConv(width) for _ in range(8)))
        self.lastconv = nn.Sequential(nn.ConvTranspose2d(width, 4 * head_outputs, 4, 2, 1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor, flow: torch.Tensor | None, scale: float) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=1.0 / scale, mode="bilinear", align_corners=False)
        if flow is not None:
            flow = F.interpolate(flow, scale_factor=1.0 / scale, mode="bilinear", align_corners=False) / scale
            x = torch.cat((x, flow), 1)
        out = self.lastconv(self.convblock(self.conv0(x)))
        out = F.interpolate(out, scale_factor=scale, mode="bilinear", align_corners=False)
        return torch.cat((out[:, :4] * scale, out[:, 4:]), 1)


class Encoder(nn.Module):
    """Per-frame features: stride-2 conv, (3x3 convs,) a transposed conv back to full resolution."""

    def __init__(self, arch: IFNetArch) -> None:
        super().__init__()
        self.activations = arch.encoder_activations
        count = len(arch.encoder_names)
        for index, name in enumerate(arch.encoder_names):
            in_channels = 3 if index == 0 else arch.encoder_width
            if index == count - 1:
                layer: nn.Module = nn.ConvTranspose2d(in_channels, arch.feature_channels, 4, 2, 1)
            else:
                layer = nn.Conv2d(in_channels, arch.encoder_width, 3, 2 if index == 0 else 1, 1)
            self.add_module(name, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = list(self.children())
        for index, layer in enumerate(layers):
            x = layer(x)
            if self.activations and index < len(layers) - 1:
                x = F.leaky_relu(x, LEAKY_SLOPE)
        return x


class IFNet(nn.Module):
    """The interpolation network. ``forward(img0, img1, timestep)``: frames ``[B, 3, H, W]`` in 0..1 (any size; padded
    inside), ``timestep`` in (0, 1) -> the frame at that time, ``[B, 3, H, W]``."""

    def __init__(self, arch: IFNetArch) -> None:
        super().__init__()
        self.arch = arch
        self.encode = Encoder(arch)
        features = 2 * arch.feature_channels
        for index, width in enumerate(arch.block_widths):
            in_channels = 7 + features if index == 0 else 8 + 4 + features + arch.carried_channels
            self.add_module(f"block{index}", IFBlock(in_channels, width, arch.head_outputs))

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, timestep: float | torch.Tensor = 0.5) -> torch.Tensor:
        height, width = img0.shape[2:]
        pad = (0, -width % PAD_MULTIPLE, 0, -height % PAD_MULTIPLE)
        img0 = F.pad(img0.clamp(0, 1), pad)
        img1 = F.pad(img1.clamp(0, 1), pad)
        if torch.is_tensor(timestep):
            timestep = timestep.to(img0).view(-1, 1, 1, 1).expand(img0.shape[0], 1, *img0.shape[2:])
        else:
            timestep = torch.full_like(img0[:, :1], float(timestep))
        f0, f1 = self.encode(img0), self.encode(img1)
        carried = self.arch.carried_channels
        flow = mask = features = None
        warped0, warped1 = img0, img1
        for index, scale in enumerate(self.arch.scales):
            block = getattr(self, f"block{index}")
            if flow is None:
                out = block(torch.cat((img0, img1, f0, f1, timestep), 1), None, scale)
                flow = out[:, :4]
            else:
                inputs = [warped0, warped1, warp(f0, flow[:, :2]), warp(f1, flow[:, 2:4]), timestep, mask]
                if carried:
                    inputs.append(features)
                out = block(torch.cat(inputs, 1), flow, scale)
                flow = flow + out[:, :4]
            mask = out[:, 4:5]
            features = out[:, 5:5 + carried]
            warped0 = warp(img0, flow[:, :2])
            warped1 = warp(img1, flow[:, 2:4])
        blend = torch.sigmoid(mask)
        merged = warped0 * blend + warped1 * (1 - blend)
        return merged[:, :, :height, :width]
