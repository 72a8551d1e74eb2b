"""Overlap metrics for binary segmentation, per slice, per case and pooled.

Empty-mask convention (EMPTY_MASK_CONVENTION): when ground truth and prediction are both empty
there is nothing to find and nothing was claimed, so Dice, IoU, precision, recall and specificity
are all 1. Otherwise a metric whose denominator is 0 is 0 (e.g. precision when nothing was
predicted but tumor exists; recall when tumor was predicted where there is none). HD95 has its own
rule (HD95_CONVENTION, below: both empty 0, one empty the image diagonal). The same rules apply
per slice, per case and pooled; `dice_conventions` restates the headline under other tools' rules.
All functions work on counts so that a case (patient) is scored on its slices stacked back
into a volume: its counts are the sums of its slices' counts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from btseg.scoring.statistics import bootstrap_ci

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


def summary(per_slice: pd.DataFrame, per_case: pd.DataFrame, size_buckets: dict[str, float] | None = None) -> dict:
    """Mean per-case and per-slice metrics, and metrics of all test pixels pooled together.

    With the columns of `per_slice_metrics` / `per_case_metrics` present it adds specificity, hd95_px
    and the size difference (px and fraction; the fraction averaged over rows with tumor), the
    per-case Dice under other tools' conventions, and (given `size_buckets`) the bucket summary.
    """
    counts = per_slice[["tp", "fp", "fn"]].to_numpy().sum(axis=0)
    pooled = scores(counts)
    low, high = bootstrap_ci(per_case.dice.to_numpy())
    result = {
        # the headline with its 95% bootstrap interval over cases (patients resampled)
        "per_case": {**{name: float(per_case[name].mean()) for name in METRICS},
                     "dice_ci95_low": low, "dice_ci95_high": high},
        "per_slice": {name: float(per_slice[name].mean()) for name in METRICS},
        "pooled": {name: float(pooled[name][0]) for name in METRICS},
        "cases": int(len(per_case)),
        "slices": int(len(per_slice)),
    }
    if "hd95_px" not in per_slice or "hd95_px" not in per_case:
        return result
    for group, table, size in (("per_case", per_case, "volume"), ("per_slice", per_slice, "area")):
        for name in ("specificity", "hd95_px", f"{size}_difference_px", f"{size}_difference_fraction"):
            result[group][name] = _mean(table[name].to_numpy())
    truth_pixels, predicted_pixels = counts[0] + counts[2], counts[0] + counts[1]
    result["pooled"].update(
        specificity=float(specificity(counts, per_slice.pixels.sum())[0]),
        volume_difference_px=int(predicted_pixels - truth_pixels),
        volume_difference_fraction=float((predicted_pixels - truth_pixels) / truth_pixels) if truth_pixels else None)
    result["dice_conventions"] = dice_conventions(per_case)
    result["brats_legacy_hd95"] = brats_legacy_hd95(per_case)
    if size_buckets is not None:
        result["size_buckets"] = bucket_summary(per_slice, size_buckets)
    return result


def evaluate_targets(predicted: np.ndarray, truth: np.ndarray, index: pd.DataFrame, target_names: list[str],
                     size_buckets: dict[str, float] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Score every target channel of predicted/truth (N, K, H, W, boolean or 0/1).

    Returns per-slice and per-case tables (`per_slice_metrics` / `per_case_metrics` columns, plus
    `target` and, given `size_buckets`, the slice's `size_bucket`) and the metrics dict: the
    per_case / per_slice / pooled groups and `dice_conventions` averaged over targets at the top
    (with one target, its own values, including size_buckets), plus `targets: {name: summary}`
    when there are several.
    """
    slices, cases, summaries = [], [], {}
    for k, name in enumerate(target_names):
        per_slice = per_slice_metrics(predicted[:, k], truth[:, k], index)
        per_case = per_case_metrics(predicted[:, k], truth[:, k], per_slice)
        summaries[name] = summary(per_slice, per_case, size_buckets)
        if size_buckets is not None:
            per_slice["size_bucket"] = size_bucket(per_slice, size_buckets)
        slices.append(per_slice.assign(target=name))
        cases.append(per_case.assign(target=name))
    first = summaries[target_names[0]]
    if len(target_names) == 1:
        metrics = dict(first)
    else:
        metrics = {group: {key: _mean([np.nan if s[group][key] is None else s[group][key] for s in summaries.values()])
                           for key in first[group]}
                   for group in ("per_case", "per_slice", "pooled", "dice_conventions")}
        # the interval of the mean over targets, from each case's Dice averaged over its targets
        mean_dice = pd.concat([c.set_index("case_id").dice for c in cases], axis=1).mean(axis=1).to_numpy()
        metrics["per_case"]["dice_ci95_low"], metrics["per_case"]["dice_ci95_high"] = bootstrap_ci(mean_dice)
        metrics.update(cases=first["cases"], slices=first["slices"],
                       brats_legacy_hd95=_mean([s["brats_legacy_hd95"] for s in summaries.values()]), targets=summaries)
    return pd.concat(slices, ignore_index=True), pd.concat(cases, ignore_index=True), metrics


