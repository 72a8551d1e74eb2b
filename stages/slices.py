"""The preprocessed-slices contract between `preprocess` and the stages after it.

`data/slices/<dataset>/<split>/` holds:
- `images.npy`  float16 (N, C, H, W), normalised (see meta.json `normalization`), memory-mappable;
- `masks.npy`   uint8 (N, 1, H, W), 1 = whole tumor;
- `index.csv`   one row per slice: row, case_id, slice_index, source_file, tumor_pixels;
- `meta.json`   what the arrays hold; readers check it instead of assuming.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stages.cli import PipelineError
from stages.fileio import write_json

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
INDEX_COLUMNS = ("row", "case_id", "slice_index", "source_file", "tumor_pixels")
META_FIELDS = ("schema_version", "dataset", "split", "source", "source_version", "channels", "size",
               "normalization", "target", "label_map", "counts", "arrays")


@dataclass(frozen=True)
class SliceSet:
    """One split of one dataset, arrays memory-mapped read-only."""

    images: np.ndarray  # float16 (N, C, H, W)
    masks: np.ndarray  # uint8 (N, 1, H, W)
    index: pd.DataFrame
    meta: dict


class SliceWriter:
    """Streams slices into preallocated memory-mapped arrays, so memory stays flat for any dataset size."""

    def __init__(self, folder: Path, count: int, channels: int, size: int):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.images = np.lib.format.open_memmap(folder / "images.npy", "w+", np.float16, (count, channels, size, size))
        self.masks = np.lib.format.open_memmap(folder / "masks.npy", "w+", np.uint8, (count, 1, size, size))
        self.rows: list[tuple] = []

    def add(self, image: np.ndarray, mask: np.ndarray, case_id: str, slice_index: int, source_file: str) -> None:
        row = len(self.rows)
        self.images[row] = image
        self.masks[row] = mask
        self.rows.append((row, case_id, slice_index, source_file, int(mask.sum())))

    def close(self, meta: dict) -> None:
        if len(self.rows) != len(self.images):
            raise RuntimeError(f"{self.folder}: wrote {len(self.rows)} of {len(self.images)} slices")
        self.images.flush()
        self.masks.flush()
        del self.images, self.masks
        with (self.folder / "index.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(INDEX_COLUMNS)
            writer.writerows(self.rows)
        cases = {row[1] for row in self.rows}
        tumor_slices = sum(1 for row in self.rows if row[4] > 0)
        meta = {"schema_version": SCHEMA_VERSION, **meta,
                "counts": {"slices": len(self.rows), "cases": len(cases), "tumor_slices": tumor_slices}}
        write_json(self.folder / "meta.json", meta)


def load_split(root: Path, split: str) -> SliceSet:
    """Load and check one split; any mismatch raises PipelineError naming the file and field."""
    folder = Path(root) / split
    meta_path = folder / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{meta_path}: missing; run `dvc repro` to (re)create the preprocessed slices") from None
    except json.JSONDecodeError as error:
        raise PipelineError(f"{meta_path}: not valid JSON ({error})") from None
    missing = [field for field in META_FIELDS if field not in meta]
    if missing:
        raise PipelineError(f"{meta_path}: field(s) {missing} missing")
    if meta["schema_version"] != SCHEMA_VERSION:
        raise PipelineError(f"{meta_path}: schema_version {meta['schema_version']}, this code reads {SCHEMA_VERSION}; re-run preprocess")
    count, channels, size = meta["counts"]["slices"], len(meta["channels"]), meta["size"]
    expected = {"images.npy": (np.float16, (count, channels, size, size)), "masks.npy": (np.uint8, (count, 1, size, size))}
    arrays = {}
    for name, (dtype, shape) in expected.items():
        path = folder / name
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise PipelineError(f"{path}: unreadable ({error}); re-run preprocess") from None
        if array.dtype != dtype or array.shape != shape:
            raise PipelineError(f"{path}: {array.dtype} {array.shape}, meta.json says {np.dtype(dtype)} {shape}")
        arrays[name] = array
    index_path = folder / "index.csv"
    try:
        index = pd.read_csv(index_path, dtype={"case_id": str})
    except (OSError, pd.errors.ParserError) as error:
        raise PipelineError(f"{index_path}: unreadable ({error})") from None
    if tuple(index.columns) != INDEX_COLUMNS or len(index) != count:
        raise PipelineError(f"{index_path}: expected columns {list(INDEX_COLUMNS)} and {count} rows, "
                            f"got {list(index.columns)} and {len(index)} rows")
    return SliceSet(arrays["images.npy"], arrays["masks.npy"], index, meta)
