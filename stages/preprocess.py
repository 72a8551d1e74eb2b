"""Stage `preprocess`: data/raw/<dataset>/ -> data/slices/<dataset>/<split>/ (arrays, index.csv, meta.json)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from stages.cli import PipelineError, run_stage, stage_arguments
from stages.config import load_params
from stages.datasets.slicing import preprocess_dataset
from stages.fileio import atomic_dir

log = logging.getLogger("stages.preprocess")


def main(argv: Sequence[str]) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = load_params(args.params)
    raw = Path("data/raw") / args.dataset
    if not raw.is_dir():
        raise PipelineError(f"{raw}: missing; run `dvc repro download@{args.dataset}` first")
    with atomic_dir(Path("data/slices") / args.dataset) as partial:
        counts = preprocess_dataset(args.dataset, raw, partial, params)
    log.info("%s: slices per split %s", args.dataset, counts)


if __name__ == "__main__":
    run_stage(main)
