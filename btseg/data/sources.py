"""Where a dataset's raw files come from (data.source): the synthetic sample, the user's own
folder, or the Kaggle archive through kagglehub; the `download` stage's library."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from btseg.config import Params
from btseg.data import kaggle, sample
from btseg.errors import PipelineError
from btseg.fileio import atomic_dir

log = logging.getLogger(__name__)


def fetch_dataset(dataset: str, destination: Path, params: Params) -> None:
    """Fill `destination` with `dataset` in its archive's own layout.

    Everything is built in a sibling temp folder and renamed at the end: a failed or interrupted
    download leaves no `destination` that a later run would trust.
    """
    data = params.data
    if dataset not in data.datasets:
        raise PipelineError(f"--dataset {dataset}: not in params.yaml data.datasets {data.datasets}")
    if data.source == "sample":
        with atomic_dir(destination) as partial:
            sample.write_sample(dataset, partial, params)
        log.info("%s: synthetic sample written to %s", dataset, destination)
        return
    if dataset == "folder":
        # The user's own files are copied, not linked: DVC makes the files it caches read-only,
        # and through a hard link that would change the permissions of the user's originals.
        own = Path(data.folder.path)
        if not own.is_dir():
            raise PipelineError(f"params.yaml: data.folder.path: folder {own} not found")
        with atomic_dir(destination) as partial:
            shutil.rmtree(partial)
            shutil.copytree(own, partial)
        log.info("folder: %s copied into %s", own, destination)
        return
    handle = getattr(data, dataset).kaggle_handle
    cached = kaggle.download(handle)
    with atomic_dir(destination) as partial:
        kaggle.place(cached, partial)
    log.info("%s: Kaggle %s placed in %s", dataset, handle, destination)
