"""Post-processing of predicted masks, chosen on the validation split as nnU-Net does.

Connected components are found in 3D per case: a case's slices stacked in slice order (a
patient's volume; a 2D dataset's image is a one-slice volume), 6-connected (faces, not edges or
corners). Rules:
- `none`: the masks as thresholded;
- `keep_largest`: only the largest component of each case and target;
- `remove_small:N`: components of fewer than N voxels removed.
`choose_postprocess` keeps a rule only where it raises the mean per-case validation Dice above
`none`'s, and among rules that score alike (within TIE, far below what a validation split of a few
dozen patients can tell apart) takes the mildest: on LGG, keep_largest and remove_small:200 tied on
validation, and keep_largest then deleted a test patient's whole tumor in favour of a larger false
alarm. The train stage stores the choice in the model file, so bts-predict applies it too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from btseg.evaluation.metrics import confusion_counts, per_case_table, per_slice_table

NONE = "none"
TIE = 0.001  # mean per-case Dice


def candidate_rules(min_sizes: list[int]) -> list[str]:
    """The rules tried, mildest first: none, removing ever larger specks, keeping only the largest."""
    return [NONE, *(f"remove_small:{n}" for n in sorted(min_sizes)), "keep_largest"]


def apply_rule(masks: np.ndarray, index: pd.DataFrame, rule: str) -> np.ndarray:
    """`masks` (N, K, H, W) boolean or 0/1 after `rule`, case by case (rows grouped by index.case_id,
    stacked by index.slice_index); returns a new boolean array, the input untouched."""
    masks = np.asarray(masks).astype(bool)
    if rule == NONE:
        return masks
    kind, _, size = rule.partition(":")
    if kind not in ("keep_largest", "remove_small") or (kind == "remove_small") != size.isdigit():
        raise ValueError(f"unknown post-processing rule {rule!r}; expected none, keep_largest or remove_small:N")
    out = masks.copy()
    cases = index.reset_index(drop=True)
    for _, rows in cases.groupby("case_id", sort=False):
        order = rows.sort_values("slice_index", kind="stable").index.to_numpy()
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
