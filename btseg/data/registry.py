"""The datasets the pipeline reads, by name: every `Dataset` entry (btseg.data.entry) that a module of
this package declares in its `DATASETS`, found by looking, so a new dataset module needs no line here.

Every list of dataset names (params validation, the stages' --dataset choices, the sample source,
preprocessing, prediction) derives from DATASETS, in the order the modules are found (by name).
"""

from __future__ import annotations

import importlib
import pkgutil

import btseg.data
from btseg.data.entry import Dataset


def _discover() -> dict[str, Dataset]:
    found: dict[str, Dataset] = {}
    for module in sorted(pkgutil.iter_modules(btseg.data.__path__), key=lambda m: m.name):
        for entry in getattr(importlib.import_module(f"btseg.data.{module.name}"), "DATASETS", ()):
            if entry.name in found:
                raise ImportError(f"btseg.data.{module.name}: dataset {entry.name!r} is declared twice")
            found[entry.name] = entry
    return found


DATASETS: dict[str, Dataset] = _discover()
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)
# datasets stored as 2D image files (PNG/JPG/TIF): a model trained on one can predict on such images
IMAGE_FILE_DATASETS = frozenset(name for name, d in DATASETS.items() if d.files == "images")
# datasets of NIfTI volumes (btseg.data.volumes); their models keep the layout, so prediction finds the same files
VOLUME_DATASETS = frozenset(name for name, d in DATASETS.items() if d.files == "volumes")
# datasets read from the user's own folder (data.<dataset>.path) when data.source is not sample
OWN_FOLDER_DATASETS = frozenset(name for name, d in DATASETS.items() if d.own_folder)


def dataset(name: str) -> Dataset:
    """The entry of a dataset; an unknown name is an error listing the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset '{name}'; expected one of {list(DATASETS)}") from None

