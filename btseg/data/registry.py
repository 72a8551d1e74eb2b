"""The datasets the pipeline reads, by name: each maps to its reader module (see btseg.data.base).

Every list of dataset names (params validation, the stages' --dataset choices, the sample
generators, prediction) derives from READERS.
"""

from __future__ import annotations

from types import ModuleType

from btseg.data import brats_h5, coco, folder, lgg, volumes

READERS: dict[str, ModuleType] = {"brats2020": brats_h5, "tumor_coco": coco, "brats2020_nifti": volumes,
                                  "lgg": lgg, "folder": folder, "nifti": volumes}
DATASET_NAMES: tuple[str, ...] = tuple(READERS)
# datasets stored as 2D image files (PNG/JPG/TIF): a model trained on one can predict on such images
IMAGE_FILE_DATASETS = frozenset({"tumor_coco", "lgg", "folder"})
# datasets of NIfTI volumes (btseg.data.volumes); their models keep the layout, so prediction finds the same files
VOLUME_DATASETS = frozenset({"brats2020_nifti", "nifti"})
# datasets read from the user's own folder (data.<dataset>.path) when data.source is not sample
OWN_FOLDER_DATASETS = frozenset({"folder", "nifti"})


def reader(dataset: str) -> ModuleType:
    """The reader module of a dataset (list_cases, read_case)."""
    try:
        return READERS[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset '{dataset}'; expected one of {list(READERS)}") from None
