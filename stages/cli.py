"""What every stage entry point shares: argument parsing, logging, and one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import get_args

log = logging.getLogger("stages")


class PipelineError(Exception):
    """An expected failure (bad params, bad input file, no credentials).

    The message is one line a user can act on: it names the file or parameter at fault and
    what to do. Entry points print it without a traceback and exit non-zero.
    """


def one_line(error: BaseException, limit: int | None = None) -> str:
    """An exception's message on one line (whitespace collapsed), cut at `limit` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if limit is None or len(text) <= limit else text[:limit] + "..."


def stage_arguments(description: str, *, model: bool = False) -> argparse.ArgumentParser:
    """Parser with the arguments dvc.yaml passes: `--dataset` (and `--model` for per-model stages)."""
    from stages.config import DatasetName, ModelName  # here: config imports this module

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dataset", required=True, choices=get_args(DatasetName), help="dataset name from params.yaml data.datasets")
    if model:
        parser.add_argument("--model", required=True, choices=get_args(ModelName), help="model name from params.yaml train.models")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def run_stage(main: Callable[[Sequence[str]], None], argv: Sequence[str] | None = None) -> None:
    """Run a stage's `main`, turning expected failures into one line on stderr and exit code 1."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main(sys.argv[1:] if argv is None else argv)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: no output was moved into place", file=sys.stderr)
        sys.exit(130)
