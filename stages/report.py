"""Stage `report`: failure analysis of a model's test split (galleries of the worst cases, missed
tumors, false alarms and best cases; Dice vs tumor size; the data behind `dvc plots`).

    python stages/report.py --dataset brats2020 --model unet --evaluation reports/brats2020/unet/evaluation \
        --slices data/slices/brats2020 --out reports/brats2020/unet

See btseg.evaluation.report for what each output holds.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from btseg.cli import run_stage, stage_arguments
from btseg.config import load_params
from btseg.evaluation.report import write_report


def main(argv: Sequence[str]) -> None:
    parser = stage_arguments(__doc__, model=True)
    parser.add_argument("--evaluation", type=Path, required=True, help="the evaluate stage's folder for this model")
    parser.add_argument("--slices", type=Path, required=True, help="the dataset's preprocessed slices (test)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the figures and plot tables")
    args = parser.parse_args(argv)
    write_report(args.dataset, args.model, args.evaluation, args.slices, args.out, load_params(args.params))


if __name__ == "__main__":
    run_stage(main, sys.argv[1:])
