"""Stage `summary`: the test per-case Dice of every dataset x model of params.yaml in one small
metrics file, the columns `dvc exp show` shows first.

    python stages/summary.py --metrics metrics --out dice.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from btseg.cli import run_stage
from btseg.config import load_params
from btseg.evaluation.summary import write_summary


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=Path, required=True,
                        help="folder of the evaluate stages' <dataset>/<model>.json")
    parser.add_argument("--out", type=Path, required=True, help="metrics JSON to write: {dataset: {model: Dice}}")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    write_summary(args.metrics, args.out, params.data.datasets, params.train.models)


if __name__ == "__main__":
    run_stage(main, sys.argv[1:])
