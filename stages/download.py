"""Stage `download`: data/raw/<dataset>/ in the archive's own layout, from Kaggle or the sample generator."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from stages.cli import PipelineError, run_stage, stage_arguments
from stages.config import load_params
from stages.datasets import kaggle, sample
from stages.fileio import atomic_dir

log = logging.getLogger("stages.download")


def main(argv: Sequence[str]) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = load_params(args.params)
    data = params.data
    if args.dataset not in data.datasets:
        raise PipelineError(f"--dataset {args.dataset}: not in params.yaml data.datasets {data.datasets}")
    destination = Path("data/raw") / args.dataset
    # Everything is built in a sibling temp folder and renamed at the end: a failed or
    # interrupted download leaves no data/raw/<dataset> that a later run would trust.
    if data.source == "sample":
        with atomic_dir(destination) as partial:
            sample.write_sample(args.dataset, partial, params)
        log.info("%s: synthetic sample written to %s", args.dataset, destination)
        return
    if args.dataset == "folder":
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
    handle = getattr(data, args.dataset).kaggle_handle
    cached = kaggle.download(handle)
    with atomic_dir(destination) as partial:
        kaggle.place(cached, partial)
    log.info("%s: Kaggle %s placed in %s", args.dataset, handle, destination)

if __name__ == "__main__":
    run_stage(main)
