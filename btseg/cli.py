"""What every stage entry point shares: argument parsing, logging, and one-line errors."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from btseg.data.registry import DATASET_NAMES
from btseg.errors import PipelineError
from btseg.models import MODELS

log = logging.getLogger("btseg")


def stage_arguments(description: str, *, model: bool = False) -> argparse.ArgumentParser:
    """Parser with the arguments dvc.yaml passes: `--dataset` (and `--model` for per-model stages)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=DATASET_NAMES, help="dataset name from params.yaml data.datasets")
    if model:
        parser.add_argument("--model", required=True, choices=list(MODELS), help="model name from params.yaml train.models")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def run_stage(main: Callable[[Sequence[str]], None], argv: Sequence[str] | None = None) -> None:
    """Run a stage's `main`, turning expected failures into one line on stderr and exit code 1.

    A reader that closed stdout early (`bts-recipe --list | head -1`) ends the command quietly with
    141, the status a shell gives a command killed by SIGPIPE, as `ls | head` would.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()  # inside the try: a broken pipe often shows only when the buffer is written
    except BrokenPipeError:
        # Python's recipe (docs, signal module): point stdout at devnull so the flush at exit cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: no output was moved into place", file=sys.stderr)
        sys.exit(130)


def stage_command(stage: str, repo: Path, **items: str) -> list[str]:
    """The command line dvc.yaml runs for `stage` with its matrix items filled in (dataset=..., model=...),
    this interpreter as `python` and the stage script's path made absolute, so a stage can run
    outside DVC (tests, benchmarks) with exactly the paths dvc.yaml gives it."""
    command = yaml.safe_load((repo / "dvc.yaml").read_text(encoding="utf-8"))["stages"][stage]["cmd"]
    for name, value in items.items():
        command = command.replace("${item." + name + "}", value)
    program, script, *rest = shlex.split(command)
    return [sys.executable, str(repo / script), *rest]
