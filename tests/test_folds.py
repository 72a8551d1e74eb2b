"""Patient-level folds: every patient validates in exactly one fold, never in two sets of one fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from btseg.errors import PipelineError
from btseg.preprocessing.slices import SliceSet
from btseg.training.folds import assign_folds, fold_sets


def split(cases: list[str], slices: int, offset: int) -> SliceSet:
    n = len(cases) * slices
    images = (np.arange(n, dtype=np.float16) + offset).reshape(n, 1, 1, 1)
    index = pd.DataFrame({"row": range(n), "case_id": np.repeat(cases, slices),
                          "slice_index": np.tile(range(slices), len(cases))})
    return SliceSet(images, np.zeros((n, 1, 1, 1), np.uint8), index, {"split": "x", "dataset": "d"})


def test_folds_partition_the_patients_and_keep_their_slices_together():
    train, val = split([f"t{i}" for i in range(8)], 3, 0), split(["v0", "v1"], 3, 100)
    seen = []
    for fold in range(3):
        fit, check = fold_sets(train, val, 3, fold, seed=7)
        assert not set(fit.index.case_id) & set(check.index.case_id)
        assert set(fit.index.case_id) | set(check.index.case_id) == {f"t{i}" for i in range(8)} | {"v0", "v1"}
        assert (check.index.groupby("case_id").size() == 3).all()  # all of a patient's slices go together
        assert list(check.index.row) == list(range(len(check.index)))
        # the copied images are the rows of the patients named in the index
        for row, case in zip(check.images[:, 0, 0, 0], check.index.case_id):
            assert (row >= 100) == case.startswith("v")
        seen += list(check.index.case_id.unique())
    assert sorted(seen) == sorted({f"t{i}" for i in range(8)} | {"v0", "v1"})  # each patient validates once
    assert sorted(len(set(fold_sets(train, val, 3, f, 7)[1].index.case_id)) for f in range(3)) == [3, 3, 4]


def test_assignment_is_seeded_and_checked():
    cases = [f"c{i}" for i in range(10)]
    assert assign_folds(cases, 5, 1) == assign_folds(list(reversed(cases)), 5, 1)
    assert assign_folds(cases, 5, 1) != assign_folds(cases, 5, 2)
    with pytest.raises(PipelineError, match="cv.folds: 5 folds need at least 5"):
        assign_folds(cases[:3], 5, 1)
    train, val = split(["a", "b"], 1, 0), split(["c"], 1, 0)
    with pytest.raises(PipelineError, match="cv.runs: fold 3 is not in 0..2"):
        fold_sets(train, val, 3, 3, 0)
