"""Bootstrap intervals and paired comparisons, against hand-computed cases and scipy's bootstrap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from btseg.scoring.statistics import bootstrap_ci, paired_difference


def test_constant_values_give_a_zero_width_interval():
    assert bootstrap_ci(np.full(17, 0.8)) == pytest.approx((0.8, 0.8))
    assert bootstrap_ci(np.array([0.3])) == pytest.approx((0.3, 0.3))
    assert all(np.isnan(bootstrap_ci(np.array([]))))


def test_interval_agrees_with_scipy_percentile_bootstrap():
    values = np.random.default_rng(5).beta(5, 2, size=17)  # 17 patients' Dice
    ours = bootstrap_ci(values)
    theirs = stats.bootstrap((values,), np.mean, method="percentile", n_resamples=20_000,
                             random_state=1).confidence_interval
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.006)
    assert ours[0] < values.mean() < ours[1]


def test_interval_width_matches_the_normal_approximation_for_many_cases():
    values = np.random.default_rng(2).normal(0.7, 0.2, size=400)
    low, high = bootstrap_ci(values)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert (high - low) / 2 == pytest.approx(half, rel=0.05)


def test_paired_difference_counts_and_means():
    base = pd.Series({"a": 0.5, "b": 0.6, "c": 0.7, "d": 0.8})
    new = pd.Series({"d": 0.8, "c": 0.9, "b": 0.5, "a": 0.7})  # another order: matched by case
    result = paired_difference(base, new)
    assert result["mean_difference"] == pytest.approx((0.2 - 0.1 + 0.2 + 0) / 4)
    assert (result["better"], result["worse"], result["same"], result["cases"]) == (2, 1, 1, 4)
    assert result["ci_low"] <= result["mean_difference"] <= result["ci_high"]


def test_paired_difference_refuses_different_patients():
    with pytest.raises(ValueError, match="different cases"):
        paired_difference(pd.Series({"a": 0.5}), pd.Series({"b": 0.5}))
