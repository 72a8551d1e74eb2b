"""The model file (model.pt, ensemble.pt): its one owner. Train and cross-validation write it here;
evaluate, cv_summary, bts-predict and bts-export read it here.

A model file is a dict of tensors and plain values (no classes), read with PyTorch's safe loader
(`weights_only=True`) and nothing else: model files are shared between people, and a file that
needs the full unpickler to load is refused without ever being unpickled that way. Its contents:

- `format_version` (`MODEL_FORMAT`): a reader refuses any other version;
- `model`, `model_args`: the architecture (btseg.models.create_model) and its arguments;
- `state_dict`, or `members` (one state dict per cross-validation fold: an ensemble);
- `threshold`, `postprocess`, `min_component_voxels`, `tta`: the decisions made on validation
  (btseg.decisions) and the remove_small sizes they were chosen among;
- `best_epoch`, `val_case_dice`, `stopped_early`, `train_params`: how it was trained;
- `data_meta`, `inference_meta`: what its training slices held and how images were prepared;
- `ran`: what training ran on (device, precision and layout as train.speed resolved them there,
  threads, torch.compile, whether the thread count followed the machine's load and, if so, the
  training steps run at each count): train.speed's `auto` means bf16 on one CPU and fp32 on another.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from btseg.errors import PipelineError
from btseg.fileio import atomic_file
from btseg.models.registry import create_model

MODEL_FORMAT = 2  # version of the contents above; bump when they change, every reader refuses others
CHECKPOINT_KEY = "fingerprint"  # the key by which a training checkpoint (btseg.training.checkpoint) is told apart


class Ensemble(nn.Module):
    """Several models of one architecture (cross-validation folds) as one: the mean of their
    probabilities, returned as logits so that callers apply the sigmoid as for a single model."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([torch.sigmoid(member(x).float()) for member in self.members]).mean(dim=0)
        return torch.logit(probabilities, eps=1e-6)


def write_model_file(path: Path, *, model: str, model_args: dict, state_dict: dict, threshold: float, postprocess: str,
                     min_component_voxels: list[int], tta: bool, best_epoch: int, val_case_dice: float,
                     stopped_early: bool, train_params: dict, data_meta: dict, inference_meta: dict,
                     ran: dict | None = None) -> None:
    """Write a model file of one model (the train stage's model.pt), atomically."""
    with atomic_file(path) as partial:
        torch.save({
            "format_version": MODEL_FORMAT,
            "threshold": threshold,
            "postprocess": postprocess,  # btseg.decisions.postprocess rule, chosen on validation
            "min_component_voxels": min_component_voxels,  # the remove_small sizes it was chosen among
            "tta": tta,  # predictions are the mean over flips
            "model": model,
            "model_args": model_args,
            "state_dict": state_dict,
            "best_epoch": best_epoch,
            "val_case_dice": val_case_dice,
            "stopped_early": stopped_early,
            "train_params": train_params,
            "data_meta": data_meta,
            # what prediction needs besides: how images were prepared and the files' channel order
            "inference_meta": inference_meta,
            "ran": ran or {},  # device, precision, layout, threads as training resolved train.speed
        }, partial)


def write_ensemble(path: Path, folds: Sequence[dict], threshold: float, postprocess: str) -> None:
    """One model file holding every fold's weights (`members`), from the folds' model file contents;
    every reader takes it as one model (the mean of the folds' probabilities)."""
    first = folds[0]
    with atomic_file(path) as partial:
        torch.save({**{k: first[k] for k in ("format_version", "model", "model_args", "train_params", "data_meta",
                                             "inference_meta")}, "ran": first.get("ran", {}),
                    "members": [c["state_dict"] for c in folds], "threshold": threshold, "postprocess": postprocess,
                    "tta": bool(first.get("tta", False)), "best_epoch": [c["best_epoch"] for c in folds],
                    "val_case_dice": float(np.mean([c["val_case_dice"] for c in folds])),
                    "stopped_early": any(c["stopped_early"] for c in folds)}, partial)


def load_model_file(path) -> tuple[nn.Module, dict]:
    """Model (eval mode, on CPU) and the contents of a model file (a single model or an ensemble).

    Read with the safe loader only; anything else (a damaged file, a pickle of other objects, a
    training checkpoint, another format version) is a PipelineError naming the file."""
    contents = _safe_load(path)
    if CHECKPOINT_KEY in contents and "state_dict" not in contents:
        raise PipelineError(f"{path}: a training checkpoint (checkpoint.pt), not a model file; "
                            "use the model.pt of its run")
    if "format_version" not in contents:
        raise PipelineError(f"{path}: {_NOT_OURS}; it holds no format_version")
    if contents["format_version"] != MODEL_FORMAT:
        raise PipelineError(f"{path}: model file format {contents['format_version']}, this version reads "
                            f"{MODEL_FORMAT}; retrain it with `dvc repro`")
    try:
        # the weights come from the file itself: no pretrained file is needed to rebuild it
        states = contents["members"] if "members" in contents else [contents["state_dict"]]
        networks = []
        for state in states:
            network = create_model(contents["model"], **{**contents["model_args"], "encoder_weights": None})
            network.load_state_dict(state)
            networks.append(network)
    except Exception as error:  # noqa: BLE001 - missing keys, other shapes: not a model file of ours
        raise PipelineError(f"{path}: {_NOT_OURS}; {type(error).__name__} while reading it") from None
    model = Ensemble(networks) if "members" in contents else networks[0]
    return model.eval(), contents


_NOT_OURS = "not a model file of this pipeline (a file the train stage writes as models/<dataset>/<model>/model.pt)"


def _safe_load(path) -> dict:
    """The dict in a torch file, read with `weights_only=True`: a file that needs more is refused unread."""
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; run the train stage first") from None
    except IsADirectoryError:
        raise PipelineError(f"{path}: a folder; give the model file inside it (model.pt)") from None
    except Exception as error:  # noqa: BLE001 - torch.load raises many types (EOF, unpickling, zip)
        raise PipelineError(f"{path}: {_NOT_OURS}; {type(error).__name__} while reading it") from None
    if not isinstance(contents, dict):
        raise PipelineError(f"{path}: {_NOT_OURS}; it holds a {type(contents).__name__}, not a dict")
    return contents
