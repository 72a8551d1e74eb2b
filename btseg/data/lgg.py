"""Reader for LGG FLAIR abnormality (`mateuszbuda/lgg-mri-segmentation`), and its synthetic sample.

Layout: `kaggle_3m/<case>/<case>_<k>.tif` + `<case>_<k>_mask.tif`, one folder per patient
(`TCGA_CS_4942_19970222`), k = slice number (sort numerically: 2 before 10). Images are
256 x 256 x 3 uint8 TIFFs whose channels are pre-contrast, FLAIR, post-contrast in file order
(where a sequence was missing the archive repeats FLAIR in its place); masks are 256 x 256 uint8
with 255 = FLAIR abnormality, 0 elsewhere, and most slices have an empty mask. The Kaggle archive
holds the same tree twice (`kaggle_3m/` and `lgg-mri-segmentation/kaggle_3m/`): each case is
read once, from the shallowest copy.

`options` is the `data.lgg` params section: `channels` (names of the TIFF's channels in file
order), `input_channels` (which of them to load, in that order) and `labels` (region name ->
mask value).
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np

from btseg.data import phantom
from btseg.data.base import DOWNLOAD_HINT, MAX_LABEL_VALUE, Case, CaseRef
from btseg.data.entry import Dataset, LabelValues, Names, SampleSizes, Section, sample_of_cases
from btseg.data.images import decode
from btseg.errors import PipelineError

log = logging.getLogger(__name__)

TREE = "kaggle_3m"
DUPLICATE_TREE = Path("lgg-mri-segmentation") / TREE  # the archive's second copy of the same files
SLICE_NAME = re.compile(r"(?P<case>.+)_(?P<k>\d+)(?P<mask>_mask)?\.tif")

# The sample's TIFF channels in file order, and the phantom sequence drawn in each.
FILE_CHANNELS = ("pre_contrast", "flair", "post_contrast")
SAMPLE_SEQUENCE = {"pre_contrast": "t1", "flair": "flair", "post_contrast": "t1ce"}
SAMPLE_SCALE = 200.0  # phantom signal (about 0..1.2) -> uint8 grey levels
SAMPLE_INSTITUTIONS = ("CS", "DU", "EZ", "FG", "HT")  # TCIA source-site codes seen in the real case ids
TIFF_RAW = [cv2.IMWRITE_TIFF_COMPRESSION, 1]  # uncompressed, as the real files are
DATA_CSV_HEADER = (
    "Patient", "RNASeqCluster", "MethylationCluster", "miRNACluster", "CNCluster", "RPPACluster",
    "OncosignCluster", "COCCluster", "histological_type", "neoplasm_histologic_grade", "tumor_tissue_site",
    "laterality", "tumor_location", "gender", "age_at_initial_pathologic", "race", "ethnicity", "death01",
)


def list_cases(root: Path, options) -> list[CaseRef]:
    """One CaseRef per patient folder of every `kaggle_3m` tree under `root`, sorted by case id.

    A case folder found in several trees is counted once, from the shallowest one. `extra` holds
    `slice_index` (tuple of k, ascending), `images` and `masks` (paths in that order).
    """
    _check_options(options)
    case_dirs: dict[str, Path] = {}
    duplicates = 0
    for tree in _find_trees(root):
        for case_dir in sorted(p for p in tree.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if case_dir.name in case_dirs:
                duplicates += 1
            else:
                case_dirs[case_dir.name] = case_dir
    if duplicates:
        log.info("%s: %d case folder(s) appear in more than one %s tree; each is read once, from the shallowest",
                 root, duplicates, TREE)
    if not case_dirs:
        raise PipelineError(f"{root}: no {TREE}/<case>/<case>_<k>.tif slices found; "
                            f"is it the mateuszbuda/lgg-mri-segmentation download? {DOWNLOAD_HINT}")
    return [_case_ref(root, case_dirs[case_id]) for case_id in sorted(case_dirs)]


def read_case(case: CaseRef, options) -> Case:
    """All slices of a case: image float32 (S, C, H, W) in `input_channels` order (raw 0..255 grey
    levels), regions uint8 (S, K, H, W) 0/1 in `labels` order; an empty mask gives all-zero regions."""
    _check_options(options)
    if case.extra.get("problem"):
        raise PipelineError(case.extra["problem"])
    channel_order = [options.channels.index(name) for name in options.input_channels]
    label_values = np.array(list(options.labels.values()))
    images, regions = [], []
    first_path, first_size = None, None
    for image_path, mask_path in zip(case.extra["images"], case.extra["masks"]):
        image = _read_tif(image_path)
        mask = _read_tif(mask_path)
        if image.ndim != 3 or image.shape[2] != 3 or mask.shape != image.shape[:2]:
            raise PipelineError(
                f"{image_path}: image is {image.shape} and its mask {mask_path} is {mask.shape}; "
                f"expected (H, W, 3) and (H, W); {DOWNLOAD_HINT}")
        if first_size is None:
            first_path, first_size = image_path, mask.shape
        elif mask.shape != first_size:
            raise PipelineError(f"{image_path}: slice is {mask.shape}, but {first_path} of the same case "
                                f"is {first_size}; {DOWNLOAD_HINT}")
        unexpected = np.setdiff1d(np.unique(mask), np.append(label_values, 0))
        if unexpected.size:
            raise PipelineError(
                f"{mask_path}: mask values {unexpected.tolist()} are neither 0 nor in data.lgg.labels "
                f"{dict(options.labels)}; add them to data.lgg.labels or fix the mask")
        # cv2 returns colour as BGR: reversing restores the file's channel order (pre, FLAIR, post)
        images.append(image[:, :, ::-1].transpose(2, 0, 1)[channel_order])
        regions.append(mask[None] == label_values[:, None, None])
    return Case(
        case_id=case.case_id,
        image=np.stack(images).astype(np.float32),
        regions=np.stack(regions).astype(np.uint8),
        channel_names=tuple(options.input_channels),
        region_names=tuple(options.labels),
        slice_index=np.array(case.extra["slice_index"], dtype=int),
        source_files=tuple(str(path.relative_to(case.root)) for path in case.extra["images"]),
    )


def write_sample(root: Path, *, cases: int, slices_per_case: int, size: int, seed: int,
                 duplicate_tree: bool = True) -> None:
    """Synthetic LGG data in the archive's layout, deterministic for a seed.

    Each case is a phantom volume of `slices_per_case` slices (`<case>_1.tif` ... numbered from the
    bottom), `size` x `size` pixels (the real data is 256); channels pre-contrast, FLAIR,
    post-contrast drawn as the phantom's T1, FLAIR and T1ce. Masks are 255 on any tumor tissue
    (edema, enhancing rim, necrotic core), 0 elsewhere; slice 1 never holds tumor, and with 3 or
    more slices at least one does. Also writes `kaggle_3m/data.csv` and `README.md`, and with
    `duplicate_tree` the whole tree again under `lgg-mri-segmentation/kaggle_3m/`.
    """
    rng = np.random.default_rng(seed)
    tree = root / TREE
    tree.mkdir(parents=True)
    names = _case_names(rng, cases)
    for name in names:
        case_dir = tree / name
        case_dir.mkdir()
        volume = phantom.random_phantom(rng, size, slices_per_case)
        for k in range(1, slices_per_case + 1):
            tissue = phantom.tissue_map(volume, float(k - 1))  # z = 0 lies below every lesion
            planes = [phantom.render(volume, tissue, SAMPLE_SEQUENCE[c], rng) for c in FILE_CHANNELS]
            image = np.clip(np.round(np.stack(planes, axis=-1) * SAMPLE_SCALE), 0, 255).astype(np.uint8)
            mask = np.where(tissue >= phantom.EDEMA, 255, 0).astype(np.uint8)  # edema, rim and core
            # cv2 writes BGR: reverse so the file's channels are in FILE_CHANNELS order
            cv2.imwrite(str(case_dir / f"{name}_{k}.tif"), np.ascontiguousarray(image[:, :, ::-1]), TIFF_RAW)
            cv2.imwrite(str(case_dir / f"{name}_{k}_mask.tif"), mask, TIFF_RAW)
    with (tree / "data.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(DATA_CSV_HEADER)
        writer.writerows(_clinical_row(rng, name) for name in names)
    (tree / "README.md").write_text(
        "# LGG Segmentation Dataset (synthetic sample)\n\n"
        "Phantom brain MR images with FLAIR abnormality masks, in the layout of "
        "`mateuszbuda/lgg-mri-segmentation`.\n"
        "All images are provided in `.tif` format with 3 channels per image: "
        "pre-contrast, FLAIR, post-contrast (in this order of channels).\n"
        "Masks are binary, 1-channel images (0 and 255).\n\n"
        "`TCGA_<institution-code>_<patient-id>_<slice-number>.tif`; masks have a `_mask` suffix.\n",
        encoding="utf-8")
    if duplicate_tree:
        shutil.copytree(tree, root / DUPLICATE_TREE)


def _check_options(options) -> None:
    if len(options.channels) != 3 or len(set(options.channels)) != 3:
        raise PipelineError(f"params.yaml: data.lgg.channels {list(options.channels)}: expected 3 distinct names, "
                            "the TIFFs' channels in file order")
    unknown = [c for c in options.input_channels if c not in options.channels]
    if unknown or not options.input_channels:
        raise PipelineError(f"params.yaml: data.lgg.input_channels {list(options.input_channels)}: expected a "
                            f"non-empty subset of data.lgg.channels {list(options.channels)}")
    values = list(options.labels.values())
    if not values or len(set(values)) != len(values) \
            or not all(isinstance(v, int) and 0 < v <= MAX_LABEL_VALUE for v in values):
        raise PipelineError(f"params.yaml: data.lgg.labels {dict(options.labels)}: expected distinct mask values "
                            f"in 1..{MAX_LABEL_VALUE}, one per region")


def _find_trees(root: Path) -> list[Path]:
    """Every folder named kaggle_3m under root (root included), shallowest first. With none, root
    itself when it directly holds patient folders: data.lgg.archive pointed at kaggle_3m (the folder
    a user sees after unzipping) is copied into data/raw/lgg without its name."""
    trees = []
    for folder, subfolders, _ in os.walk(root):
        folder = Path(folder)
        if folder.name == TREE:
            trees.append(folder)
            subfolders.clear()  # case folders hold no further trees
        else:
            subfolders[:] = sorted(s for s in subfolders if not s.startswith("."))
    if not trees and root.is_dir() and any(_is_case_folder(p) for p in root.iterdir() if p.is_dir()):
        return [root]
    return sorted(trees, key=lambda tree: (len(tree.relative_to(root).parts), str(tree)))


def _is_case_folder(folder: Path) -> bool:
    """Whether `folder` holds a slice of the case it is named after (`TCGA_CS_4942_19970222_1.tif`)."""
    return any((match := SLICE_NAME.fullmatch(path.name)) and match["case"] == folder.name for path in folder.iterdir())


def _case_ref(root: Path, case_dir: Path) -> CaseRef:
    case_id = case_dir.name
    images: dict[int, Path] = {}
    masks: dict[int, Path] = {}
    for path in case_dir.iterdir():
        match = SLICE_NAME.fullmatch(path.name)
        if not match or not path.is_file():
            continue  # not a slice (notes, thumbnails, ...)
        if match["case"] != case_id:
            raise PipelineError(f"{path}: slice file of another case in folder {case_id}; move it to its own folder "
                                f"or {DOWNLOAD_HINT}")
        found = masks if match["mask"] else images
        k = int(match["k"])
        if k in found:
            raise PipelineError(f"{path}: slice {k} also in {found[k].name}; remove one or {DOWNLOAD_HINT}")
        found[k] = path
    # an unpaired file is reported when the case is read, so preprocess.on_bad_file=skip can skip the case
    problem = None
    for k in sorted(images.keys() ^ masks.keys()):
        problem = (f"{images[k]}: mask {case_id}_{k}_mask.tif missing; {DOWNLOAD_HINT}" if k in images
                   else f"{masks[k]}: image {case_id}_{k}.tif missing; {DOWNLOAD_HINT}")
        break
    if not images and problem is None:
        raise PipelineError(f"{case_dir}: no {case_id}_<k>.tif slices in the case folder; {DOWNLOAD_HINT}")
    order = sorted(images.keys() & masks.keys())  # numeric: slice 2 before slice 10
    return CaseRef(
        case_id=case_id,
        root=root,
        files=tuple(path for k in order for path in (images[k], masks[k])),
        extra={"slice_index": tuple(order), "images": tuple(images[k] for k in order),
               "masks": tuple(masks[k] for k in order), "problem": problem},
    )


def _read_tif(path: Path) -> np.ndarray:
    return decode(path, cv2.IMREAD_UNCHANGED, "TIFF", DOWNLOAD_HINT)


def _case_names(rng: np.random.Generator, count: int) -> list[str]:
    """Distinct ids like the real `TCGA_CS_4942_19970222`: site, patient, acquisition date."""
    names: set[str] = set()
    while len(names) < count:
        site = SAMPLE_INSTITUTIONS[int(rng.integers(len(SAMPLE_INSTITUTIONS)))]
        patient = int(rng.integers(4000, 9000))
        year, month, day = int(rng.integers(1995, 2004)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
        names.add(f"TCGA_{site}_{patient}_{year}{month:02d}{day:02d}")
    return sorted(names)


def _clinical_row(rng: np.random.Generator, case_name: str) -> list:
    """A `data.csv` row: patient id (the case name without its date), cluster numbers, demographics."""
    patient = case_name.rsplit("_", 1)[0]
    clusters = [int(rng.integers(1, high)) for high in (5, 6, 5, 4, 5, 4, 4)]  # RNASeq ... COC
    clinical = [int(rng.integers(1, 4)), int(rng.integers(1, 3)), 1, int(rng.integers(1, 4)), int(rng.integers(1, 5)),
                int(rng.integers(1, 3)), int(rng.integers(20, 76)), int(rng.integers(1, 4))]
    ethnicity = "" if rng.random() < 0.3 else int(rng.integers(1, 3))
    return [patient, *clusters, *clinical, ethnicity, int(rng.integers(0, 2))]


class LggParams(Section):
    kaggle_handle: str
    archive: str  # an archive you already have (unpacked folder or Kaggle .zip); "" = download kaggle_handle
    channels: Names
    input_channels: Names
    labels: LabelValues


DATASETS = (Dataset("lgg", LggParams, SampleSizes, list_cases, read_case, sample_of_cases(write_sample),
                    files="images"),)
