"""The `sample` data source: small synthetic datasets written in each real archive's exact layout.

The files look like the Kaggle downloads (same folders, file names, HDF5 dataset names, CSV
columns, COCO JSON with its UTF-8 BOM, 640 x 640 grey-as-RGB JPEGs), so the very readers that
handle the real data are what `dvc repro` exercises. Output is deterministic for a given seed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import h5py
import numpy as np
from tqdm import tqdm

from btseg.data import phantom
from btseg.errors import PipelineError
from btseg.fileio import write_csv

BRATS_DATA_DIR = Path("BraTS2020_training_data/content/data")
BRATS_METADATA_CSV = "BraTS20 Training Metadata.csv"
BRATS_SIZE, BRATS_DEPTH = 240, 155
BRATS_SCALE = 1000.0  # real BraTS intensities are unnormalised scanner units in the hundreds/thousands

# Which phantom tissue each BraTS mask channel holds; names as in params.yaml data.brats2020.mask_channels.
MASK_TISSUE = {
    "necrotic_core": phantom.NECROSIS,
    "edema": phantom.EDEMA,
    "enhancing": phantom.ENHANCING,
}

COCO_SIZE = 640
COCO_SPLITS = ("train", "valid", "test")
COCO_CATEGORIES = [
    {"id": 0, "name": "Tumor", "supercategory": "none"},
    {"id": 1, "name": "0", "supercategory": "Tumor"},
    {"id": 2, "name": "1", "supercategory": "Tumor"},
]


def write_brats_h5(
    root: Path,
    *,
    cases: int,
    slices_per_case: int,
    image_channels: list[str],
    mask_channels: list[str],
    seed: int,
    size: int = BRATS_SIZE,
) -> None:
    """BraTS 2020 slices as in `awsaf49/brats2020-training-data`: one .h5 per (volume, slice).

    Each file holds `image` float32 (size, size, len(image_channels)) and `mask` uint8
    (size, size, len(mask_channels)), one channel per tumor sub-region (0/1); the real files are 240 px.
    """
    phantom.check_drawable(image_channels, mask_channels, MASK_TISSUE, "data.brats2020")
    rng = np.random.default_rng(seed)
    data_dir = root / BRATS_DATA_DIR
    data_dir.mkdir(parents=True)
    if slices_per_case > BRATS_DEPTH:
        raise PipelineError(f"params.yaml: data.sample.brats2020.slices_per_case: at most {BRATS_DEPTH}, "
                            f"got {slices_per_case}")
    # spread the slices over the volume so the top and bottom ones miss the lesion; the margin
    # shrinks as slices are added so the numbers stay distinct (155 gives every slice)
    margin = min(10, (BRATS_DEPTH - slices_per_case) // 2)
    slice_numbers = np.linspace(margin, BRATS_DEPTH - 1 - margin, slices_per_case).round().astype(int)
    rows = []
    for volume in tqdm(range(1, cases + 1), desc="sample brats2020", unit="case"):
        case = phantom.random_phantom(rng, size, BRATS_DEPTH)
        for slice_number in slice_numbers:
            tissue = phantom.tissue_map(case, float(slice_number))
            image = np.stack([phantom.render(case, tissue, c, rng) for c in image_channels], axis=-1)
            image = np.round(image * BRATS_SCALE)  # integer-valued like the scanner data; compresses well
            image[tissue == phantom.BACKGROUND] = 0  # BraTS is skull-stripped: background is exactly 0
            mask = np.stack([tissue == MASK_TISSUE[c] for c in mask_channels], axis=-1).astype(np.uint8)
            name = f"volume_{volume}_slice_{slice_number}.h5"
            with h5py.File(data_dir / name, "w") as h5:
                h5.create_dataset("image", data=image.astype(np.float32), compression="gzip", compression_opts=4)
                h5.create_dataset("mask", data=mask, compression="gzip", compression_opts=4)
            rows.append((f"/content/data/{name}", int(mask.any()), volume, int(slice_number)))

    header = ("slice_path", "target", "volume", "slice")
    write_csv(root / BRATS_METADATA_CSV, header, rows)
    write_csv(data_dir / "meta_data.csv", header, rows)
    write_csv(
        data_dir / "name_mapping.csv",
        ("Grade", "BraTS_2017_subject_ID", "BraTS_2018_subject_ID", "TCGA_TCIA_subject_ID",
         "BraTS_2019_subject_ID", "BraTS_2020_subject_ID"),
        [("HGG", "NA", "NA", "NA", "NA", f"BraTS20_Training_{v:03d}") for v in range(1, cases + 1)],
    )
    write_csv(
        data_dir / "survival_info.csv",
        ("Brats20ID", "Age", "Survival_days", "Extent_of_Resection"),
        [(f"BraTS20_Training_{v:03d}", round(float(rng.uniform(30, 80)), 3), int(rng.integers(50, 1500)), "GTR")
         for v in range(1, cases + 1)],
    )


def write_tumor_coco(root: Path, *, images_per_split: dict[str, int], seed: int) -> None:
    """The Roboflow COCO export of `pkdarabi/brain-tumor-image-dataset-semantic-segmentation`.

    `train/ valid/ test/`, each with `_annotations.coco.json` (UTF-8 BOM, categories 0 "Tumor",
    1 "0", 2 "1") and 640 x 640 JPEGs of a grey slice stored as RGB. Like the real export, one
    train image has no annotation and one has two (its lesion is outlined in two halves).
    """
    rng = np.random.default_rng(seed)
    image_number = 1000
    for split in COCO_SPLITS:
        count = images_per_split[split]
        split_dir = root / split
        split_dir.mkdir(parents=True)
        images, annotations = [], []
        for image_id in tqdm(range(count), desc=f"sample tumor_coco/{split}", unit="image"):
            image_number += int(rng.integers(1, 7))
            case = phantom.random_phantom(rng, COCO_SIZE, 100)
            empty = split == "train" and image_id == 0
            z = 2.0 if empty else case.lesion.center_xyz[2] + rng.uniform(-0.5, 0.5) * case.lesion.radius_xyz[2]
            tissue = phantom.tissue_map(case, z)
            grey = np.clip(phantom.render(case, tissue, "t1ce", rng) * 200, 0, 255).astype(np.uint8)
            digest = hashlib.md5(f"{seed}/{split}/{image_number}".encode()).hexdigest()
            file_name = f"{image_number}_jpg.rf.{digest}.jpg"
            cv2.imwrite(str(split_dir / file_name), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
            images.append({"id": image_id, "license": 1, "file_name": file_name, "height": COCO_SIZE,
                           "width": COCO_SIZE, "date_captured": "2023-08-19T04:37:54+00:00"})
            tumor = ((tissue == phantom.ENHANCING) | (tissue == phantom.NECROSIS)).astype(np.uint8)
            parts = [tumor]
            if split == "train" and image_id == 1:
                left = tumor.copy()
                left[:, int(case.lesion.center_xyz[0]):] = 0
                parts = [left, tumor - left]
            for part in parts:
                for polygon in _polygons(part):
                    annotations.append(_annotation(len(annotations), image_id, polygon, rng))
        payload = {
            "info": {"year": "2023", "version": "1",
                     "description": "Synthetic sample in the layout of the Roboflow export",
                     "contributor": "", "url": "", "date_created": "2023-08-19T04:37:54+00:00"},
            "licenses": [{"id": 1, "url": "https://creativecommons.org/licenses/by/4.0/", "name": "CC BY 4.0"}],
            "categories": COCO_CATEGORIES,
            "images": images,
            "annotations": annotations,
        }
        # utf-8-sig writes the byte-order mark the real export starts with
        (split_dir / "_annotations.coco.json").write_text(json.dumps(payload, indent=2), encoding="utf-8-sig")


def _polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a binary mask as flat COCO polygons [x1, y1, x2, y2, ...]."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def _annotation(annotation_id: int, image_id: int, polygon: list[float], rng: np.random.Generator) -> dict:
    xs, ys = polygon[0::2], polygon[1::2]
    x, y = min(xs), min(ys)
    w, h = max(xs) - x, max(ys) - y
    area = float(cv2.contourArea(np.asarray(polygon, np.float32).reshape(-1, 2)))
    return {"id": annotation_id, "image_id": image_id, "category_id": int(rng.integers(1, 3)),
            "bbox": [x, y, w, h], "area": area, "segmentation": [polygon], "iscrowd": 0}

