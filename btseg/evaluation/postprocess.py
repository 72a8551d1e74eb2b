"""Post-processing of predicted masks, chosen on the validation split as nnU-Net does.

Connected components are found in 3D per case: a case's slices stacked in slice order (a
patient's volume; a 2D dataset's image is a one-slice volume), 6-connected (faces, not edges or
corners). Rules:
- `none`: the masks as thresholded;
- `keep_largest`: only the largest component of each case and target;
- `remove_small:N`: components of fewer than N voxels removed.
`choose_postprocess` keeps a rule only where it raises the mean per-case validation Dice above
`none`'s; the train stage stores the choice in the model file, so bts-predict applies it too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from btseg.evaluation.metrics import confusion_counts, per_case_table, per_slice_table

NONE = "none"


def candidate_rules(min_sizes: list[int]) -> list[str]:
    return [NONE, "keep_largest", *(f"remove_small:{n}" for n in min_sizes)]


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
    """The rule with the best mean per-case Dice on these (validation) masks, `none` unless another
    does strictly better; and the table of every candidate's Dice (columns rule, case_dice)."""
    scores = pd.DataFrame({"rule": candidate_rules(min_sizes)})
    scores["case_dice"] = [mean_case_dice(apply_rule(masks, index, rule), truth, index) for rule in scores.rule]
    best = scores.loc[scores.case_dice.idxmax()]
    chosen = best.rule if best.case_dice > scores.case_dice.iloc[0] + 1e-12 else NONE
    return str(chosen), scores
