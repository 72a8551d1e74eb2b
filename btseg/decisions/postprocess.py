"""Post-processing of predicted masks, chosen on the validation split as nnU-Net does.

Connected components are found in 3D per case: a case's slices stacked in slice order (a
patient's volume; a 2D dataset's image is a one-slice volume), 6-connected (faces, not edges or
corners). Rules:
- `none`: the masks as thresholded;
- `keep_largest`: only the largest component of each case and target;
- `remove_small:N`: components of fewer than N voxels removed;
- `peak:P`: only the components holding a voxel of probability above P (hysteresis thresholding:
  the decision threshold, below P, grows a confident core into its less certain rim; components
  that are uncertain throughout go). It needs the probabilities: `segment` makes every rule's masks;
- `expected_dice`, alone or before another rule (`expected_dice+keep_largest`): no common threshold;
  each case and target is thresholded where the Dice its own probabilities expect is highest
  (`expected_dice_threshold`), for `evaluate.per_case_threshold`.
`choose_postprocess` keeps a rule only where it raises the mean per-case validation Dice above
`none`'s, and among rules that score alike (within TIE, far below what a validation split of a few
dozen patients can tell apart) takes the mildest: on LGG, keep_largest and remove_small:200 tied on
validation, and keep_largest then deleted a test patient's whole tumor in favour of a larger false
alarm. `choose_peak` then tries peak rules together with lower thresholds and takes one only where
it beats that choice by more than TIE. The train stage stores the threshold and rule in the model
file, so bts-predict applies them too.
`sizes_within_tumors` leaves out of the remove_small grid the sizes above the smallest tumor of the
training patients: on LGG, remove_small:1000 won on 17 validation patients and then deleted a found
538-voxel tumor of a test patient, while 4 of 76 training patients have tumors below 1,000 voxels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from btseg.scoring.metrics import confusion_counts, per_case_table, per_slice_table, scores

NONE = "none"
EXPECTED_DICE = "expected_dice"
EXPECTED_DICE_GRID = np.round(np.arange(1, 20) * 0.05, 2)  # 0.05 .. 0.95: each case's candidate thresholds
TIE = 0.001  # mean per-case Dice
CHUNK = 512  # slices counted at a time


def candidate_rules(min_sizes: list[int]) -> list[str]:
    """The rules tried, mildest first: none, removing ever larger specks, keeping only the largest."""
    return [NONE, *(f"remove_small:{n}" for n in sorted(min_sizes)), "keep_largest"]


def sizes_within_tumors(min_sizes: list[int], masks: np.ndarray, index: pd.DataFrame) -> list[int]:
    """The remove_small sizes (sorted) no larger than the smallest tumor of these (training) cases: a
    larger size would delete whole, when found in one piece, a tumor as small as one training has seen.
    A tumor's size is its case's voxels of one target (all its slices); cases without tumor are
    ignored, and with no tumor at all every size is kept."""
    per_slice = np.zeros((len(masks), masks.shape[1]), np.int64)
    for start in range(0, len(masks), CHUNK):  # memory-mapped masks: a piece at a time
        per_slice[start:start + CHUNK] = np.count_nonzero(np.asarray(masks[start:start + CHUNK]), axis=(2, 3))
    per_case = pd.DataFrame(per_slice).groupby(index.case_id.to_numpy()).sum().to_numpy()
    tumors = per_case[per_case > 0]
    sizes = sorted(int(n) for n in min_sizes)
    return sizes if tumors.size == 0 else [n for n in sizes if n <= int(tumors.min())]


def case_volumes(index: pd.DataFrame) -> list[np.ndarray]:
    """Each case's row positions in slice order (rows grouped by index.case_id, stacked by
    index.slice_index): indexing an (N, ...) array with one gives that case's volume."""
    cases = index.reset_index(drop=True)
    return [rows.sort_values("slice_index", kind="stable").index.to_numpy()
            for _, rows in cases.groupby("case_id", sort=False)]


def segment(probabilities: np.ndarray, index: pd.DataFrame, threshold: float, rule: str) -> np.ndarray:
    """The predicted masks, boolean (N, K, H, W): `probabilities > threshold`, then `rule`. What the
    evaluate stage scores and bts-predict writes. A rule `expected_dice[+RULE]` thresholds each case
    at its own threshold instead (`per_case_masks`), then applies RULE."""
    if thresholds_each_case(rule):
        rest = rule.partition("+")[2]
        if rest.partition(":")[0] == "peak":
            raise ValueError(f"post-processing rule {rule!r}: a peak rule needs a common threshold")
        return apply_rule(per_case_masks(probabilities, index), index, rest or NONE)
    if rule.partition(":")[0] == "peak":  # a peak at or below the threshold keeps every component: the threshold alone
        return keep_peaked(probabilities, index, threshold, parse_peak(rule))
    return apply_rule(np.asarray(probabilities) > threshold, index, rule)