HEADLINE = {"per_case": ("dice", "dice_ci95_low", "dice_ci95_high", "iou", "precision", "recall", "hd95_px"),
            "per_slice": ("dice",), "pooled": ("dice",)}


def headline(metrics: dict) -> dict:
    """The few numbers people compare across experiments (the metrics file DVC shows): per-case
    Dice with its interval, IoU, precision, recall and HD95; per-slice and pooled Dice; the
    threshold and the number of cases. Everything else stays in the full report."""
    slim = {group: {name: metrics[group][name] for name in names if name in metrics[group]}
            for group, names in HEADLINE.items()}
    return {**slim, "threshold": metrics["threshold"], "cases": metrics["cases"]}


# --- beyond overlap: specificity, surface distance, size error, conventions, thresholds ------------
#
# HD95 convention (HD95_CONVENTION): surfaces are the mask pixels with a 4-connected (6 in 3D)
# neighbour outside the mask, pixels on the array's edge included; HD95 is the larger of the two
# directed 95th percentiles (prediction surface -> nearest truth surface, and the reverse), as
# MONAI's compute_hausdorff_distance(percentile=95) and DeepMind's surface-distance compute it
# (medpy pools both directions before taking the percentile, which can give a smaller number).
# Both masks empty: 0. Exactly one empty: the diagonal of the array (slice or stacked volume),
# the largest distance two pixels of it can have, so a miss always scores worse than any hit.

HD95_CONVENTION = "both empty: 0; one empty: image diagonal"
BRATS_LEGACY_HD95 = 373.12866  # BraTS 2017-2020 ranking: the diagonal of 240 x 240 x 155 voxels
AGGREGATION = "per_case: slices stacked as a volume (headline); per_slice: slice mean; pooled: all pixels"


