"""Segmentation models by name: `create_model("unet", in_channels=4)`."""

from __future__ import annotations

import torch
from torch import nn

from btseg.errors import PipelineError
from btseg.models.resnet_unet import ResNet34UNet
from btseg.models.unet import ResUNet, UNet

MODEL_FORMAT = 2  # version of model.pt's contents; bump when they change, predict refuses others
MODELS: dict[str, type[nn.Module]] = {"unet": UNet, "resunet": ResUNet, "resnet34_unet": ResNet34UNet}


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


class Ensemble(nn.Module):
    """Several models of one architecture (cross-validation folds) as one: the mean of their
    probabilities, returned as logits so that callers apply the sigmoid as for a single model."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([torch.sigmoid(member(x).float()) for member in self.members]).mean(dim=0)
        return torch.logit(probabilities, eps=1e-6)


def _why_not_a_model(path, error: Exception) -> str:
    """In our words why `path` is no model file: PyTorch's own message speaks of its loader's internals."""
    if isinstance(error, KeyError) or "weights only" in str(error).lower():
        try:  # our own training checkpoint holds RNG states, which the safe loader refuses
            if "fingerprint" in torch.load(path, map_location="cpu", weights_only=False):
                return "a training checkpoint (checkpoint.pt), not a model file; use model.pt beside it"
        except Exception:  # noqa: BLE001 - anything unloadable is simply not a model file
            pass
    return ("not a model file of this pipeline (a file the train stage writes as models/<dataset>/<model>/model.pt); "
            f"{type(error).__name__} while reading it")


def load_model_file(path) -> tuple[nn.Module, dict]:
    """Model (eval mode, on CPU) and the contents of a model file: model.pt written by the train stage,
    or the ensemble of cross-validation folds written by the cv_summary stage."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(checkpoint, dict):
            raise TypeError(f"holds a {type(checkpoint).__name__}, expected a dict")
        # the weights come from the checkpoint itself: no pretrained file is needed to rebuild it;
        # an ensemble file (cross-validation) holds one state dict per fold under "members"
        states = checkpoint["members"] if "members" in checkpoint else [checkpoint["state_dict"]]
        networks = []
        for state in states:
            network = create_model(checkpoint["model"], **{**checkpoint["model_args"], "encoder_weights": None})
            network.load_state_dict(state)
            networks.append(network)
        model = Ensemble(networks) if "members" in checkpoint else networks[0]
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; run the train stage first") from None
    except IsADirectoryError:
        raise PipelineError(f"{path}: a folder; give the model file inside it (model.pt)") from None
    except Exception as error:  # torch.load raises many types (EOF, unpickling, zip) for a damaged file
        raise PipelineError(f"{path}: {_why_not_a_model(path, error)}") from None
    return model.eval(), checkpoint
