"""Stage `download`: a dataset's raw files in the archive's own layout, from the synthetic sample
(data.source=sample), the user's folder or Kaggle.

    python stages/download.py --dataset brats2020 --out data/raw/brats2020
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from btseg.cli import run_stage, stage_arguments
from btseg.config import load_params
from btseg.download import fetch_dataset


def main(argv: Sequence[str]) -> None:
    parser = stage_arguments(__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder to fill (replaced as a whole)")
    args = parser.parse_args(argv)
    fetch_dataset(args.dataset, args.out, load_params(args.params))


if __name__ == "__main__":
    run_stage(main, sys.argv[1:])
