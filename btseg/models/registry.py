"""Segmentation models by name: `create_model("unet", in_channels=4)`.

The names are params validation's (btseg.config.MODEL_NAMES, which imports no torch); each gets
its class here, in the same order.
"""

from __future__ import annotations

from torch import nn

from btseg.config import MODEL_NAMES
from btseg.models.resnet_unet import ResNet34UNet
from btseg.models.unet import ResUNet, UNet

MODELS: dict[str, type[nn.Module]] = dict(zip(MODEL_NAMES, (UNet, ResUNet, ResNet34UNet), strict=True))


def create_model(name: str, *, in_channels: int, out_channels: int = 1, base_channels: int = 16, depth: int = 3,
                 norm: str = "batch", dropout: float = 0.0, deep_supervision: bool = False,
                 encoder_weights: str | None = None) -> nn.Module:
    """Build a registered model; an unknown name is an error listing the valid ones.

    `encoder_weights` (a torchvision-format resnet34 state-dict file) applies to resnet34_unet only,
    whose depth is fixed at 5.
    """
    try:
        model_class = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model '{name}'; expected one of {sorted(MODELS)}") from None
    kwargs = dict(in_channels=in_channels, out_channels=out_channels, base_channels=base_channels, depth=depth,
                  norm=norm, dropout=dropout, deep_supervision=deep_supervision)
    if model_class is ResNet34UNet:
        return ResNet34UNet(**{**kwargs, "depth": 5}, encoder_weights=encoder_weights)
    if encoder_weights:
        raise ValueError(f"encoder weights are for resnet34_unet, not {name}")
    return model_class(**kwargs)
