"""Stage `preprocess`: a dataset's raw files -> per-split slice arrays (images.npy, masks.npy,
index.csv, meta.json in train/, val/, test/).

    python stages/preprocess.py --dataset brats2020 --raw data/raw/brats2020 --out data/slices/brats2020
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from btseg.cli import run_stage, stage_arguments
from btseg.config import load_params
from btseg.errors import PipelineError
from btseg.fileio import atomic_dir
from btseg.preprocessing.dataset import preprocess_dataset

log = logging.getLogger("stages.preprocess")


def main(argv: Sequence[str]) -> None:
    parser = stage_arguments(__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="the download stage's folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the split folders (replaced as a whole)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if not args.raw.is_dir():
        raise PipelineError(f"{args.raw}: missing; run `dvc repro download@{args.dataset}` first")
    with atomic_dir(args.out) as partial:
        counts = preprocess_dataset(args.dataset, args.raw, partial, params)
    log.info("%s: slices per split %s", args.dataset, counts)


if __name__ == "__main__":
    run_stage(main, sys.argv[1:])
