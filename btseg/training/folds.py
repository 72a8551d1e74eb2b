"""Patient-level k-fold cross-validation over the train and val patients (the test split stays fixed).

The train and val patients of a preprocessed dataset are dealt, seeded, into k folds; fold i
validates on its own patients and trains on the others. Slices are copied into memory for the
fold's two sets (the arrays on disk are the preprocess stage's). Slices of patients from the
preprocessed train split are the ones slice selection kept (preprocess.tumor_free_fraction), also
when they validate: fold validation picks the epoch, threshold and post-processing; the numbers to
report are the folds' and their ensemble's on the untouched test split (btseg.evaluation.cross_validation).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from btseg.errors import PipelineError
from btseg.preprocessing.slices import SliceSet


def assign_folds(case_ids: list[str], folds: int, seed: int) -> dict[str, int]:
    """case_id -> fold 0..folds-1: the sorted cases shuffled by `seed`, then dealt in turn
    (sizes differ by one at most)."""
    cases = sorted(set(case_ids))
    if len(cases) < folds:
        raise PipelineError(f"params.yaml: cv.folds: {folds} folds need at least {folds} train and val patients, "
                            f"found {len(cases)}")
    order = np.random.default_rng(seed).permutation(len(cases))
    return {cases[i]: n % folds for n, i in enumerate(order)}


def fold_sets(train: SliceSet, val: SliceSet, folds: int, fold: int, seed: int) -> tuple[SliceSet, SliceSet]:
    """The training and validation sets of `fold`, from the preprocessed train and val splits."""
    if not 0 <= fold < folds:
        raise PipelineError(f"params.yaml: cv.runs: fold {fold} is not in 0..{folds - 1} (cv.folds = {folds})")
    index = pd.concat([train.index, val.index], ignore_index=True)
    assignment = assign_folds(list(index.case_id), folds, seed)
    in_fold = index.case_id.map(assignment).to_numpy() == fold
    images = np.concatenate([train.images, val.images])
    masks = np.concatenate([train.masks, val.masks])

    def subset(rows: np.ndarray, split: str) -> SliceSet:
        part = index.iloc[rows].reset_index(drop=True).assign(row=np.arange(len(rows)))
        meta = {**train.meta, "split": split, "fold": {"fold": fold, "folds": folds, "seed": seed}}
        return SliceSet(images[rows], masks[rows], part, meta)

    return subset(np.flatnonzero(~in_fold), "train"), subset(np.flatnonzero(in_fold), "val")