def parse_peak(rule: str) -> float:
    """P of the rule `peak:P`, a probability between 0 and 1."""
    try:
        peak = float(rule.partition(":")[2])
    except ValueError:
        peak = -1.0
    if not 0 <= peak < 1:
        raise ValueError(f"post-processing rule {rule!r}: expected peak:P with P a probability in [0, 1)")
    return peak


def expected_dice_threshold(volume: np.ndarray, grid: np.ndarray = EXPECTED_DICE_GRID) -> float:
    """The threshold of `grid` at which the Dice that the probabilities `volume` (one case and
    target) expect of themselves is highest: 2 sum(p > t) / (count(p > t) + sum(p)), each pixel
    tumor with its own probability (the numerator the expected overlap, the denominator's sum the
    expected tumor size). Ties: the lowest.

    Label-free, so nothing is fitted to a val split: where a model is unsure of a whole tumor on an
    unseen patient (probabilities mostly 0.2-0.5), its optimum falls (at about half the Dice it
    expects), and the tumor is found that a common threshold chosen on other patients misses.
    """
    values = np.sort(np.asarray(volume).ravel())  # compared in their own dtype, as `volume > t` compares
    total = values.sum(dtype=np.float64)
    if total <= 0:
        return float(grid[0])
    suffix = np.concatenate([np.cumsum(values[::-1], dtype=np.float64)[::-1], [0.0]])  # sum of values[i:]
    first = np.searchsorted(values, np.asarray(grid).astype(values.dtype), side="right")  # first value > t
    expected = 2 * suffix[first] / (len(values) - first + total)
    return float(grid[int(np.argmax(expected))])


def thresholds_each_case(rule: str) -> bool:
    """Whether `rule` thresholds each case at its own threshold (`expected_dice[+RULE]`)."""
    return rule.partition("+")[0] == EXPECTED_DICE


def _case_thresholds(probabilities: np.ndarray, index: pd.DataFrame):
    """(row positions, target k, its `expected_dice_threshold`) per case (`case_volumes`) and target."""
    for order in case_volumes(index):
        for k in range(probabilities.shape[1]):
            yield order, k, expected_dice_threshold(probabilities[order, k])


def per_case_masks(probabilities: np.ndarray, index: pd.DataFrame) -> np.ndarray:
    """Boolean (N, K, H, W): each case (`case_volumes`) and target above its `expected_dice_threshold`."""
    probabilities = np.asarray(probabilities)
    out = np.zeros(probabilities.shape, bool)
    for order, k, threshold in _case_thresholds(probabilities, index):
        out[order, k] = probabilities[order, k] > threshold
    return out


def case_thresholds(probabilities: np.ndarray, index: pd.DataFrame) -> pd.DataFrame:
    """Each case's `expected_dice_threshold` per target k: columns case_id, target, threshold."""
    probabilities = np.asarray(probabilities)
    cases = index.reset_index(drop=True)
    return pd.DataFrame([{"case_id": cases.case_id[order[0]], "target": k, "threshold": threshold}
                         for order, k, threshold in _case_thresholds(probabilities, index)])


