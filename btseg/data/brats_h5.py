"""Reader for BraTS 2020 as HDF5 slices (`awsaf49/brats2020-training-data`).

Layout: `BraTS2020_training_data/content/data/volume_<V>_slice_<S>.h5`, each with `image`
(240, 240, 4) float and `mask` (240, 240, 3) uint8, one mask channel per tumor sub-region.
The volume number V is the patient (case) id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from btseg.data import sample
from btseg.data.base import DOWNLOAD_HINT, Case, CaseRef
from btseg.data.entry import Dataset, Names, SampleSizes, Section
from btseg.errors import PipelineError, one_line

DATA_DIR = Path("BraTS2020_training_data/content/data")
FILE_PATTERN = re.compile(r"volume_(\d+)_slice_(\d+)\.h5")


@dataclass(frozen=True)
class SliceFile:
    path: Path
    volume: int
    slice_index: int

    @property
    def case_id(self) -> str:
        return f"volume_{self.volume}"


def list_slices(root: Path) -> list[SliceFile]:
    """Every `volume_<V>_slice_<S>.h5` under the archive root, ordered by volume then slice."""
    data_dir = root / DATA_DIR
    if not data_dir.is_dir():
        raise PipelineError(f"{data_dir}: folder missing; is {root} a BraTS 2020 h5 download? "
                            "re-run the download stage")
    found = []
    for path in data_dir.iterdir():
        match = FILE_PATTERN.fullmatch(path.name)
        if match:
            found.append(SliceFile(path, int(match[1]), int(match[2])))
    if not found:
        raise PipelineError(f"{data_dir}: no volume_<V>_slice_<S>.h5 files; re-run the download stage")
    return sorted(found, key=lambda f: (f.volume, f.slice_index))


def read_slice(path: Path, image_channels: int, mask_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """One slice as (image float32 (C, H, W), mask uint8 (K, H, W)); a bad file raises PipelineError naming it."""
    image = read_image(path, image_channels, DOWNLOAD_HINT)
    mask = _read(path, "mask", DOWNLOAD_HINT)
    if mask.shape != image.shape[1:] + (mask_channels,):
        raise PipelineError(f"{path}: 'mask' has shape {mask.shape}, expected {image.shape[1:] + (mask_channels,)} "
                            "per data.brats2020.mask_channels")
    unexpected = sorted(set(np.unique(mask).tolist()) - {0, 1})
    if unexpected:
        raise PipelineError(f"{path}: 'mask' holds values {unexpected}, expected 0/1 per sub-region channel "
                            "(data.brats2020.mask_channels)")
    return image, mask.transpose(2, 0, 1).astype(np.uint8)


def read_image(path: Path, image_channels: int, hint: str) -> np.ndarray:
    """A slice's image as float32 (C, H, W), without its mask (prediction reads slices the user brought);
    a missing, damaged, misshapen or non-finite image raises PipelineError naming the file, then `hint`."""
    image = _read(path, "image", hint).astype(np.float32)
    if image.ndim != 3 or image.shape[-1] != image_channels:
        raise PipelineError(f"{path}: 'image' has shape {image.shape}, expected (H, W, {image_channels}) "
                            "per data.brats2020.image_channels")
    if not np.isfinite(image).all():
        raise PipelineError(f"{path}: 'image' holds NaN or infinite values")
    return image.transpose(2, 0, 1)


def _read(path: Path, key: str, hint: str) -> np.ndarray:
    try:
        with h5py.File(path, "r") as h5:
            if key not in h5:
                raise PipelineError(f"{path}: dataset '{key}' missing; {hint}")
            return np.asarray(h5[key])
    except PipelineError:
        raise
    except (OSError, KeyError, ValueError) as error:
        raise PipelineError(f"{path}: unreadable HDF5 ({one_line(error)}); the file is truncated or corrupt, "
                            f"{hint}") from None


def list_cases(root: Path, options) -> list[CaseRef]:
    """One case per volume (patient), its slice files in slice order."""
    cases: dict[int, list[SliceFile]] = {}
    for file in list_slices(root):
        cases.setdefault(file.volume, []).append(file)
    return [CaseRef(files[0].case_id, root, tuple(f.path for f in files),
                    extra={"slices": tuple(f.slice_index for f in files)})
            for _, files in sorted(cases.items())]


def read_case(case: CaseRef, options) -> Case:
    """All slices of a volume; image channels picked and ordered by `options.input_channels`."""
    stored = list(options.image_channels)
    pick = [stored.index(name) for name in options.input_channels]
    images, masks = [], []
    for path in case.files:
        image, mask = read_slice(path, len(stored), len(options.mask_channels))
        images.append(image[pick])
        masks.append(mask)
    return Case(case.case_id, np.stack(images), (np.stack(masks) > 0).astype(np.uint8),
                tuple(options.input_channels), tuple(options.mask_channels),
                np.asarray(case.extra["slices"]), tuple(str(p.relative_to(case.root)) for p in case.files))


class BratsH5Params(Section):
    kaggle_handle: str
    archive: str  # an archive you already have (unpacked folder or Kaggle .zip); "" = download kaggle_handle
    image_channels: Names  # as stored in the .h5 files, in order
    mask_channels: Names  # sub-regions as stored, in order
    input_channels: Names  # subset/order fed to the model


def _write_sample(root: Path, options: BratsH5Params, sizes: SampleSizes, seed: int) -> None:
    sample.write_brats_h5(root, cases=sizes.cases, slices_per_case=sizes.slices_per_case, size=sizes.size,
                          image_channels=options.image_channels, mask_channels=options.mask_channels, seed=seed)


DATASETS = (Dataset("brats2020", BratsH5Params, SampleSizes, list_cases, read_case, _write_sample, files="h5",
                    channels=lambda o: list(o.image_channels), sub_regions=lambda o: list(o.mask_channels)),)
