"""bts-predict's outputs: masks back on the input's geometry (NIfTI: its own orientation and affine;
DICOM: a NIfTI mask on the series' geometry and a DICOM SEG referencing the series), overlays for
images, an overview picture for volumes, and a JSON summary per scan, written so that a failure
leaves nothing that looks complete.
"""

from __future__ import annotations

import gzip
import io
import json
from contextlib import ExitStack
from pathlib import Path

import cv2
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd

from btseg.data import nifti
from btseg.decisions.postprocess import case_thresholds, segment, thresholds_each_case
from btseg.errors import PipelineError, one_line
from btseg.evaluation.plotting import fit_title, overlay, overview_figure
from btseg.fileio import atomic_file
from btseg.inference import dicom
from btseg.inference.inputs import Scan
from btseg.inference.model import Model

BRATS_LABELS = {"WT": 2, "TC": 1, "ET": 4}  # painted in this order: edema, then core, then enhancing


def write_outputs(scan: Scan, probabilities: np.ndarray, model: Model, out: Path) -> dict:
    """Write the mask(s), overlays and the JSON summary under out/scan.folder; returns the summary.

    Everything is written under temporary names first and renamed when all of it is there, the
    summary last: a failure leaves no output of this input that looks complete."""
    folder = out / scan.folder
    # (S, K, H, W); the scan is one case, its rows in slice order
    volume = pd.DataFrame({"case_id": scan.name, "slice_index": np.arange(len(probabilities))})
    masks = segment(probabilities, volume, model.threshold, model.postprocess)
    files: dict[Path, object] = {}
    if scan.kind in ("nifti", "dicom"):
        labels = _label_volume(masks, model.targets)  # (S, H, W) or (S, K, H, W)
        canonical = np.moveaxis(labels if labels.ndim == 3 else np.moveaxis(labels, 1, -1), 0, scan.axis)
        data = nifti.from_canonical(canonical, scan.reference.affine)  # the input's own orientation
        header = scan.reference.header.copy()
        header.set_data_dtype(np.uint8)
        mask = nib.Nifti1Image(data.astype(np.uint8), scan.reference.affine, header)
        files[folder / f"{scan.name}_mask.nii.gz"] = mask
        if scan.kind == "dicom":  # each target on the series' own voxels (the NIfTI mask's array axes)
            per_target = np.stack([nifti.from_canonical(np.moveaxis(masks[:, k], 0, scan.axis), scan.reference.affine)
                                   for k in range(len(model.targets))])
            files[folder / f"{scan.name}_seg.dcm"] = dicom.seg_bytes(scan.dicom, per_target, model.targets,
                                                                     model.description, model.trained_on_sample)
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
    if thresholds_each_case(model.postprocess):  # the scan's own threshold, not model.threshold
        summary["case_threshold"] = {name: t for name, t in zip(
            model.targets, case_thresholds(probabilities, volume).threshold, strict=True)}
    if model.trained_on_sample:
        summary["warning"] = SAMPLE_WARNING
    if scan.dicom is not None:
        summary["dicom_series"] = [{"sequence": channel, "series_instance_uid": s.uid, "series_number": s.number,
                                    "series_description": s.description, "files": len(s.files)}
                                   for channel, s in scan.dicom.series]
    if scan.voxel_ml is not None:
        summary["tumor_volume_ml"] = {name: round(int(masks[:, k].sum()) * scan.voxel_ml, 4)
                                      for k, name in enumerate(model.targets)}
    if scan.kind != "image":  # a volume: one picture of where the tumor was found
        overview = folder / f"{scan.name}_overview.png"
        files[overview] = _overview_png(scan, masks, model, summary)
        summary["outputs"].append(str(overview))
    files[folder / f"{scan.name}_summary.json"] = json.dumps(summary, indent=2) + "\n"
    _write_all(files)
    return summary


def _overview_png(scan: Scan, masks: np.ndarray, model: Model, summary: dict) -> bytes:
    """`<case>_overview.png`: the slices with the most predicted tumor and the middle one, FLAIR (or the
    model's first sequence) with the predicted outlines; case, model and tumor volume in the title."""
    channel = model.channels.index("flair") if "flair" in model.channels else 0
    volume = summary.get("tumor_volume_ml")
    amount = (", ".join(f"{name} {value:.1f} mL" for name, value in volume.items()) if volume is not None
              else ", ".join(f"{name} {value} px" for name, value in summary["tumor_pixels"].items()))
    description = model.description
    title = (f"{scan.name}: {description['architecture']} trained on {description['dataset']} "
             f"(val Dice {description['val_case_dice']:.3f}); predicted tumor {amount}"
             + (" - a model of the synthetic sample: says nothing about real scans" if model.trained_on_sample else ""))
    numbers = scan.slice_numbers or list(range(len(masks)))
    title = fit_title(title, inches=10, points=10)
    figure = overview_figure(scan.image[:, channel], masks, numbers, model.targets, title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


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
    if isinstance(content, bytes):  # already encoded (the overview PNG)
        return content
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
