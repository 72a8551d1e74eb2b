"""What every dataset reader provides: a list of cases, and each case read as a stack of slices.

A reader module exposes
    list_cases(root: Path, options) -> list[CaseRef]
    read_case(case: CaseRef, options) -> Case
where `options` is that dataset's params section. `read_case` raises PipelineError naming the
file and the fix for any bad input (corrupt/truncated/empty file, NaN/Inf, missing sequence or
mask, shape mismatch, label value outside the expected set); the preprocess stage then stops or,
with `preprocess.on_bad_file: skip`, logs the file, counts it in meta.json and carries on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# what to do about a bad file the pipeline itself downloaded (a reader of the user's own files says otherwise)
DOWNLOAD_HINT = "re-run the download stage"
# label values of a mask or label map: 8-bit, as every supported archive stores them (0 is background)
MAX_LABEL_VALUE = 255


@dataclass(frozen=True)
class CaseRef:
    """One patient (or one image, where the dataset has no patients): where its files are."""

    case_id: str
    root: Path  # the dataset's raw folder; source files are reported relative to it
    files: tuple[Path, ...]  # every file the case reads, for messages and provenance
    split: str | None = None  # the dataset's own split ("train", "val", "test"), where it has one
    extra: dict = field(default_factory=dict, compare=False)  # reader-specific details (e.g. slice numbers)


@dataclass(frozen=True)
class Case:
    """A case's slices, in anatomical (or file) order.

    image:   float32 (S, C, H, W), channels in the order of the reader's channel names
    regions: uint8 (S, K, H, W), 0/1 per labelled sub-region, K = len(region_names)
    """

    case_id: str
    image: np.ndarray
    regions: np.ndarray
    channel_names: tuple[str, ...]
    region_names: tuple[str, ...]
    slice_index: np.ndarray  # int (S,): the slice's number in the source volume
    source_files: tuple[str, ...]  # (S,) file each slice came from, relative to the dataset root

    def __post_init__(self):
        s = len(self.image)
        if self.image.ndim != 4 or self.regions.ndim != 4:
            raise ValueError(f"case {self.case_id}: image {self.image.shape} and regions {self.regions.shape} "
                             "must be (S, C, H, W)")
        if self.regions.shape[0] != s or self.regions.shape[2:] != self.image.shape[2:]:
            raise ValueError(f"case {self.case_id}: image {self.image.shape} and regions {self.regions.shape} disagree")
        if len(self.slice_index) != s or len(self.source_files) != s:
            raise ValueError(f"case {self.case_id}: {s} slices but {len(self.slice_index)} indices, "
                             f"{len(self.source_files)} files")
        if self.image.shape[1] != len(self.channel_names) or self.regions.shape[1] != len(self.region_names):
            raise ValueError(f"case {self.case_id}: channel/region names do not match the array shapes")
