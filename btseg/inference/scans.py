"""Prediction on new scans with a trained model file (the `predict` command's library).

A model file (models/<dataset>/<model>/model.pt) carries the architecture, weights, decision
threshold, targets and the exact preprocessing of its training data, so no params.yaml is needed.
Inputs: NIfTI cases in the layout the model was trained on (a BraTS case folder, nnU-Net imagesTs
files, Decathlon 4D images, ...: btseg.data.volumes), BraTS .h5 slices (grouped by volume), or
PNG/JPG/TIF images. Outputs go back to the input's geometry (NIfTI: its own orientation and affine).
"""

from __future__ import annotations

import gzip
import json
import os
import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import torch

from btseg.data import volumes
from btseg.data.images import decode
from btseg.data.registry import IMAGE_FILE_DATASETS
from btseg.decisions.postprocess import apply_rule
from btseg.errors import PipelineError, one_line
from btseg.evaluation.plotting import overlay
from btseg.fileio import atomic_file
from btseg.models import load_model_file
from btseg.models.prediction import predict_probabilities
from btseg.preprocessing.image import Settings, place_back, prepare_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
H5_NAME = re.compile(r"volume_(\d+)_slice_(\d+)\.h5")
BRATS_LABELS = {"WT": 2, "TC": 1, "ET": 4}  # painted in this order: edema, then core, then enhancing
# models trained before the layout was kept in the model file read BraTS 2020 names
BRATS2020_SPEC = {"layout": "brats2020", "images": {s: "{case}_" + s for s in ("flair", "t1", "t1ce", "t2")},
                  "channel_index": {}, "channels_in_file": 0, "extensions": list(volumes.NIFTI), "axis": "axial"}


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


@dataclass
class Scan:
    """One input to predict on: a volume or image stack (S, C, H, W) and how to write results back."""

    name: str
    kind: str  # "nifti", "h5" or "image"
    image: np.ndarray
    sources: list[Path]
    reference: nib.Nifti1Image | None = None  # NIfTI: affine and header of the output
    voxel_ml: float | None = None
    slice_numbers: list[int] | None = None  # the slices' numbers in their source (h5: from the file names)
    folder: Path = Path()  # where under --out its outputs go (inputs of the same name get their own folders)
    axis: int = 2  # NIfTI: the canonical-orientation array axis the slices were cut along


@dataclass(frozen=True)
class VolumeCase:
    """One NIfTI case found among the inputs: its name and, per model channel, the file (and 4D index)."""

    name: str
    channels: tuple[tuple[Path, int | None], ...]


def find_scans(paths: list[Path], model: Model, out: Path | None = None
               ) -> tuple[list[Path | list[Path] | VolumeCase], list[str]]:
    """Group the given files/folders into inputs: NIfTI cases, h5 volumes, single images.

    A file reached twice (`c c`, or a folder and a file in it) is read once. A folder's files under
    `out` (the --out folder inside an input folder: an earlier run's masks) are not inputs, unless
    the folder itself lies under `out`."""
    groups: list[Path | list[Path] | VolumeCase] = []
    problems: list[str] = []
    nifti: list[Path] = []
    h5_by_volume: dict[str, list[Path]] = {}
    outputs = out.resolve() if out is not None else None
    seen: set[Path] = set()
    for path in paths:
        if not path.exists():
            problems.append(f"{path}: not found")
            continue
        found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        skip_outputs = path.is_dir() and outputs is not None and not path.resolve().is_relative_to(outputs)
        files = []
        for p in found:
            real = p.resolve()
            if real not in seen and not (skip_outputs and real.is_relative_to(outputs)):
                seen.add(real)
                files.append(p)
        nifti += [p for p in files if p.name.endswith(volumes.NIFTI) and not p.name.startswith(".")]
        for p in files:
            if p.suffix == ".h5":
                match = H5_NAME.fullmatch(p.name)
                h5_by_volume.setdefault(f"volume_{match[1]}" if match else p.stem, []).append(p)
            elif p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith(("_mask", "_overlay")):
                groups.append(p)
    if nifti:
        dataset = model.checkpoint["data_meta"]["dataset"]
        if dataset in IMAGE_FILE_DATASETS:
            problems += [f"{folder}: NIfTI volumes, but the model was trained on 2D images ({dataset}); give it PNG/JPG/TIF images"
                         for folder in sorted({p.parent for p in nifti})]
        else:
            cases, missing = volumes.group_cases(nifti, model.layout)
            groups += [VolumeCase(name, tuple(channels)) for name, channels in cases]
            problems += missing
    groups += [sorted(files, key=_slice_number) for _, files in sorted(h5_by_volume.items())]
    return groups, problems


