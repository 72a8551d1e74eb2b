"""Raw archive layout -> per-split slice arrays (the `preprocess` stage's library)."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from stages.cli import PipelineError
from stages.config import Params
from stages.datasets import brats_h5, coco
from stages.preprocessing import NORMALIZATION, resize_image, resize_mask, split_cases, whole_tumor, zscore_over_brain
from stages.slices import SPLITS, SliceWriter


def source_version(params: Params, dataset: str) -> str:
    if params.data.source == "sample":
        return f"sample(seed={params.data.sample.seed})"
    return getattr(params.data, dataset).kaggle_handle


def slice_brats2020(raw: Path, out: Path, params: Params) -> dict[str, int]:
    """BraTS h5 slices -> splits by patient (volume), seeded; returns slices per split."""
    channels = params.data.brats2020.image_channels
    mask_channels = params.data.brats2020.mask_channels
    size = params.preprocess.size
    files = brats_h5.list_slices(raw)
    fractions = params.preprocess.split.model_dump()
    try:
        assignment = split_cases([f.case_id for f in files], fractions, params.preprocess.seed)
    except ValueError as error:
        raise PipelineError(f"{raw}: {error}; add cases or change preprocess.split") from None
    counts = {}
    for split in SPLITS:
        chosen = [f for f in files if assignment[f.case_id] == split]
        writer = SliceWriter(out / split, len(chosen), len(channels), size)
        for file, image, mask in tqdm(brats_h5.iter_slices(chosen, len(channels), len(mask_channels)),
                                      total=len(chosen), desc=f"preprocess brats2020/{split}", unit="slice"):
            writer.add(resize_image(zscore_over_brain(image), size), resize_mask(whole_tumor(mask), size),
                       file.case_id, file.slice_index, str(file.path.relative_to(raw)))
        writer.close(_meta(params, "brats2020", split, channels,
                           {"whole_tumor": {"any_of": mask_channels}}, split_by="patient (volume), seeded"))
        counts[split] = len(chosen)
    return counts


def slice_tumor_coco(raw: Path, out: Path, params: Params) -> dict[str, int]:
    """COCO JPEG + polygons -> the export's own train/valid/test split; returns slices per split."""
    size = params.preprocess.size
    counts = {}
    for split in SPLITS:
        images = coco.read_split(raw, split)
        writer = SliceWriter(out / split, len(images), 1, size)
        for image in tqdm(images, desc=f"preprocess tumor_coco/{split}", unit="image"):
            grey, mask = coco.read_image(image)
            writer.add(resize_image(zscore_over_brain(grey), size), resize_mask(mask, size),
                       image.case_id, 0, str(image.path.relative_to(raw)))
        writer.close(_meta(params, "tumor_coco", split, ["grey"],
                           {"whole_tumor": {"any_of": "every annotation, whatever its category"}},
                           split_by=f"the export's own folder '{coco.SPLIT_FOLDERS[split]}'"))
        counts[split] = len(images)
    return counts


SLICERS = {"brats2020": slice_brats2020, "tumor_coco": slice_tumor_coco}


def _meta(params: Params, dataset: str, split: str, channels: list[str], label_map: dict, split_by: str) -> dict:
    return {
        "dataset": dataset,
        "split": split,
        "split_by": split_by,
        "source": params.data.source,
        "source_version": source_version(params, dataset),
        "channels": list(channels),
        "size": params.preprocess.size,
        "normalization": NORMALIZATION,
        "target": "whole_tumor",
        "label_map": label_map,
        "arrays": {"images": "float16 (N, C, H, W)", "masks": "uint8 (N, 1, H, W), 1 = tumor"},
    }
