"""A model file as prediction sees it (btseg.models.model_file read, plus what its training slices
say about preparing images), and the prediction of one scan's probabilities on its own geometry.

A model file (models/<dataset>/<model>/model.pt) carries the architecture, weights, decision
threshold, targets and the exact preprocessing of its training data, so no params.yaml is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from btseg.data import layouts
from btseg.models import load_model_file
from btseg.models.prediction import predict_probabilities
from btseg.preprocessing.image import Settings, place_back, prepare_image

BRATS2020_SPEC = {"layout": "brats2020", "images": {s: "{case}_" + s for s in ("flair", "t1", "t1ce", "t2")},
                  "channel_index": {}, "channels_in_file": 0, "extensions": list(layouts.NIFTI), "axis": "axial"}


@dataclass
class Model:
    network: torch.nn.Module
    checkpoint: dict
    settings: Settings
    channels: list[str]
    source_channels: list[str]
    targets: list[str]
    threshold: float
    postprocess: str = "none"  # chosen on validation by the train stage (btseg.decisions.postprocess)
    tta: bool = False  # average over flips, as validation did

    @property
    def layout(self) -> dict:
        """NIfTI models: the files of each sequence and the slice axis (btseg.data.volumes.Layout.spec)."""
        return self.checkpoint["data_meta"].get("layout", BRATS2020_SPEC)

    @property
    def trained_on_sample(self) -> bool:
        return str(self.checkpoint["data_meta"]["source_version"]).startswith("sample(")

    @property
    def description(self) -> dict:
        c = self.checkpoint
        return {"file": c.get("path"), "architecture": c["model"], "dataset": c["data_meta"]["dataset"],
                "trained_on": c["data_meta"]["source_version"], "best_epoch": c["best_epoch"],
                "val_case_dice": c["val_case_dice"], "channels": self.channels, "targets": self.targets}


def load_model(path: Path) -> Model:
    network, checkpoint = load_model_file(path)
    meta = {**checkpoint["data_meta"], **checkpoint["inference_meta"]}
    checkpoint["path"] = str(path)
    return Model(network, checkpoint, Settings.from_meta(meta), list(meta["channels"]), list(meta["source_channels"]),
                 list(meta["targets"]), float(checkpoint["threshold"]), checkpoint.get("postprocess", "none"),
                 bool(checkpoint.get("tta", False)))


def predict_scan(image: np.ndarray, model: Model, device: torch.device, precision: str = "auto") -> np.ndarray:
    """Probabilities (S, K, H, W) of a scan's slices `image` (S, C, H, W), on the scan's own geometry;
    `precision` as train.speed.precision (auto: bf16 where the device runs it natively), NHWC layout."""
    inputs, _, placement = prepare_image(image, model.settings)
    probabilities = predict_probabilities(model.network.to(device), inputs, device, precision=precision,
                                          tta=model.tta)
    return place_back(probabilities, placement, model.settings)
