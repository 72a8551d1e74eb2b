"""benchmarks/fit_gap.py's scores: per-case means and the cases predicted empty, against a hand count."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.fit_gap import split_scores


def test_split_scores_average_cases_as_volumes_and_count_the_missed_ones():
    index = pd.DataFrame({"case_id": ["a", "a", "b", "c"], "slice_index": [0, 1, 0, 0]})
    truth = np.zeros((4, 1, 4, 4), bool)
    predicted = np.zeros_like(truth)
    truth[0, 0, 0, :2] = truth[1, 0, 0, :2] = True  # case a: 4 voxels over two slices
    predicted[0, 0, 0, :2] = True  # found on the first slice (tp 2) ...
    predicted[1, 0, 2:, :3] = True  # ... 6 false voxels on the second, its 2 missed: Dice 4 / 12
    truth[2, 0, 1, 1:4] = True  # case b: 3 voxels, nothing predicted: Dice 0, counted as empty
    # case c: no tumor, nothing predicted: 1 by convention, not a miss
    s = split_scores(predicted, truth, index)
    assert s["cases"] == 3 and s["empty"] == 1
    assert s["dice"] == pytest.approx((1 / 3 + 0 + 1) / 3)
    assert s["precision"] == pytest.approx((2 / 8 + 0 + 1) / 3)
    assert s["recall"] == pytest.approx((0.5 + 0 + 1) / 3)
