"""bts-predict's inputs: the given files and folders grouped into scans, and each read into the
model's channel order. NIfTI cases in the layout the model was trained on (a BraTS case folder,
nnU-Net imagesTs files, Decathlon 4D images, ...: btseg.data.layouts), DICOM series (one case per
series, or per study for a multi-sequence model: btseg.inference.dicom), BraTS .h5 slices (grouped
by volume), or PNG/JPG/TIF images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np

from btseg.data import brats_h5, layouts, nifti
from btseg.data.images import decode
from btseg.data.registry import IMAGE_FILE_DATASETS
from btseg.errors import PipelineError
from btseg.inference import dicom
from btseg.inference.model import Model

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}


H5_NAME = brats_h5.FILE_PATTERN  # volume_<V>_slice_<S>.h5


@dataclass
class Scan:
    """One input to predict on: a volume or image stack (S, C, H, W) and how to write results back."""

    name: str
    kind: str  # "nifti", "dicom", "h5" or "image"
    image: np.ndarray
    sources: list[Path]
    reference: nib.Nifti1Image | None = None  # NIfTI and DICOM: affine and header of the NIfTI output
    voxel_ml: float | None = None
    slice_numbers: list[int] | None = None  # the slices' numbers in their source (h5: from the file names)
    folder: Path = Path()  # where under --out its outputs go (inputs of the same name get their own folders)
    axis: int = 2  # NIfTI and DICOM: the canonical-orientation array axis the slices were cut along
    dicom: dicom.DicomSource | None = None  # DICOM: the source series the SEG references


@dataclass(frozen=True)
class VolumeCase:
    """One NIfTI case found among the inputs: its name and, per model channel, the file (and 4D index)."""

    name: str
    channels: tuple[tuple[Path, int | None], ...]


Group = Path | list[Path] | VolumeCase | dicom.DicomCase


def find_scans(paths: list[Path], model: Model, out: Path | None = None, rules: dict[str, str] | None = None
               ) -> tuple[list[Group], list[str]]:
    """Group the given files/folders into inputs: NIfTI cases, DICOM cases, h5 volumes, single images.
    `rules`: SeriesDescription rules naming a DICOM series' sequence (dicom.parse_rules).

    A file reached twice (`c c`, or a folder and a file in it) is read once. A folder's files under
    `out` (the --out folder inside an input folder: an earlier run's masks) are not inputs, unless
    the folder itself lies under `out`."""
    groups: list[Group] = []
    problems: list[str] = []
    nifti: list[Path] = []
    others: list[Path] = []  # DICOM files, perhaps
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
        nifti += [p for p in files if p.name.endswith(layouts.NIFTI) and not p.name.startswith(".")]
        for p in files:
            if p.suffix == ".h5":
                match = H5_NAME.fullmatch(p.name)
                h5_by_volume.setdefault(f"volume_{match[1]}" if match else p.stem, []).append(p)
            elif p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith(("_mask", "_overlay")):
                groups.append(p)
            elif not p.name.endswith(layouts.NIFTI) and p.suffix.lower() not in IMAGE_SUFFIXES:
                others.append(p)
    if nifti:
        dataset = model.checkpoint["data_meta"]["dataset"]
        if dataset in IMAGE_FILE_DATASETS:
            problems += [f"{folder}: NIfTI volumes, but the model was trained on 2D images ({dataset}); "
                         "give it PNG/JPG/TIF images" for folder in sorted({p.parent for p in nifti})]
        else:
            cases, missing = layouts.group_cases(nifti, model.layout)
            groups += [VolumeCase(name, tuple(channels)) for name, channels in cases]
            problems += missing
    series, unreadable = dicom.find_series(others)
    problems += unreadable
    if series:
        dataset = model.checkpoint["data_meta"]["dataset"]
        if dataset in IMAGE_FILE_DATASETS:
            problems += [f"{s.label()}: a DICOM series, but the model was trained on 2D images ({dataset}); "
                         "give it PNG/JPG/TIF images" for s in series]
        else:
            cases, missing = dicom.group_cases(series, model.channels, rules or dicom.SEQUENCE_RULES)
            groups += cases
            problems += missing
    groups += [sorted(files, key=_slice_number) for _, files in sorted(h5_by_volume.items())]
    return groups, problems


def _output_name(group: Group) -> str:
    """The name an input group's outputs start with (as its Scan will be named)."""
    if isinstance(group, (VolumeCase, dicom.DicomCase)):
        return group.name
    if isinstance(group, list):
        match = H5_NAME.fullmatch(group[0].name)
        return f"volume_{match[1]}" if match else group[0].stem
    return group.stem


def output_folders(groups: list[Group]) -> list[Path]:
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


def _first_file(group: Group) -> Path:
    if isinstance(group, VolumeCase):
        return group.channels[0][0]
    if isinstance(group, dicom.DicomCase):
        return group.series[0][1].files[0]
    return group[0] if isinstance(group, list) else group


def read_scan(group: Group, model: Model) -> Scan:
    """Load one input group as (S, C, H, W) in the model's channel order; errors name the input."""
    if isinstance(group, VolumeCase):
        return _read_volumes(group, model)
    if isinstance(group, dicom.DicomCase):
        return _read_dicom(group, model)
    if isinstance(group, list):
        return _read_h5(group, model)
    return _read_image(group, model)


def _read_volumes(case: VolumeCase, model: Model) -> Scan:
    """The case's volumes in canonical orientation, sliced along the training axis (the dataset reader's code and
    checks)."""
    spec = model.layout
    axis = nifti.SLICE_AXIS[spec["axis"]]
    stack, reference = [], None
    # the user's own files: a bad one is theirs to check, not the download stage's to redo
    for _, volume, image in nifti.iter_volumes(list(case.channels), spec["channels_in_file"], hint="check the file"):
        reference = reference or image
        stack.append(np.moveaxis(volume, axis, 0))
    voxel_ml = float(np.prod(reference.header.get_zooms()[:3])) / 1000.0
    sources = list(dict.fromkeys(path for path, _ in case.channels))
    image = np.ascontiguousarray(np.stack(stack, axis=1))
    return Scan(case.name, "nifti", image, sources, reference, voxel_ml, axis=axis)


def _read_dicom(case: dicom.DicomCase, model: Model) -> Scan:
    """The case's series as volumes in canonical orientation (through NIfTI's RAS affine, so exactly the
    NIfTI path from here), sliced along the training axis; every sequence on the first one's grid."""
    axis = nifti.SLICE_AXIS[model.layout["axis"]]
    stack, source, reference = [], None, None
    for _, series in case.series:
        volume, datasets = dicom.read_series(series)
        image = dicom.to_nifti(volume)
        data = np.asarray(image.dataobj, dtype=np.float32)
        if reference is None:
            reference, source = image, dicom.DicomSource(datasets, volume, list(case.series))
        elif data.shape != reference.shape or not np.allclose(image.affine, reference.affine, rtol=0,
                                                              atol=nifti.AFFINE_TOLERANCE_MM):
            raise PipelineError(f"{series.label()}: not on the voxel grid of {case.series[0][1].label()}; every "
                                "sequence of a case must lie on the same grid: register or resample them first")
        if not np.isfinite(data).all():
            raise PipelineError(f"{series.label()}: holds NaN or infinite pixel values; check the series")
        stack.append(np.moveaxis(nifti.to_canonical(data, image.affine), axis, 0))
    voxel_ml = float(np.prod(reference.header.get_zooms()[:3])) / 1000.0
    folders = list(dict.fromkeys(s.folder for _, s in case.series))
    image = np.ascontiguousarray(np.stack(stack, axis=1))
    return Scan(case.name, "dicom", image, folders, reference, voxel_ml, axis=axis, dicom=source)


def _read_h5(files: list[Path], model: Model) -> Scan:
    missing = [c for c in model.channels if c not in model.source_channels]
    if missing:
        raise PipelineError(f"{files[0]}: the model expects channels {model.channels}, which .h5 slices do not hold")
    pick = [model.source_channels.index(c) for c in model.channels]
    # the dataset reader's checks (shape, NaN), without its mask: these are the user's slices
    slices = [brats_h5.read_image(path, len(model.source_channels), "check the file")[pick] for path in files]
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


def _slice_number(path: Path) -> tuple[int, str]:
    match = H5_NAME.fullmatch(path.name)
    return (int(match[2]) if match else 0, path.name)