def components(volume: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The 3D components of `volume > threshold` (labels, 0 = background) and each one's highest
    probability (float64 (count + 1,), 0 for the background)."""
    labels, count = ndimage.label(volume > threshold)
    tops = np.zeros(count + 1)
    if count:
        tops[1:] = ndimage.maximum(volume, labels, np.arange(1, count + 1))
    return labels, tops


def keep_peaked(probabilities: np.ndarray, index: pd.DataFrame, threshold: float, peak: float) -> np.ndarray:
    """The components of `probabilities > threshold` (3D per case and target) that hold a voxel above
    `peak`, boolean (N, K, H, W)."""
    probabilities = np.asarray(probabilities)
    out = np.zeros(probabilities.shape, bool)
    for order in case_volumes(index):
        for k in range(probabilities.shape[1]):
            labels, tops = components(probabilities[order, k], threshold)
            out[order, k] = (tops > peak)[labels] & (labels > 0)
    return out


def peak_case_dice(probabilities: np.ndarray, truth: np.ndarray, index: pd.DataFrame, threshold: float,
                   peaks: list[float]) -> np.ndarray:
    """Mean per-case Dice (averaged over targets) of `keep_peaked` at each of `peaks`, float64 (P,):
    each case labelled once, its counts taken per peak (no full-size masks: BraTS' val split is large)."""
    probabilities, peaks = np.asarray(probabilities), np.asarray(peaks, dtype=np.float64)
    dice = []
    for order in case_volumes(index):
        for k in range(probabilities.shape[1]):
            labels, tops = components(probabilities[order, k], threshold)
            tumor = np.asarray(truth[order, k]).astype(bool)
            inside = np.bincount(labels[tumor], minlength=len(tops))[1:]  # tumor voxels per component
            size = np.bincount(labels.ravel(), minlength=len(tops))[1:]
            kept = tops[1:][None, :] > peaks[:, None]  # (P, components)
            tp = (kept * inside).sum(axis=1)
            fp = (kept * (size - inside)).sum(axis=1)
            fn = int(tumor.sum()) - tp
            dice.append(scores(np.stack([tp, fp, fn], axis=1))["dice"])
    # rows case by case, targets within: the mean over cases per target, then over targets
    return np.asarray(dice).reshape(-1, probabilities.shape[1], len(peaks)).mean(axis=0).mean(axis=0)


def apply_rule(masks: np.ndarray, index: pd.DataFrame, rule: str) -> np.ndarray:
    """`masks` (N, K, H, W) boolean or 0/1 after `rule` (one that needs no probabilities), case by
    case (`case_volumes`); returns a new boolean array, the input untouched."""
    masks = np.asarray(masks).astype(bool)
    if rule == NONE:
        return masks
    kind, _, size = rule.partition(":")
    if kind == "peak":
        raise ValueError(f"post-processing rule {rule!r} needs the probabilities: use segment()")
    if kind not in ("keep_largest", "remove_small") or (kind == "remove_small") != size.isdigit():
        raise ValueError(f"unknown post-processing rule {rule!r}; expected none, keep_largest, remove_small:N "
                         "or peak:P")
    out = masks.copy()
    for order in case_volumes(index):
        for k in range(masks.shape[1]):
            volume = masks[order, k]
            labels, count = ndimage.label(volume)
            if count == 0:
                continue
            sizes = np.bincount(labels.ravel())[1:]
            keep = np.zeros(count + 1, bool)
            if kind == "keep_largest":
                keep[1 + int(np.argmax(sizes))] = True
            else:
                keep[1:] = sizes >= int(size)
            out[order, k] = keep[labels]
    return out


def mean_case_dice(masks: np.ndarray, truth: np.ndarray, index: pd.DataFrame) -> float:
    """Mean per-case Dice (cases as volumes), averaged over targets."""
    return float(np.mean([per_case_table(per_slice_table(confusion_counts(masks[:, k], truth[:, k]), index)).dice.mean()
                          for k in range(truth.shape[1])]))


def choose_postprocess(masks: np.ndarray, truth: np.ndarray, index: pd.DataFrame,
                       min_sizes: list[int]) -> tuple[str, pd.DataFrame]:
    """The rule for these (validation) masks: `none` unless another scores a higher mean per-case Dice;
    then the mildest rule within TIE of the best. Also the table of every candidate's Dice (columns
    rule, case_dice), mildest first."""
    scores = pd.DataFrame({"rule": candidate_rules(min_sizes)})
    scores["case_dice"] = [mean_case_dice(apply_rule(masks, index, rule), truth, index) for rule in scores.rule]
    best = scores.case_dice.max()
    if best <= scores.case_dice.iloc[0] + 1e-12:
        return NONE, scores
    return str(scores.rule[scores.case_dice >= best - TIE].iloc[0]), scores


def choose_peak(probabilities: np.ndarray, truth: np.ndarray, index: pd.DataFrame, threshold: float, rule: str,
                rules: pd.DataFrame, lows: list[float], peaks: list[float]) -> tuple[float, str, pd.DataFrame]:
    """The threshold and rule for these (validation) probabilities, given `choose_postprocess`'s choice
    `rule` at `threshold` and its table `rules`: a peak rule (a peak of `peaks` above a threshold of
    `lows`) replaces them only where it scores more than TIE above their mean per-case Dice; among
    peak rules that score alike, the mildest: the highest threshold, then the lowest peak. Also the
    table of every candidate (columns threshold, rule, case_dice), `rules` first, then the peak
    rules mildest first.

    Hysteresis on LGG: a lower threshold reaches the rims a model is unsure of on unseen patients,
    and the peak keeps away the uncertain false alarms a lower threshold alone brings in.
    """
    table = rules.assign(threshold=threshold)[["threshold", "rule", "case_dice"]]
    rows = []
    for low in sorted(lows, reverse=True):
        above = sorted(h for h in peaks if h > low)
        if above:
            rows += [{"threshold": low, "rule": f"peak:{h:g}", "case_dice": d}
                     for h, d in zip(above, peak_case_dice(probabilities, truth, index, low, above))]
    table = pd.concat([table, pd.DataFrame(rows, columns=table.columns)], ignore_index=True)
    if not rows:
        return threshold, rule, table
    chosen = float(rules.case_dice[rules.rule == rule].iloc[0])
    best = table.case_dice.iloc[len(rules):].idxmax()
    if table.case_dice[best] <= chosen + TIE:
        return threshold, rule, table
    return float(table.threshold[best]), str(table.rule[best]), table
