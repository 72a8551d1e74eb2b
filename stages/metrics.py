"""Overlap metrics for binary segmentation, per slice, per case and pooled.

Empty-mask convention (EMPTY_MASK_CONVENTION): when ground truth and prediction are both empty
there is nothing to find and nothing was claimed, so Dice, IoU, precision and recall are all 1.
Otherwise a metric whose denominator is 0 is 0 (e.g. precision when nothing was predicted but
tumor exists; recall when tumor was predicted where there is none).
All functions work on counts so that a case (patient) is scored on its slices stacked back
into a volume: its counts are the sums of its slices' counts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

METRICS = ("dice", "iou", "precision", "recall")
# short: it is a column of `dvc metrics show` / `dvc exp show`
EMPTY_MASK_CONVENTION = "both empty: 1; else x/0: 0"


def confusion_counts(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """True positives, false positives, false negatives per image.

    prediction, truth: boolean or 0/1 arrays (N, ...) of the same shape.
    Returns int64 (N, 3) with columns tp, fp, fn.
    """
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from truth shape {truth.shape}")
    p = prediction.reshape(len(prediction), -1).astype(bool)
    t = truth.reshape(len(truth), -1).astype(bool)
    tp = np.count_nonzero(p & t, axis=1)
    fp = np.count_nonzero(p & ~t, axis=1)
    fn = np.count_nonzero(~p & t, axis=1)
    return np.stack([tp, fp, fn], axis=1).astype(np.int64)


def scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Dice, IoU, precision, recall (float64 (N,)) from counts (N, 3) = tp, fp, fn; see the module's convention."""
    counts = np.asarray(counts, dtype=np.float64).reshape(-1, 3)
    tp, fp, fn = counts.T
    both_empty = (tp + fp + fn) == 0

    def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
        out = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
        out[both_empty] = 1.0
        return out

    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
    }


def per_slice_table(counts: np.ndarray, index: pd.DataFrame) -> pd.DataFrame:
    """One row per slice: case_id, slice_index, tp, fp, fn, truth/predicted pixels and the four metrics."""
    table = index[["case_id", "slice_index"]].reset_index(drop=True).copy()
    table[["tp", "fp", "fn"]] = counts
    table["truth_pixels"] = table.tp + table.fn
    table["predicted_pixels"] = table.tp + table.fp
    for name, values in scores(counts).items():
        table[name] = values
    return table


def per_case_table(per_slice: pd.DataFrame) -> pd.DataFrame:
    """One row per case: counts summed over its slices (the case as a volume) and the four metrics."""
    table = per_slice.groupby("case_id", sort=True)[["tp", "fp", "fn"]].sum().reset_index()
    table["slices"] = per_slice.groupby("case_id", sort=True).size().to_numpy()
    for name, values in scores(table[["tp", "fp", "fn"]].to_numpy()).items():
        table[name] = values
    return table


def summary(per_slice: pd.DataFrame, per_case: pd.DataFrame) -> dict:
    """Mean per-case and per-slice metrics, and metrics of all test pixels pooled together."""
    pooled = scores(per_slice[["tp", "fp", "fn"]].to_numpy().sum(axis=0))
    return {
        "per_case": {name: float(per_case[name].mean()) for name in METRICS},
        "per_slice": {name: float(per_slice[name].mean()) for name in METRICS},
        "pooled": {name: float(pooled[name][0]) for name in METRICS},
        "cases": int(len(per_case)),
        "slices": int(len(per_slice)),
    }


def evaluate_targets(predicted: np.ndarray, truth: np.ndarray, index: pd.DataFrame,
                     target_names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Score every target channel of predicted/truth (N, K, H, W, boolean or 0/1).

    Returns per-slice and per-case tables with a `target` column, and the metrics dict: the
    per_case / per_slice / pooled means over targets at the top (with one target, its own values),
    plus `targets: {name: summary}` when there are several.
    """
    slices, cases, summaries = [], [], {}
    for k, name in enumerate(target_names):
        per_slice = per_slice_table(confusion_counts(predicted[:, k], truth[:, k]), index)
        per_case = per_case_table(per_slice)
        summaries[name] = summary(per_slice, per_case)
        slices.append(per_slice.assign(target=name))
        cases.append(per_case.assign(target=name))
    first = summaries[target_names[0]]
    metrics = {group: {m: float(np.mean([s[group][m] for s in summaries.values()])) for m in METRICS}
               for group in ("per_case", "per_slice", "pooled")}
    metrics.update(cases=first["cases"], slices=first["slices"])
    if len(target_names) > 1:
        metrics["targets"] = summaries
    return pd.concat(slices, ignore_index=True), pd.concat(cases, ignore_index=True), metrics
