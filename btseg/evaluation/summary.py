"""The `summary` stage's library: the test per-case Dice of every dataset x model in one small
metrics file, `dice.json` = {dataset: {model: Dice}}.

dvc.yaml lists the summary stage before the per-pair evaluate stages, so `dvc exp show` puts these
columns (`lgg.unet`, `lgg.resunet`, ...) first: when the table is wider than the terminal, DVC folds
the columns on the right into one "…" column, and the per-pair files' other numbers are folded
before any dataset x model's Dice.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from btseg.errors import PipelineError
from btseg.fileio import write_json


def read_dice(path: Path) -> float:
    """The per-case Dice an evaluate stage wrote to metrics file `path`."""
    try:
        dice = json.loads(path.read_text())["per_case"]["dice"]
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; the evaluate stage writes it (dvc repro)") from None
    except (ValueError, KeyError, TypeError):
        raise PipelineError(f"{path}: no per_case.dice in it; is it an evaluate stage's metrics file?") from None
    if not isinstance(dice, (int, float)) or isinstance(dice, bool) or not math.isfinite(dice):
        raise PipelineError(f"{path}: per_case.dice is {dice!r}, not a number")
    return float(dice)


def dice_table(metrics_dir: Path, datasets: Sequence[str], models: Sequence[str]) -> dict[str, dict[str, float]]:
    """{dataset: {model: per-case Dice}} from `metrics_dir/<dataset>/<model>.json`, in params order
    (files of datasets or models no longer listed are left out)."""
    return {dataset: {model: read_dice(metrics_dir / dataset / f"{model}.json") for model in models}
            for dataset in datasets}


def write_summary(metrics_dir: Path, out: Path, datasets: Sequence[str],
                  models: Sequence[str]) -> dict[str, dict[str, float]]:
    table = dice_table(metrics_dir, datasets, models)
    write_json(out, table)
    return table
