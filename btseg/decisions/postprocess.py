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
`sizes_within_tumors` leaves out of the remove_small grid the sizes above the smallest tumor of the
training patients: on LGG, remove_small:1000 won on 17 validation patients and then deleted a found
538-voxel tumor of a test patient, while 4 of 76 training patients have tumors below 1,000 voxels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from btseg.scoring.metrics import confusion_counts, per_case_table, per_slice_table

NONE = "none"
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