def specificity(counts: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """tn / (tn + fp), float64 (N,), from counts (N, 3) = tp, fp, fn and the pixels per image (N,).

    Same convention as `scores`: both masks empty -> 1; otherwise 0 when there is no true negative
    to find (tn + fp = 0, a mask that is tumor everywhere).
    """
    counts = np.asarray(counts, dtype=np.float64).reshape(-1, 3)
    tp, fp, fn = counts.T
    tn = np.asarray(pixels, dtype=np.float64) - tp - fp - fn
    out = np.divide(tn, tn + fp, out=np.zeros_like(tn), where=(tn + fp) > 0)
    out[(tp + fp + fn) == 0] = 1.0
    return out


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boolean surface of a boolean mask: pixels with a face-connected neighbour outside
    (array edge counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask)  # erosion's border_value=0: the edge is outside


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...] | None = None) -> float:
    """95% Hausdorff distance between two binary masks of the same shape, 2D (H, W) or 3D (Z, H, W).

    In the unit of `spacing` (one value per axis; None: 1 per axis, i.e. pixels). See HD95_CONVENTION
    for the definition and for empty masks (both empty: 0; one empty: the array's diagonal).
    """
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from truth shape {truth.shape}")
    spacing = np.ones(prediction.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if len(spacing) != prediction.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {prediction.ndim}D mask")
    prediction, truth = prediction.astype(bool), truth.astype(bool)
    has_prediction, has_truth = prediction.any(), truth.any()
    if not has_prediction and not has_truth:
        return 0.0
    if not has_prediction or not has_truth:
        return float(np.sqrt(np.sum((np.asarray(prediction.shape) * spacing) ** 2)))
    # only the union's bounding box (plus one pixel, so erosion sees the same outside) matters
    union = np.argwhere(prediction | truth)
    box = tuple(slice(max(low - 1, 0), high + 2) for low, high in zip(union.min(axis=0), union.max(axis=0)))
    prediction_surface, truth_surface = _surface(prediction[box]), _surface(truth[box])
    to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=spacing)[prediction_surface]
    to_prediction = ndimage.distance_transform_edt(~prediction_surface, sampling=spacing)[truth_surface]
    return float(max(np.percentile(to_truth, 95), np.percentile(to_prediction, 95)))


def _surface_and_size(table: pd.DataFrame, pixels: np.ndarray, distances: list[float], size: str) -> pd.DataFrame:
    """Add tn, specificity, hd95_px and the `size` difference (predicted - true, px and fraction of true) to a table."""
    counts = table[["tp", "fp", "fn"]].to_numpy()
    table["pixels"] = pixels
    table["tn"] = pixels - counts.sum(axis=1)
    table["specificity"] = specificity(counts, pixels)
    table["hd95_px"] = distances
    truth_pixels, predicted_pixels = counts[:, 0] + counts[:, 2], counts[:, 0] + counts[:, 1]
    table[f"{size}_difference_px"] = predicted_pixels - truth_pixels
    # relative to the truth: undefined (NaN) where there is no tumor
    table[f"{size}_difference_fraction"] = np.divide(predicted_pixels - truth_pixels, truth_pixels,
                                                      out=np.full(len(table), np.nan), where=truth_pixels > 0)
    return table


def per_slice_metrics(predicted: np.ndarray, truth: np.ndarray, index: pd.DataFrame) -> pd.DataFrame:
    """`per_slice_table` plus pixels, tn, specificity, hd95_px, area_difference_px / _fraction.

    predicted, truth: (N, H, W) boolean or 0/1; index: one row per slice with case_id, slice_index.
    HD95 is 2D, in pixels (slices carry no spacing).
    """
    table = per_slice_table(confusion_counts(predicted, truth), index)
    pixels = np.full(len(table), int(np.prod(predicted.shape[1:])), dtype=np.int64)
    distances = [hd95(predicted[i], truth[i]) for i in range(len(table))]
    return _surface_and_size(table, pixels, distances, "area")


def per_case_metrics(predicted: np.ndarray, truth: np.ndarray, per_slice: pd.DataFrame) -> pd.DataFrame:
    """`per_case_table` plus pixels, tn, specificity, hd95_px, volume_difference_px / _fraction.

    Each case's slices are stacked back into a volume in slice_index order (z spacing 1: slices
    carry no spacing, and gaps between kept slices are closed) and HD95 is taken in 3D.
    """
    table = per_case_table(per_slice)
    rows = {case: group.sort_values("slice_index").index.to_numpy()
            for case, group in per_slice.reset_index(drop=True).groupby("case_id", sort=True)}
    pixels = np.array([len(rows[case]) * int(np.prod(predicted.shape[1:])) for case in table.case_id], dtype=np.int64)
    distances = [hd95(predicted[rows[case]], truth[rows[case]]) for case in table.case_id]
    return _surface_and_size(table, pixels, distances, "volume")


