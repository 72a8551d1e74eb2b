"""What a dataset is, in one place: each reader module declares `DATASETS`, a tuple of `Dataset`
entries, and everything that lists datasets (params validation, the stages' --dataset choices, the
sample source, preprocessing, prediction) reads the entries through btseg.data.registry.

Adding a dataset is one module in btseg/data/ (its params section, reader, sample writer and entry)
plus its test. The params sections are pydantic models (`Section`); btseg.config assembles them into
`data.<name>` and `data.sample.<name>`, so a typo in a dataset's params is caught like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from btseg.data.base import MAX_LABEL_VALUE, Case, CaseRef


class Section(BaseModel):
    """A params section: every field required (defaults live in params.yaml), unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


PositiveInt = Annotated[int, Field(ge=1)]
Names = Annotated[list[str], Field(min_length=1)]
LabelValue = Annotated[int, Field(ge=1, le=MAX_LABEL_VALUE)]
LabelValues = Annotated[dict[str, LabelValue], Field(min_length=1)]
# a sub-region's label value, or several (a region such as whole tumor = [1, 2, 3], as nnU-Net's region-based labels)
LabelMap = Annotated[dict[str, LabelValue | Annotated[list[LabelValue], Field(min_length=1)]], Field(min_length=1)]


class SampleSizes(Section):
    """data.sample.<dataset> for datasets of cases and slices."""

    cases: Annotated[int, Field(ge=3)]
    slices_per_case: PositiveInt
    size: Annotated[int, Field(ge=16, le=512)]


def _listed(key: str) -> Callable[[Section], list[str]]:
    return lambda options: list(getattr(options, key))


@dataclass(frozen=True)
class Dataset:
    """One dataset the pipeline reads, by name. `params` is its data.<name> section class and `sample`
    the type of data.sample.<name>; the callables take that section (`options`). By default the files'
    channels are `options.channels`, the model's `options.input_channels`, the sub-regions the keys
    of `options.labels`."""

    name: str
    params: type[Section]
    sample: Any  # SampleSizes or another type pydantic validates
    list_cases: Callable[[Path, Section], list[CaseRef]]
    read_case: Callable[[CaseRef, Section], Case]
    write_sample: Callable[[Path, Section, Any, int], None]  # (empty folder, options, data.sample.<name>, seed)
    # what a model trained on it predicts on: 2D image files (PNG/JPG/TIF), NIfTI volumes in the
    # layout it was trained on (the model file keeps it), or BraTS .h5 slices
    files: Literal["images", "volumes", "h5"]
    channels: Callable[[Section], list[str]] = _listed("channels")  # the image channels its files hold, in order
    input_channels: Callable[[Section], list[str]] = _listed("input_channels")  # fed to the model, in order
    sub_regions: Callable[[Section], list[str]] = _listed("labels")  # its masks' labelled sub-regions, in order
    own_folder: bool = False  # read from data.<name>.path (the user's folder) when data.source is not sample


def sample_of_cases(write: Callable[..., None]) -> Callable[[Path, Section, SampleSizes, int], None]:
    """An entry's write_sample for a sample writer taking cases, slices_per_case, size and seed."""
    def write_sample(root: Path, options: Section, sizes: SampleSizes, seed: int) -> None:
        write(root, cases=sizes.cases, slices_per_case=sizes.slices_per_case, size=sizes.size, seed=seed)
    return write_sample