def _output_name(group: Path | list[Path] | VolumeCase) -> str:
    """The name an input group's outputs start with (as its Scan will be named)."""
    if isinstance(group, VolumeCase):
        return group.name
    if isinstance(group, list):
        match = H5_NAME.fullmatch(group[0].name)
        return f"volume_{match[1]}" if match else group[0].stem
    return group.stem


def output_folders(groups: list[Path | list[Path]]) -> list[Path]:
    """Where under --out each input group's outputs go: directly there, unless another input would
    write the same names (a/scan.jpg and b/scan.jpg); those mirror their folders below the inputs'
    common folder, so nothing is overwritten."""
    names = [_output_name(g) for g in groups]
    places = [_first_file(g).resolve().parent for g in groups]
    clashing = [i for i, n in enumerate(names) if names.count(n) > 1]
    if not clashing:
        return [Path()] * len(groups)
    common = Path(os.path.commonpath([places[i] for i in clashing]))
    return [places[i].relative_to(common) if i in clashing else Path() for i in range(len(groups))]


def _first_file(group: Path | list[Path] | VolumeCase) -> Path:
    return group.channels[0][0] if isinstance(group, VolumeCase) else group[0] if isinstance(group, list) else group


def read_scan(group: Path | list[Path] | VolumeCase, model: Model) -> Scan:
    """Load one input group as (S, C, H, W) in the model's channel order; errors name the input."""
    if isinstance(group, VolumeCase):
        return _read_volumes(group, model)
    if isinstance(group, list):
        return _read_h5(group, model)
    return _read_image(group, model)


def _read_volumes(case: VolumeCase, model: Model) -> Scan:
    """The case's volumes in canonical orientation, sliced along the training axis (the dataset reader's code and checks)."""
    spec = model.layout
    axis = volumes.SLICE_AXIS[spec["axis"]]
    stack, reference = [], None
    # the user's own files: a bad one is theirs to check, not the download stage's to redo
    for _, volume, image in volumes.iter_volumes(list(case.channels), spec["channels_in_file"], hint="check the file"):
        reference = reference or image
        stack.append(np.moveaxis(volume, axis, 0))
    voxel_ml = float(np.prod(reference.header.get_zooms()[:3])) / 1000.0
    sources = list(dict.fromkeys(path for path, _ in case.channels))
    return Scan(case.name, "nifti", np.ascontiguousarray(np.stack(stack, axis=1)), sources, reference, voxel_ml, axis=axis)


def _read_h5(files: list[Path], model: Model) -> Scan:
    missing = [c for c in model.channels if c not in model.source_channels]
    if missing:
        raise PipelineError(f"{files[0]}: the model expects channels {model.channels}, which .h5 slices do not hold")
    pick = [model.source_channels.index(c) for c in model.channels]
    slices = []
    for path in files:
        try:
            with h5py.File(path, "r") as h5:
                image = np.asarray(h5["image"], dtype=np.float32)
        except (OSError, KeyError) as error:
            raise PipelineError(f"{path}: unreadable .h5 slice ({one_line(error, 120)})") from None
        if image.ndim != 3 or image.shape[-1] != len(model.source_channels):
            raise PipelineError(f"{path}: 'image' has shape {image.shape}, expected (H, W, {len(model.source_channels)}) "
                                f"with channels {model.source_channels}")
        slices.append(image.transpose(2, 0, 1)[pick])
    match = H5_NAME.fullmatch(files[0].name)
    return Scan(f"volume_{match[1]}" if match else files[0].stem, "h5", np.stack(slices), files,
                slice_numbers=[_slice_number(f)[0] for f in files])


def _read_image(path: Path, model: Model) -> Scan:
    if model.checkpoint["data_meta"]["dataset"] not in IMAGE_FILE_DATASETS or len(model.channels) not in (1, 3):
        raise PipelineError(f"{path}: a 2D image, but the model expects {len(model.channels)} MRI sequences "
                            f"{model.channels}; give it a case folder or .h5 slices")
    flag = cv2.IMREAD_GRAYSCALE if len(model.channels) == 1 else cv2.IMREAD_COLOR
    image = decode(path, flag, "image", "check the file")
    image = image[None] if image.ndim == 2 else image[..., ::-1].transpose(2, 0, 1)  # BGR -> file's RGB order
    return Scan(path.stem, "image", image[None].astype(np.float32), [path])


def predict_scan(scan: Scan, model: Model, device: torch.device) -> np.ndarray:
    """Probabilities (S, K, H, W) on the scan's own geometry."""
    inputs, _, placement = prepare_image(scan.image, model.settings)
    probabilities = predict_probabilities(model.network.to(device), inputs, device, tta=model.tta)
    return place_back(probabilities, placement, model.settings)


