"""Reader for the brain-tumor COCO export (`pkdarabi/brain-tumor-image-dataset-semantic-segmentation`).

Layout: `train/ valid/ test/`, each with `_annotations.coco.json` (starts with a UTF-8 BOM) and
640 x 640 JPEGs of grey MRI stored as RGB. Every annotation is tumor whatever its category;
an image without annotations has an empty mask; several annotations are united.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from matplotlib.path import Path as MplPath

from btseg.data import sample
from btseg.data.base import Case, CaseRef
from btseg.data.entry import Dataset, PositiveInt, Section
from btseg.data.images import decode
from btseg.errors import PipelineError

ANNOTATIONS = "_annotations.coco.json"
SPLIT_FOLDERS = {"train": "train", "val": "valid", "test": "test"}  # our split name -> archive folder
ROBOFLOW_NAME = re.compile(r"(.+?)_(jpg|jpeg|png)\.rf\.[0-9a-f]+\.(jpg|jpeg|png)", re.IGNORECASE)


@dataclass(frozen=True)
class CocoImage:
    path: Path
    width: int
    height: int
    polygons: tuple[tuple[float, ...], ...]

    @property
    def case_id(self) -> str:
        """The source image behind Roboflow's `<name>_jpg.rf.<hash>.jpg` copies."""
        match = ROBOFLOW_NAME.fullmatch(self.path.name)
        return match[1] if match else self.path.stem


def read_split(root: Path, split: str) -> list[CocoImage]:
    """The images of one split (`train`, `val` or `test`) with their polygons, in file-name order."""
    json_path = root / SPLIT_FOLDERS[split] / ANNOTATIONS
    try:
        payload = json.loads(json_path.read_text(encoding="utf-8-sig"))  # -sig: the export starts with a BOM
    except FileNotFoundError:
        raise PipelineError(f"{json_path}: missing; is {root} the tumor COCO download? "
                            "re-run the download stage") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PipelineError(f"{json_path}: not valid JSON ({error}); the file is truncated or corrupt") from None
    try:
        polygons: dict[int, list[tuple[float, ...]]] = {image["id"]: [] for image in payload["images"]}
        for annotation in payload["annotations"]:
            image_id = annotation["image_id"]
            if image_id not in polygons:
                raise PipelineError(f"{json_path}: annotation {annotation.get('id')} refers to unknown "
                                    f"image_id {image_id}")
            segmentation = annotation["segmentation"]
            if not isinstance(segmentation, list):
                raise PipelineError(f"{json_path}: annotation {annotation.get('id')}: RLE segmentation is not "
                                    "supported, expected polygons")
            polygons[image_id].extend(tuple(float(v) for v in polygon) for polygon in segmentation)
        images = [
            CocoImage(root / SPLIT_FOLDERS[split] / image["file_name"], int(image["width"]), int(image["height"]),
                      tuple(polygons[image["id"]]))
            for image in payload["images"]
        ]
    except (KeyError, TypeError, ValueError) as error:
        raise PipelineError(f"{json_path}: not a COCO annotation file (field {error} missing or malformed)") from None
    return sorted(images, key=lambda image: image.path.name)


def list_cases(root: Path, options=None) -> list[CaseRef]:
    """One case per source image and split: Roboflow's `*.rf.<hash>` copies of an image are its slices.

    The same source image in two splits gives two cases with one case_id: the preprocess stage's
    leakage check reports it.
    """
    cases = []
    for split in SPLIT_FOLDERS:
        grouped: dict[str, list[CocoImage]] = {}
        for image in read_split(root, split):
            grouped.setdefault(image.case_id, []).append(image)
        for case_id, images in sorted(grouped.items()):
            cases.append(CaseRef(case_id, root, tuple(i.path for i in images), split=split,
                                 extra={"images": tuple(images)}))
    return cases


def read_case(case: CaseRef, options=None) -> Case:
    """The case's images (S, 1, H, W) grey and whole-tumor masks (S, 1, H, W)."""
    images, masks = zip(*(read_image(image) for image in case.extra["images"]))
    sizes = {image.shape for image in images}
    if len(sizes) > 1:
        raise PipelineError(f"{case.files[0]}: copies of source image {case.case_id} differ in size {sorted(sizes)}")
    return Case(case.case_id, np.stack(images), np.stack(masks), ("grey",), ("tumor",), np.arange(len(images)),
                tuple(str(p.relative_to(case.root)) for p in case.files))


def read_image(image: CocoImage) -> tuple[np.ndarray, np.ndarray]:
    """(grey image float32 (1, H, W), whole-tumor mask uint8 (1, H, W)) of one COCO image."""
    if not image.path.is_file():
        raise PipelineError(f"{image.path}: listed in {ANNOTATIONS} but missing; re-run the download stage")
    grey = decode(image.path, cv2.IMREAD_GRAYSCALE, "image", "re-run the download stage")
    if grey.shape != (image.height, image.width):
        raise PipelineError(f"{image.path}: image is {grey.shape[1]}x{grey.shape[0]}, "
                            f"{ANNOTATIONS} says {image.width}x{image.height}")
    return grey[None].astype(np.float32), rasterize(image.polygons, image.height, image.width)[None]


def rasterize(polygons: tuple[tuple[float, ...], ...], height: int, width: int) -> np.ndarray:
    """Union of filled polygons [x1, y1, x2, y2, ...] as a uint8 (H, W) 0/1 mask.

    Vertices are pixel-edge coordinates (COCO's convention), so a pixel is inside when its
    centre is (half-open: x0 <= centre < x1): the rectangle from (x0, y0) to (x1, y1) with integer
    corners covers pixels x0 <= x < x1, exactly its COCO bbox.
    """
    mask = np.zeros((height, width), bool)
    for polygon in polygons:
        if len(polygon) < 6 or len(polygon) % 2:
            continue  # not a polygon (fewer than 3 vertices); COCO exports carry such debris
        vertices = np.asarray(polygon, np.float64).reshape(-1, 2)
        # test only the pixel centres inside the polygon's bounding box
        x0, y0 = np.clip(np.floor(vertices.min(0)).astype(int), 0, [width, height])
        x1, y1 = np.clip(np.ceil(vertices.max(0)).astype(int), 0, [width, height])
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        # a hair past the centre: a centre exactly on an edge is then inside at the left/top edge and
        # outside at the right/bottom one, the half-open rule that tiles neighbouring polygons
        centres = np.column_stack([xx.ravel(), yy.ravel()]) + (0.5 + 1e-6)
        inside = MplPath(vertices).contains_points(centres).reshape(yy.shape)
        mask[y0:y1, x0:x1] |= inside
    return mask.astype(np.uint8)


class TumorCocoParams(Section):
    kaggle_handle: str
    archive: str  # an archive you already have (unpacked folder or Kaggle .zip); "" = download kaggle_handle


CocoSampleSizes = dict[Literal["train", "valid", "test"], PositiveInt]  # data.sample.tumor_coco: images per split


def _write_sample(root: Path, options: TumorCocoParams, sizes: dict, seed: int) -> None:
    sample.write_tumor_coco(root, images_per_split=sizes, seed=seed)


# grey images stored as RGB, read as one channel; every annotation is tumor
DATASETS = (Dataset("tumor_coco", TumorCocoParams, CocoSampleSizes, list_cases, read_case, _write_sample,
                    files="images", channels=lambda o: ["grey"], input_channels=lambda o: ["grey"],
                    sub_regions=lambda o: ["tumor"]),)
