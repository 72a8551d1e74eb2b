"""Reader for 3D MRI datasets stored as NIfTI volumes (`brats2020_nifti`, `nifti`), in any layout a preset
or params describe (btseg.data.layouts); the volumes are read by btseg.data.nifti.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from btseg.data import volumes_sample
from btseg.data.base import DOWNLOAD_HINT, MAX_LABEL_VALUE, Case, CaseRef
from btseg.data.entry import Dataset, LabelMap, LabelValues, Names, SampleSizes, Section
from btseg.data.layouts import (
    LAYOUTS,
    build_layout,
    case_locations,
    label_file_of,
    label_values,
    layout_file,
    param_section,
    where_none_were_found,
)
from btseg.data.nifti import SLICE_AXIS, check_same_grid, iter_volumes, read_nifti, to_canonical
from btseg.errors import PipelineError

log = logging.getLogger(__name__)




def list_cases(root: Path, options) -> list[CaseRef]:
    """Every case under `root`, in order. Each CaseRef's `files` are its distinct files (input
    channels, label map, brain mask); `extra` holds, per input channel, the file and its index in a
    4D image. A missing file raises PipelineError naming it; so does a case without a label map."""
    _check_options(options)
    layout = build_layout(root, options)
    found = case_locations(layout, options)
    if not found:
        preset = layout.param.endswith("brats2020_nifti")
        what = ("a BraTS 2020 NIfTI download (MICCAI_BraTS2020_TrainingData)" if preset
                else f"a {layout.name} dataset, as {layout.param}.layout says")
        raise PipelineError(f"{root}: {where_none_were_found(layout)}; is this {what}? re-run the download stage")
    cases = []
    for case_id, folder in found:
        channels = [(layout_file(layout, folder, case_id, layout.images[s],
                                 f"{layout.param}.input_channels asks for {s}"),
                     layout.channel_index.get(s)) for s in options.input_channels]
        label = label_file_of(layout, folder, case_id, options)
        mask = (layout_file(layout, folder, case_id, layout.brain_mask, f"{layout.param}.brain_mask_file")
                if layout.brain_mask else None)
        files = tuple(dict.fromkeys([path for path, _ in channels] + [label] + ([mask] if mask else [])))
        cases.append(CaseRef(case_id=case_id, root=root, files=files,
                             extra={"channels": channels, "label": label, "mask": mask,
                                    "channels_in_file": layout.channels_in_file}))
    return cases


def read_case(case: CaseRef, options) -> Case:
    """The case's slices along `options.axis`, in canonical orientation; every bad volume raises
    PipelineError naming its file.

    image:   float32 (S, C, H, W), C = len(options.input_channels), in that order; values as stored
             (0 outside the brain mask, where there is one)
    regions: uint8 (S, K, H, W), 0/1, channel k is `label map in values of list(options.labels.values())[k]`
    slice_index is 0..S-1 along the axis; source_files is the case folder (flat layouts: the first
    image file), relative to case.root, for every slice. Only this case's volumes are held in memory (a 4D image once).
    """
    _check_options(options)
    param = param_section(options)
    axis = SLICE_AXIS[options.axis]
    channels = case.extra["channels"]
    if len(channels) != len(options.input_channels):
        raise PipelineError(f"case {case.case_id}: {len(channels)} image files but {param}.input_channels has "
                            f"{len(options.input_channels)}; list the cases again with the same params")
    image = reference = None
    read = iter_volumes(channels, case.extra["channels_in_file"], hint=DOWNLOAD_HINT)
    for channel, (path, volume, source) in enumerate(read):
        reference = reference or (path, source.shape[:3], source.affine)  # the grid the label map must share
        if image is None:
            image = np.empty((volume.shape[axis], len(channels)) + _in_plane(volume.shape, axis), np.float32)
        image[:, channel] = np.moveaxis(volume, axis, 0)
        del volume  # keep one volume of scratch memory, not one per channel

    label_file = case.extra["label"]
    seg, header = read_nifti(label_file)
    check_same_grid(label_file, seg.shape, header.affine, reference, hint=DOWNLOAD_HINT)
    seg = np.moveaxis(to_canonical(seg, header.affine), axis, 0)
    values = [label_values(v) for v in options.labels.values()]
    allowed = [0] + [v for group in values for v in group]
    unexpected = ~np.isin(seg, allowed)
    if unexpected.any():
        found = _plain(np.unique(seg[unexpected]))
        raise PipelineError(f"{label_file}: unexpected label value(s) {found}; expected 0 or "
                            f"{sorted(set(allowed[1:]))} per {param}.labels (add the missing sub-region there)")
    regions = np.stack([np.isin(seg, group) for group in values], axis=1).view(np.uint8)  # bool is stored as 0/1 bytes
    if case.extra.get("mask") is not None:
        mask_file = case.extra["mask"]
        mask, header = read_nifti(mask_file)
        check_same_grid(mask_file, mask.shape, header.affine, reference, hint=DOWNLOAD_HINT)
        outside = np.moveaxis(to_canonical(mask, header.affine), axis, 0) == 0
        image *= ~outside[:, None]

    # where the slices came from: the case folder, or (flat layouts: one folder for all cases) the first image file
    first = channels[0][0]
    origin = label_file.parent if first.parent == label_file.parent else first
    folder = Path(os.path.relpath(origin, case.root)).as_posix()
    slices = len(image)
    return Case(
        case_id=case.case_id,
        image=image,
        regions=regions,
        channel_names=tuple(options.input_channels),
        region_names=tuple(options.labels),
        slice_index=np.arange(slices),
        source_files=(folder,) * slices,
    )


def _check_options(options) -> None:
    param = param_section(options)
    if options.axis not in SLICE_AXIS:
        raise PipelineError(f"params.yaml: {param}.axis '{options.axis}': expected one of {list(SLICE_AXIS)}")
    extra = [c for c in options.input_channels if c not in options.sequences]
    if not options.input_channels or extra or len(set(options.input_channels)) != len(options.input_channels):
        raise PipelineError(
            f"params.yaml: {param}.input_channels {list(options.input_channels)}: expected distinct names "
            f"from {param}.sequences {list(options.sequences)}"
        )
    values = list(options.labels.values())
    groups = [label_values(v) for v in values]
    whole = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 < v <= MAX_LABEL_VALUE
                for group in groups for v in group)
    if not values or not whole or not all(groups) or len({tuple(g) for g in groups}) != len(groups):
        raise PipelineError(f"params.yaml: {param}.labels {dict(options.labels)}: expected distinct label values "
                            f"1..{MAX_LABEL_VALUE} (or lists of them), one per sub-region")


def _in_plane(shape: tuple, axis: int) -> tuple[int, int]:
    return tuple(n for i, n in enumerate(shape[:3]) if i != axis)


def _plain(values: np.ndarray) -> list:
    """Seg values for a message: ints where they are whole numbers (segs are sometimes stored as float)."""
    return [int(v) if float(v).is_integer() else float(v) for v in values.tolist()]


class BratsNiftiParams(Section):
    param: ClassVar[str] = "data.brats2020_nifti"  # for messages
    layout: ClassVar[str] = "brats2020"  # this dataset is that preset, with no brain mask
    brain_mask_file: ClassVar[str] = ""

    kaggle_handle: str
    archive: str  # an archive you already have (unpacked folder or Kaggle .zip); "" = download kaggle_handle
    sequences: Names
    input_channels: Names
    labels: LabelValues
    axis: Literal["axial", "coronal", "sagittal"]


class NiftiParams(Section):
    param: ClassVar[str] = "data.nifti"  # for messages

    path: str  # the user's dataset folder, used when data.source is not sample
    layout: Literal[LAYOUTS]
    case_pattern: str  # custom: regex of the case folders' names
    files: dict[str, str]  # custom: sequence -> file template relative to the case folder ({case} = its name)
    label_file: str  # custom: the label map's template ("" = none: prediction only)
    brain_mask_file: str  # optional brain mask template ("" = none)
    sequences: Names
    input_channels: Names
    labels: LabelMap
    axis: Literal["axial", "coronal", "sagittal"]


def _write_brats2020_sample(root: Path, options: BratsNiftiParams, sizes: SampleSizes, seed: int) -> None:
    volumes_sample.write_sample(root, cases=sizes.cases, size=sizes.size, depth=sizes.slices_per_case,
                                sequences=options.sequences, labels=options.labels, seed=seed)


def _write_sample(root: Path, options: NiftiParams, sizes: SampleSizes, seed: int) -> None:
    volumes_sample.write_sample(root, cases=sizes.cases, size=sizes.size, depth=sizes.slices_per_case,
                                sequences=options.sequences, labels=options.labels, seed=seed,
                                layout=options.layout, files=options.files, label_file=options.label_file)


def _sequences(options) -> list[str]:
    return list(options.sequences)


# BraTS 2020 as published (the brats2020 layout), and the user's own NIfTI dataset in any layout
DATASETS = (
    Dataset("brats2020_nifti", BratsNiftiParams, SampleSizes, list_cases, read_case, _write_brats2020_sample,
            files="volumes", channels=_sequences),
    Dataset("nifti", NiftiParams, SampleSizes, list_cases, read_case, _write_sample, files="volumes",
            channels=_sequences, own_folder=True),
)