def write_outputs(scan: Scan, probabilities: np.ndarray, model: Model, out: Path) -> dict:
    """Write the mask(s), overlays and the JSON summary under out/scan.folder; returns the summary.

    Everything is written under temporary names first and renamed when all of it is there, the
    summary last: a failure leaves no output of this input that looks complete."""
    folder = out / scan.folder
    # (S, K, H, W); the scan is one case, its rows in slice order
    volume = pd.DataFrame({"case_id": scan.name, "slice_index": np.arange(len(probabilities))})
    masks = apply_rule(probabilities > model.threshold, volume, model.postprocess)
    files: dict[Path, object] = {}
    if scan.kind == "nifti":
        labels = _label_volume(masks, model.targets)  # (S, H, W) or (S, K, H, W)
        canonical = np.moveaxis(labels if labels.ndim == 3 else np.moveaxis(labels, 1, -1), 0, scan.axis)
        data = volumes.from_canonical(canonical, scan.reference.affine)  # the input's own orientation
        header = scan.reference.header.copy()
        header.set_data_dtype(np.uint8)
        files[folder / f"{scan.name}_mask.nii.gz"] = nib.Nifti1Image(data.astype(np.uint8), scan.reference.affine, header)
    else:
        for i, source in enumerate(scan.sources):
            rgb = overlay(scan.image[i, 0], masks[i, 0], masks[i, 0])
            files[folder / f"{source.stem}_mask.png"] = masks[i, 0].astype(np.uint8) * 255
            files[folder / f"{source.stem}_overlay.png"] = (rgb[..., ::-1] * 255).astype(np.uint8)
    tumor = masks[:, 0]
    numbers = scan.slice_numbers or list(range(len(tumor)))
    summary = {
        "input": [str(p) for p in scan.sources],
        "tumor_present": bool(tumor.any()),
        "slices_with_tumor": [int(numbers[i]) for i in np.flatnonzero(tumor.reshape(len(tumor), -1).any(axis=1))],
        "tumor_pixels": {name: int(masks[:, k].sum()) for k, name in enumerate(model.targets)},
        "threshold": model.threshold,
        "postprocess": model.postprocess,
        "model": model.description,
        "outputs": [str(p) for p in files],
    }
    if model.trained_on_sample:
        summary["warning"] = SAMPLE_WARNING
    if scan.voxel_ml is not None:
        summary["tumor_volume_ml"] = {name: round(int(masks[:, k].sum()) * scan.voxel_ml, 4) for k, name in enumerate(model.targets)}
    files[folder / f"{scan.name}_summary.json"] = json.dumps(summary, indent=2) + "\n"
    _write_all(files)
    return summary


SAMPLE_WARNING = "the model was trained on the synthetic sample data: its masks say nothing about real scans"


def _write_all(files: dict[Path, object]) -> None:
    """Write every file under a temporary name (fileio.atomic_file), then rename them into place, the
    summary (the last file) last; if any write or rename fails, none of the files not yet in place appears."""
    try:
        contents = {path: _encode(path, content) for path, content in files.items()}
        with ExitStack() as stack:
            # contexts close in reverse: entering the summary first renames it last
            partial = {path: stack.enter_context(atomic_file(path)) for path in reversed(contents)}
            for path, data in contents.items():
                partial[path].write_bytes(data)
    except OSError as error:
        where = next((p for p in files if not p.exists()), next(iter(files)))
        raise PipelineError(f"{where}: cannot write ({getattr(error, 'strerror', None) or one_line(error, 120)}); "
                            "check --out and its permissions") from None


def _encode(path: Path, content: object) -> bytes:
    """The bytes of an output file: JSON text, a gzipped NIfTI image, or a PNG."""
    if isinstance(content, str):
        return content.encode("utf-8")
    if isinstance(content, nib.Nifti1Image):
        return gzip.compress(content.to_bytes())
    ok, png = cv2.imencode(".png", content)
    if not ok:
        raise OSError(f"OpenCV could not encode {path.name}")
    return png.tobytes()


def _label_volume(masks: np.ndarray, targets: list[str]) -> np.ndarray:
    """Binary target -> 0/1 (S, H, W); BraTS regions WT/TC/ET -> labels 0/1/2/4; else 0/1 per target."""
    if len(targets) == 1:
        return masks[:, 0].astype(np.uint8)
    if set(targets) == set(BRATS_LABELS):
        labels = np.zeros(masks[:, 0].shape, np.uint8)
        for name in ("WT", "TC", "ET"):  # nested regions: paint the outer first
            labels[masks[:, targets.index(name)]] = BRATS_LABELS[name]
        return labels
    return masks.astype(np.uint8)


def _slice_number(path: Path) -> tuple[int, str]:
    match = H5_NAME.fullmatch(path.name)
    return (int(match[2]) if match else 0, path.name)
