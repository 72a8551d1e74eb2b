"""Stage `evaluate`: a model's test-split metrics (the few numbers `dvc metrics show` compares)
and the tables behind them (per slice, per case, precision-recall, threshold sweep).

    python stages/evaluate.py --model-file models/brats2020/unet/model.pt --slices data/slices/brats2020 \
        --metrics metrics/brats2020/unet.json --evaluation reports/brats2020/unet/evaluation

See btseg.evaluation.evaluate for what each output holds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from btseg.cli import run_stage
from btseg.config import load_params
from btseg.evaluation.evaluate import evaluate_model


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-file", type=Path, required=True, help="model.pt written by the train stage")
    parser.add_argument("--slices", type=Path, required=True, help="the dataset's preprocessed slices (val, test)")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--evaluation", type=Path, required=True, help="folder for the tables and probabilities")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    evaluate_model(args.model_file, args.slices, args.metrics, args.evaluation, load_params(args.params))


if __name__ == "__main__":
    run_stage(main, sys.argv[1:])
