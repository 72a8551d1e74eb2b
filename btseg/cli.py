"""What the stage entry points share: their arguments as dvc.yaml passes them (the commands' one-line
errors are btseg.errors.run_stage, re-exported here for them)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import yaml

from btseg.config import MODEL_NAMES
from btseg.data.registry import DATASET_NAMES
from btseg.errors import run_stage

__all__ = ["run_stage", "stage_arguments", "stage_command"]


def stage_arguments(description: str, *, model: bool = False) -> argparse.ArgumentParser:
    """Parser with the arguments dvc.yaml passes: `--dataset` (and `--model` for per-model stages)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=DATASET_NAMES,
                        help="dataset name from params.yaml data.datasets")
    if model:
        parser.add_argument("--model", required=True, choices=MODEL_NAMES,
                            help="model name from params.yaml train.models")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def stage_command(stage: str, repo: Path, **items: str) -> list[str]:
    """The command line dvc.yaml runs for `stage` with its matrix items filled in (dataset=..., model=...),
    this interpreter as `python` and the stage script's path made absolute, so a stage can run
    outside DVC (tests, benchmarks) with exactly the paths dvc.yaml gives it."""
    command = yaml.safe_load((repo / "dvc.yaml").read_text(encoding="utf-8"))["stages"][stage]["cmd"]
    for name, value in items.items():
        command = command.replace("${item." + name + "}", value)
    program, script, *rest = shlex.split(command)
    return [sys.executable, str(repo / script), *rest]
