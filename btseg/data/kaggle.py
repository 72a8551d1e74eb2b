"""The `kaggle` data source: fetch a pinned dataset version with kagglehub and place it in data/raw.

kagglehub downloads and unpacks into its cache (`$KAGGLEHUB_CACHE`, default ~/.cache/kagglehub);
a versioned handle already complete there resolves without any network call. The files are
then hard-linked into the destination, so the dataset sits on disk once; where the cache is on
another filesystem they are moved instead (the cache entry is then gone).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from btseg.errors import PipelineError, one_line

HANDLE = re.compile(r"[\w.-]+/[\w.-]+/versions/\d+")
CREDENTIALS_HINT = ("set KAGGLE_USERNAME and KAGGLE_KEY or create ~/.kaggle/kaggle.json "
                    "and check the network, or use data.source=sample")


def download(handle: str) -> Path:
    """Path of the unpacked dataset `owner/slug/versions/N` in the kagglehub cache."""
    if not HANDLE.fullmatch(handle):
        raise PipelineError(f"params.yaml: kaggle_handle '{handle}': expected owner/slug/versions/N (a pinned version)")
    import kagglehub  # imported here: it reads credentials and env on import, and only this path needs it

    try:
        path = kagglehub.dataset_download(handle)
    except Exception as error:  # kagglehub raises many types (HTTP, auth, connection): all mean "could not fetch"
        raise PipelineError(f"could not download Kaggle dataset {handle}: {one_line(error, 200)}; "
                            f"{CREDENTIALS_HINT}") from None
    return Path(path)


def place(source: Path, destination: Path) -> None:
    """Fill the empty folder `destination` with the tree at `source`: hard links, else moves."""
    try:
        _link_tree(source, destination)
    except OSError:  # cross-device or links unsupported: move, so the data still exists only once
        shutil.rmtree(destination)
        shutil.copytree(source, destination, copy_function=shutil.move)
        # kagglehub treats a version whose folder is gone as not cached, so it fetches again if asked
        shutil.rmtree(source, ignore_errors=True)


def _link_tree(source: Path, destination: Path) -> None:
    for folder, _, files in os.walk(source):
        target = destination / Path(folder).relative_to(source)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.link(Path(folder) / name, target / name)
