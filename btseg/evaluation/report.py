"""The `report` stage's library: failure analysis of the test split.

Galleries (MRI slice, then TP/FN/FP overlay with the ground-truth outline; Dice and tumor size in
each title): worst_cases.png, missed_tumors.png, false_alarms.png and best_cases.png for contrast.
analysis.png: Dice vs tumor size, per-case Dice distribution, precision-recall curve. The same data
as CSV for `dvc plots`: dice_vs_size.csv, case_dice.csv, pr_curve.csv. The first target (whole
tumor / WT) is the one shown; the threshold is the one evaluate chose (evaluation/settings.json).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from btseg.config import Params
from btseg.decisions.postprocess import NONE, segment, thresholds_each_case
from btseg.errors import PipelineError
from btseg.evaluation import failures
from btseg.evaluation.plotting import analysis_figure, gallery_figure
from btseg.fileio import atomic_file
from btseg.preprocessing.slices import load_split

log = logging.getLogger(__name__)


def _read_evaluation(evaluation: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame, pd.DataFrame, np.ndarray]:
    try:
        settings = json.loads((evaluation / "settings.json").read_text(encoding="utf-8"))
        tables = [pd.read_csv(evaluation / f"{name}.csv", dtype={"case_id": str})
                  for name in ("per_slice", "per_case", "pr_curve")]
        probabilities = np.load(evaluation / "probabilities.npy", mmap_mode="r")
    except FileNotFoundError as error:
        raise PipelineError(f"{error.filename}: missing; run the evaluate stage first") from None
    return settings, *tables, probabilities


def _save(figure, path: Path) -> None:
    with atomic_file(path) as partial:
        figure.savefig(partial, dpi=100, format="png")
    plt.close(figure)


def write_report(dataset: str, model: str, evaluation: Path, slices: Path, out: Path, params: Params) -> None:
    """Galleries, analysis.png and the plot tables of `dataset` / `model` into `out`, from the
    evaluate stage's `evaluation` folder and the test split of `slices`."""
    settings, per_slice, per_case, pr_curve, probabilities = _read_evaluation(evaluation)
    test = load_split(slices, "test")
    target = next(iter(test.meta["targets"]))  # the first target (whole tumor / WT) is the one plotted
    per_slice = per_slice[per_slice.target == target].reset_index(drop=True)
    per_case = per_case[per_case.target == target].reset_index(drop=True)
    pr_curve = pr_curve[pr_curve.target == target].reset_index(drop=True)
    if len(per_slice) != len(test.images) or len(probabilities) != len(test.images):
        raise PipelineError(f"{evaluation}: {len(per_slice)} rows for {len(test.images)} test slices; re-run evaluate")
    threshold, rule = float(settings["threshold"]), str(settings.get("postprocess", NONE))
    predicted = segment(probabilities.astype(np.float32), test.index, threshold, rule)[:, 0]  # what was scored
    channels = test.meta["channels"]
    wanted = params.report.display_channel
    channel = channels.index(wanted) if wanted in channels else 0
    k = params.report.worst_k
    decision = ("each case at its own threshold" if thresholds_each_case(rule)
                else f"threshold {threshold:.2f}") + ("" if rule == NONE else f", {rule}")
    where = f"{dataset} / {model}, test split, {target} ({channels[channel]}), {decision}"

    worst = failures.worst_cases(per_case, per_slice, k)
    galleries = {
        "worst_cases": (worst, "worst cases by per-case Dice", "no case with tumor or prediction"),
        "missed_tumors": (failures.missed_tumors(per_slice, k), "missed tumors (tumor present, nothing predicted)",
                          "no missed tumor"),
        "false_alarms": (failures.false_alarms(per_slice, k), "false alarms (no tumor, something predicted)",
                         "no false alarm"),
        "best_cases": (failures.best_cases(per_case, per_slice, k, exclude=set(worst.case_id)),
                       "best cases by per-case Dice (other than the worst)", "no case with tumor beyond the worst"),
    }
    for name, (chosen, what, empty) in galleries.items():
        rows = chosen.index.to_numpy()
        figure = gallery_figure(test.images[rows, channel].astype(np.float32), test.masks[rows, 0],
                                predicted[rows], chosen.title.tolist(), f"{what}\n{where}", f"{empty} ({decision})")
        _save(figure, out / f"{name}.png")
    _save(analysis_figure(per_slice, per_case, pr_curve, threshold, where), out / "analysis.png")

    tumor = per_slice[per_slice.truth_pixels > 0]
    plots = {
        "dice_vs_size": (tumor[["case_id", "slice_index", "truth_pixels", "dice"]]
                         .rename(columns={"truth_pixels": "tumor_pixels"})),
        "case_dice": per_case[["case_id", "dice", "hd95_px"]].sort_values("dice", kind="stable"),
        "pr_curve": pr_curve[["threshold", "recall", "precision", "dice"]],
    }
    for name, table in plots.items():
        with atomic_file(out / f"{name}.csv") as partial:
            table.to_csv(partial, index=False, float_format="%.6f")
    log.info("%s/%s: galleries (%s), analysis.png and plot data written", dataset, model,
             ", ".join(f"{len(chosen)} {name}" for name, (chosen, _, _) in galleries.items()))