def dice_conventions(per_case: pd.DataFrame) -> dict[str, float | None]:
    """Mean per-case Dice under the conventions of other tools, from the counts of per_case (tp, fp, fn).

    ours / brats_legacy: both empty -> 1, one empty -> 0, all cases averaged (they agree on Dice;
    BraTS legacy differs in HD95, see `brats_legacy_hd95`).
    nnunet (nnU-Net v2 evaluate_predictions): Dice NaN when both are empty, skipped by nanmean.
    monai_ignore_empty (MONAI DiceMetric(ignore_empty=True)): NaN whenever the truth is empty.
    A mean over no case at all is None.
    """
    tp, fp, fn = per_case[["tp", "fp", "fn"]].to_numpy(dtype=np.float64).T
    dice = scores(np.stack([tp, fp, fn], axis=1))["dice"]
    with np.errstate(invalid="ignore", divide="ignore"):
        plain = 2 * tp / (2 * tp + fp + fn)
    return {
        "ours": _mean(dice),
        "nnunet": _mean(np.where(tp + fp + fn == 0, np.nan, plain)),
        "brats_legacy": _mean(dice),
        "monai_ignore_empty": _mean(np.where(tp + fn == 0, np.nan, plain)),
    }


def brats_legacy_hd95(per_case: pd.DataFrame) -> float | None:
    """Mean per-case HD95 with the BraTS legacy rule: 373.13 where exactly one of truth/prediction is empty."""
    truth_any = (per_case.tp + per_case.fn) > 0
    predicted_any = (per_case.tp + per_case.fp) > 0
    return _mean(np.where(truth_any != predicted_any, BRATS_LEGACY_HD95, per_case.hd95_px.to_numpy(dtype=np.float64)))


def size_bucket(per_slice: pd.DataFrame, bounds: dict[str, float]) -> pd.Series:
    """Bucket name per slice from its true tumor area as a fraction of the slice ('none' without tumor).

    bounds: bucket name -> inclusive upper bound of the fraction (any order; the largest 1.0).
    """
    bounds = _by_bound(bounds)
    fraction = per_slice.truth_pixels.to_numpy() / per_slice.pixels.to_numpy()
    names = np.array(["none", *bounds], dtype=object)
    # searchsorted 'left': a fraction equal to a bound belongs to that bucket; 0 -> none
    position = np.where(fraction > 0, np.searchsorted(np.array(list(bounds.values())), fraction, side="left") + 1, 0)
    return pd.Series(names[position], index=per_slice.index, name="size_bucket")


def bucket_summary(per_slice: pd.DataFrame, bounds: dict[str, float]) -> dict:
    """Per size bucket (see `size_bucket`): slices, mean Dice and miss rate (tumor there, nothing predicted);
    for tumor-free slices ('none'): slices and false-alarm rate (something predicted)."""
    buckets = size_bucket(per_slice, bounds)
    free = per_slice[buckets == "none"]
    out = {"none": {"slices": int(len(free)), "false_alarm_rate": _mean((free.predicted_pixels > 0).to_numpy(float))}}
    for name in _by_bound(bounds):
        rows = per_slice[buckets == name]
        out[name] = {"slices": int(len(rows)), "dice": _mean(rows.dice.to_numpy()),
                     "miss_rate": _mean((rows.predicted_pixels == 0).to_numpy(float))}
    return out


def _by_bound(bounds: dict[str, float]) -> dict[str, float]:
    """Buckets smallest first, whatever order params.yaml was written in (a sorted dump reorders keys)."""
    return dict(sorted(bounds.items(), key=lambda item: item[1]))


def _mean(values: np.ndarray) -> float | None:
    """Mean ignoring NaN; None (JSON null) when nothing is left."""
    values = np.array([np.nan if v is None else v for v in np.ravel(np.asarray(values, dtype=object))],
                      dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None

