"""U-Net (Ronneberger et al., 2015) and ResU-Net (residual blocks, Zhang et al., 2018) for 2D slices.

Both are encoder + decoder + 1x1 head and differ only in the block used at each level.
Input (N, C, H, W) with H and W divisible by 2**depth; output logits (N, out_channels, H, W),
one independent (sigmoid) map per target, so overlapping regions like WT/TC/ET are allowed.
With deep supervision, training-mode forward returns a list: the full-resolution logits first,
then auxiliary logits of the coarser decoder levels (each at its own resolution).
"""

from __future__ import annotations

import torch
from torch import nn

NORMS = ("batch", "instance", "group")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm, InstanceNorm (affine) or GroupNorm (8 groups, or fewer when channels are few)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"unknown norm '{kind}'; expected one of {NORMS}")


def _conv_norm_relu(in_channels: int, out_channels: int, norm: str) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), norm_layer(norm, out_channels),
            nn.ReLU(inplace=True)]


class DoubleConv(nn.Sequential):
    """(conv 3x3 -> norm -> ReLU) x 2, with optional dropout between: the plain U-Net block."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch", dropout: float = 0.0):
        layers = _conv_norm_relu(in_channels, out_channels, norm)
        if dropout:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers, *_conv_norm_relu(out_channels, out_channels, norm))


class ResidualBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut, ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(
            *_conv_norm_relu(in_channels, out_channels, norm),
            *([nn.Dropout2d(dropout)] if dropout else []),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            norm_layer(norm, out_channels),
        )
        self.shortcut = (
            nn.Identity() if in_channels == out_channels
            else nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), norm_layer(norm, out_channels))
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def check_divisible(x: torch.Tensor, factor: int, why: str = "2**depth") -> None:
    if x.shape[-2] % factor or x.shape[-1] % factor:
        raise ValueError(f"input {tuple(x.shape[-2:])} is not divisible by {why} = {factor}; "
                         f"pad or resize to {tuple(-(-s // factor) * factor for s in x.shape[-2:])}")


class Decoder(nn.Module):
    """Up-sampling path: from the bottleneck back to full resolution, concatenating skips.

    `widths[i]` is the channel count of encoder level i (0 = full resolution); the bottleneck is
    the last. Returns full-resolution features, plus the coarser decoder outputs for deep supervision.
    """

    def __init__(self, widths: list[int], block: type[nn.Module], norm: str, dropout: float):
        super().__init__()
        levels = range(len(widths) - 1)
        self.upsample = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                      for i in reversed(levels))
        self.blocks = nn.ModuleList(block(2 * widths[i], widths[i], norm, dropout) for i in reversed(levels))

    def forward(self, bottleneck: torch.Tensor, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        x, outputs = bottleneck, []
        for upsample, block, skip in zip(self.upsample, self.blocks, reversed(skips)):
            x = block(torch.cat([upsample(x), skip], dim=1))
            outputs.append(x)
        return outputs[::-1]  # full resolution first


class _EncoderDecoder(nn.Module):
    block: type[nn.Module]

    def __init__(self, in_channels: int, out_channels: int = 1, base_channels: int = 16, depth: int = 3,
                 norm: str = "batch", dropout: float = 0.0, deep_supervision: bool = False):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if deep_supervision and depth < 2:
            raise ValueError("deep supervision needs depth >= 2 (auxiliary outputs come from the coarser decoder "
                             f"levels), got depth {depth}")
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.depth = depth
        self.encoder = nn.ModuleList(
            [self.block(in_channels, widths[0], norm, 0.0)]
            + [self.block(widths[i], widths[i + 1], norm, dropout if i == depth - 1 else 0.0) for i in range(depth)]
        )
        self.pool = nn.MaxPool2d(2)
        self.decoder = Decoder(widths, self.block, norm, 0.0)
        self.head = nn.Conv2d(widths[0], out_channels, 1)  # one logit map per target
        # auxiliary heads on the two coarser decoder levels (half and quarter resolution)
        self.aux_heads = nn.ModuleList(nn.Conv2d(widths[i], out_channels, 1) for i in range(1, min(depth, 3))) \
            if deep_supervision else nn.ModuleList()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_divisible(x, 2**self.depth)
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else self.pool(x))
            skips.append(x)
        bottleneck = skips.pop()  # the bottleneck is not a skip connection
        features = self.decoder(bottleneck, skips)
        logits = self.head(features[0])
        if self.training and len(self.aux_heads):
            return [logits] + [head(f) for head, f in zip(self.aux_heads, features[1:])]
        return logits


class UNet(_EncoderDecoder):
    block = DoubleConv


class ResUNet(_EncoderDecoder):
    block = ResidualBlock
