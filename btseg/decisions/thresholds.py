"""Metrics over many thresholds at once: the precision-recall curve and the decision threshold.

The decision threshold is the grid value with the best mean per-case Dice on the validation
split (`choose_threshold`): train stores it in the model file, evaluate reports it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from btseg.scoring.metrics import scores


def counts_at_thresholds(probabilities: np.ndarray, truth: np.ndarray, thresholds: np.ndarray,
                         chunk: int = 256) -> np.ndarray:
    """tp, fp, fn per image and threshold, int64 (N, T, 3), for the predictions `probabilities > t`.

    probabilities: float (N, ...); truth: boolean or 0/1, same shape; thresholds: increasing (T,).
    Equal to confusion_counts(probabilities > t, truth) for each t, in one pass over the pixels:
    each pixel is binned by how many thresholds lie below its probability.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if np.any(np.diff(thresholds) <= 0):
        raise ValueError(f"thresholds must increase, got {thresholds.tolist()}")
    if probabilities.shape != truth.shape:
        raise ValueError(f"probabilities shape {probabilities.shape} differs from truth shape {truth.shape}")
    n, bins = len(probabilities), len(thresholds) + 1
    out = np.empty((n, len(thresholds), 3), np.int64)
    for start in range(0, n, chunk):
        p = np.asarray(probabilities[start:start + chunk], dtype=np.float64).reshape(min(chunk, n - start), -1)
        t = np.asarray(truth[start:start + chunk]).reshape(len(p), -1).astype(bool)
        below = np.searchsorted(thresholds, p, side="left")  # thresholds t < p: predicted at those
        flat = below + bins * np.arange(len(p))[:, None]
        positive = np.bincount(flat[t], minlength=len(p) * bins).reshape(len(p), bins)
        negative = np.bincount(flat[~t], minlength=len(p) * bins).reshape(len(p), bins)
        # predicted at threshold j <=> more than j thresholds lie below p
        tp = positive[:, ::-1].cumsum(axis=1)[:, ::-1][:, 1:]
        fp = negative[:, ::-1].cumsum(axis=1)[:, ::-1][:, 1:]
        out[start:start + len(p)] = np.stack([tp, fp, positive.sum(axis=1, keepdims=True) - tp], axis=2)
    return out


def threshold_sweep(probabilities: np.ndarray, truth: np.ndarray, index: pd.DataFrame,
                    thresholds: list[float]) -> pd.DataFrame:
    """Mean per-case Dice (averaged over targets) at each threshold: columns threshold, case_dice.

    probabilities: float (N, K, H, W); truth: (N, K, H, W); index: case_id per row.
    """
    per_target = []
    for k in range(truth.shape[1]):
        counts = counts_at_thresholds(probabilities[:, k], truth[:, k], np.asarray(thresholds))
        frame = pd.DataFrame(counts.reshape(len(counts), -1))
        cases = frame.groupby(index.case_id.to_numpy(), sort=True).sum().to_numpy().reshape(-1, len(thresholds), 3)
        per_target.append(scores(cases.reshape(-1, 3))["dice"].reshape(len(cases), len(thresholds)).mean(axis=0))
    return pd.DataFrame({"threshold": thresholds, "case_dice": np.mean(per_target, axis=0)})


def precision_recall_curve(probabilities: np.ndarray, truth: np.ndarray, thresholds: np.ndarray) -> pd.DataFrame:
    """Pooled (all pixels) precision, recall and Dice at each threshold: columns threshold, precision, recall, dice."""
    pooled = counts_at_thresholds(probabilities, truth, thresholds).sum(axis=0)
    result = scores(pooled)
    return pd.DataFrame({"threshold": thresholds, "precision": result["precision"], "recall": result["recall"],
                         "dice": result["dice"]})


def choose_threshold(probabilities: np.ndarray, truth: np.ndarray, index: pd.DataFrame,
                     grid: list[float], smooth: bool = False) -> tuple[float, pd.DataFrame]:
    """The grid threshold with the best mean per-case Dice (see `pick_threshold`), and the whole sweep.

    Train stores it in the model file and evaluate reports it: both call this on the val split.
    """
    sweep = threshold_sweep(probabilities, truth, index, list(grid))
    return pick_threshold(sweep, smooth), sweep


def pick_threshold(sweep: pd.DataFrame, smooth: bool = False) -> float:
    """The threshold of `sweep` (columns threshold, case_dice) with the best case Dice; ties: the lowest.

    With `smooth` (evaluate.threshold_smoothing) each point is first averaged with its grid
    neighbours (an edge point with its one neighbour; column `smoothed` added to `sweep`): on a small
    val split a single threshold can win by one patient's luck, often at the grid's edge, and then
    lose whole patients on the test split; the middle of a broad plateau does not.
    """
    score = sweep.case_dice
    if smooth and len(sweep) > 1:
        values = sweep.case_dice.to_numpy()
        sums = np.convolve(values, np.ones(3), mode="same")
        counts = np.convolve(np.ones(len(values)), np.ones(3), mode="same")
        sweep["smoothed"] = sums / counts
        score = sweep.smoothed
    return float(sweep.threshold[score.idxmax()])


def case_dice_at(sweep: pd.DataFrame, threshold: float) -> float | None:
    """The mean per-case Dice `sweep` gives `threshold` itself (None when it is not on the sweep's grid:
    a model file decided under another grid): with smoothing the chosen threshold need not be the
    sweep's best point, and its own score is what the decision delivers on val."""
    at = sweep.case_dice[np.isclose(sweep.threshold, threshold)]
    return None if at.empty else float(at.iloc[0])
