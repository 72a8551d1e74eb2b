"""U-Net (Ronneberger et al., 2015) and ResU-Net (residual blocks, Zhang et al., 2018) for 2D slices.

Both are encoder + decoder + 1x1 head and differ only in the block used at each level.
Input (N, C, H, W) with H and W divisible by 2**depth; output logits (N, out_channels, H, W),
one independent (sigmoid) map per target, so overlapping regions like WT/TC/ET are allowed.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class DoubleConv(nn.Sequential):
    """(conv 3x3 -> BN -> ReLU) x 2: the plain U-Net block."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(*_conv_bn_relu(in_channels, out_channels), *_conv_bn_relu(out_channels, out_channels))


class ResidualBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut, ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn_relu(in_channels, out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = (
            nn.Identity() if in_channels == out_channels
            else nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class _EncoderDecoder(nn.Module):
    block: type[nn.Module]

    def __init__(self, in_channels: int, out_channels: int = 1, base_channels: int = 16, depth: int = 3):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.depth = depth
        self.encoder = nn.ModuleList(
            [self.block(in_channels, widths[0])] + [self.block(widths[i], widths[i + 1]) for i in range(depth)]
        )
        self.pool = nn.MaxPool2d(2)
        # decoder goes from the bottleneck (widest) back up to full resolution
        self.upsample = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth)))
        self.decoder = nn.ModuleList(self.block(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], out_channels, 1)  # one logit map per target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2**self.depth
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"input {tuple(x.shape[-2:])} is not divisible by 2**depth = {factor}; "
                             f"pad or resize to {tuple(-(-s // factor) * factor for s in x.shape[-2:])}")
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()  # the bottleneck is not a skip connection
        for upsample, block in zip(self.upsample, self.decoder):
            x = block(torch.cat([upsample(x), skips.pop()], dim=1))
        return self.head(x)


class UNet(_EncoderDecoder):
    block = DoubleConv


class ResUNet(_EncoderDecoder):
    block = ResidualBlock
