"""Stage `cv_summary`: the cross-validation folds of a dataset and model, and their ensemble, on
the fixed test split: per-fold per-case Dice, their mean and spread, the ensemble's Dice with its
interval, and the ensemble as one model file for bts-predict.

    python stages/cv_summary.py --folds models/lgg/unet/cv --slices data/slices/lgg \
        --metrics metrics/cv/lgg/unet.json --ensemble models/lgg/unet/ensemble.pt
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from btseg.cli import run_stage
from btseg.config import load_params
from btseg.evaluation.cross_validation import summarize_folds


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=Path, required=True, help="folder of the cv_train stages' fold<k>/ folders")
    parser.add_argument("--slices", type=Path, required=True, help="the dataset's preprocessed slices (test)")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--ensemble", type=Path, required=True, help="ensemble model file to write")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    summarize_folds(args.folds, args.slices, args.metrics, args.ensemble, load_params(args.params))


if __name__ == "__main__":
    run_stage(main, sys.argv[1:])
