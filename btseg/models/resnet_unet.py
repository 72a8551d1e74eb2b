"""U-Net with a ResNet-34 encoder, for transfer learning from ImageNet weights.

The encoder reproduces torchvision's `resnet34` module names (conv1, bn1, layer1..layer4, each
block conv1/bn1/conv2/bn2/downsample), so a torchvision-format state-dict file loads as is,
without torchvision and without any download. The first convolution is adapted to any channel
count: its RGB filters are averaged and repeated, scaled so activations keep their size.
Input (N, C, H, W) with H and W divisible by 32; output logits (N, out_channels, H, W).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from btseg.models.unet import DoubleConv, check_divisible

LAYERS = (3, 4, 6, 3)  # BasicBlocks per stage of ResNet-34
WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet34Encoder(nn.Module):
    """torchvision's resnet34 without avgpool/fc; returns features at 1/2, 1/4, 1/8, 1/16, 1/32."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_width = 64
        for index, (blocks, width) in enumerate(zip(LAYERS, WIDTHS), start=1):
            stride = 1 if index == 1 else 2
            layer = [BasicBlock(in_width, width, stride)] + [BasicBlock(width, width, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layer))
            in_width = width

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        x1 = self.layer1(self.maxpool(stem))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return [stem, x1, x2, x3, x4]


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """(64, 3, 7, 7) RGB filters -> (64, in_channels, 7, 7): mean over RGB, repeated, x 3/in_channels."""
    if weight.shape[1] == in_channels:
        return weight
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (weight.shape[1] / in_channels)


def load_encoder_weights(encoder: ResNet34Encoder, path: str | Path) -> None:
    """Load a torchvision-format resnet34 state dict (the `fc.*` classifier is dropped).

    Raises ValueError naming the file when it is not a resnet34 state dict.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, expected a resnet34 state dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    if "conv1.weight" in state:
        state["conv1.weight"] = adapt_first_conv(state["conv1.weight"], encoder.conv1.in_channels)
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"shape of {wrong[0]} is {tuple(state[wrong[0]].shape)}, "
                       f"resnet34 has {tuple(expected[wrong[0]].shape)}")
        raise ValueError(f"{path}: not a torchvision resnet34 state dict ({detail})")
    encoder.load_state_dict(state)


class ResNet34UNet(nn.Module):
    def __init__(self, in_channels: int, out_channels: int = 1, base_channels: int = 16, depth: int = 5,
                 norm: str = "batch", dropout: float = 0.0, deep_supervision: bool = False,
                 encoder_weights: str | None = None):
        super().__init__()
        if deep_supervision:
            raise ValueError("deep supervision is not available for resnet34_unet; use unet or resunet")
        self.encoder = ResNet34Encoder(in_channels)
        if encoder_weights:
            load_encoder_weights(self.encoder, encoder_weights)
        skips = (64, 64, 128, 256)  # stem, layer1, layer2, layer3
        widths = (256, 128, 64, 32)  # decoder output at 1/16, 1/8, 1/4, 1/2
        self.blocks = nn.ModuleList()
        previous = 512
        for skip, width in zip(reversed(skips), widths):
            self.blocks.append(DoubleConv(previous + skip, width, norm, dropout))
            previous = width
        self.final = DoubleConv(previous, base_channels, norm, 0.0)  # back at full resolution
        self.head = nn.Conv2d(base_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible(x, 32, "the encoder's total stride")  # five stride-2 steps
        features = self.encoder(x)
        y = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            y = block(torch.cat([F.interpolate(y, scale_factor=2, mode="nearest"), skip], dim=1))
        return self.head(self.final(F.interpolate(y, scale_factor=2, mode="nearest")))
