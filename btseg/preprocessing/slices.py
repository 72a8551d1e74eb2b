"""The preprocessed-slices contract between `preprocess` and the stages after it.

`data/slices/<dataset>/<split>/` holds:
- `images.npy`  float16 (N, C, H, W), normalised (see meta.json `normalization`), memory-mappable;
- `masks.npy`   uint8 (N, K, H, W), one 0/1 channel per target (meta.json `targets`: name -> sub-regions);
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

from btseg.errors import PipelineError
from btseg.fileio import write_json

SCHEMA_VERSION = 2
SPLITS = ("train", "val", "test")
INDEX_COLUMNS = ("row", "case_id", "slice_index", "source_file", "tumor_pixels")
META_FIELDS = ("schema_version", "dataset", "split", "source", "source_version", "channels", "size",
               "normalization", "targets", "counts", "arrays")


@dataclass(frozen=True)
class SliceSet:
    """One split of one dataset, arrays memory-mapped read-only."""

    images: np.ndarray  # float16 (N, C, H, W)
    masks: np.ndarray  # uint8 (N, K, H, W), K = len(meta["targets"])
    index: pd.DataFrame
    meta: dict


class NpyStream:
    """Appends rows to a .npy file whose length is unknown until the end.

    The header is written with room to spare and rewritten with the final row count on
    `close`, so rows stream straight to disk and memory stays flat for any dataset size.
    """

    HEADER_BYTES = 128  # magic (8) + length (2) + dict padded with spaces, ending in a newline

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...]):
        self.path, self.dtype, self.row_shape, self.rows = path, np.dtype(dtype), tuple(row_shape), 0
        self.handle = path.open("wb")
        self.handle.write(self._header())

    def _header(self) -> bytes:
        header = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                       "shape": (self.rows, *self.row_shape)})
        body = header.ljust(self.HEADER_BYTES - 10 - 1) + "\n"
        return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")

    def append(self, rows: np.ndarray) -> None:
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path}: rows of shape {rows.shape[1:]}, expected {self.row_shape}")
        self.handle.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        self.handle.seek(0)
        self.handle.write(self._header())
        self.handle.close()


class SliceWriter:
    """Writes one split: streams slices to images.npy / masks.npy, then index.csv and meta.json."""

    def __init__(self, folder: Path, channels: int, targets: int, size: int):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.images = NpyStream(folder / "images.npy", np.float16, (channels, size, size))
        self.masks = NpyStream(folder / "masks.npy", np.uint8, (targets, size, size))
        self.rows: list[tuple] = []

    def add(self, images: np.ndarray, masks: np.ndarray, case_id: str, slice_index, source_files) -> None:
        """Append a case's slices: images (S, C, size, size), masks (S, K, size, size)."""
        self.images.append(images)
        self.masks.append(masks)
        tumor = masks.reshape(len(masks), -1).sum(axis=1)
        for i in range(len(images)):
            self.rows.append((len(self.rows), case_id, int(slice_index[i]), source_files[i], int(tumor[i])))

    def close(self, meta: dict) -> dict:
        """Finish the arrays and write index.csv and meta.json (counts added); returns the meta."""
        self.images.close()
        self.masks.close()
        with (self.folder / "index.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(INDEX_COLUMNS)
            writer.writerows(self.rows)
        cases = {row[1] for row in self.rows}
        tumor_slices = sum(1 for row in self.rows if row[4] > 0)
        meta = {"schema_version": SCHEMA_VERSION, **meta,
                "counts": {"slices": len(self.rows), "cases": len(cases), "tumor_slices": tumor_slices}}
        write_json(self.folder / "meta.json", meta)
        return meta


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
        raise PipelineError(f"{meta_path}: schema_version {meta['schema_version']}, this code reads {SCHEMA_VERSION}; "
                            "re-run preprocess")
    # 2.5D input (preprocess.neighbours = k) stores each sequence 2k + 1 times: the slice and its neighbours
    stacked = 2 * meta.get("geometry", {}).get("neighbours", 0) + 1
    count, channels, size = meta["counts"]["slices"], len(meta["channels"]) * stacked, meta["size"]
    targets = len(meta["targets"])
    expected = {"images.npy": (np.float16, (count, channels, size, size)),
                "masks.npy": (np.uint8, (count, targets, size, size))}
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
