"""Writing outputs so that an interrupted stage never leaves something DVC or the next stage trusts.

Every output is built under a sibling path `<name>.partial-<pid>` and renamed into place only
when complete; leftovers of a killed run are removed the next time the stage writes there.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _partial_path(final: Path) -> Path:
    return final.with_name(f"{final.name}.partial-{os.getpid()}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _remove_leftovers(final: Path) -> None:
    for stale in final.parent.glob(f"{final.name}.partial-*"):
        _remove(stale)


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `final`, on failure it is deleted."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(final)
    partial = _partial_path(final)
    partial.mkdir()
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _remove(final)
    partial.rename(final)


@contextmanager
def atomic_file(final: str | Path) -> Iterator[Path]:
    """Yield a temporary file path; on success it replaces `final` (atomically), else it is deleted."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(final)
    partial = _partial_path(final)
    try:
        yield partial
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    try:
        os.replace(partial, final)
    except OSError:  # e.g. a folder where the file should go: leave nothing half-done behind
        partial.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON (indented, keys in the given order) atomically."""
    with atomic_file(path) as partial:
        partial.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    """A plain CSV file (comma-separated, header row first), as the archives' metadata tables are."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
