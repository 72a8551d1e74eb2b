"""How sure a mean over patients is: bootstrap confidence intervals, and paired comparisons of two
models on the same test patients.

With 17 test patients, one patient more or less moves a mean Dice by several points; these numbers
say how much of a difference between runs is the patients drawn and how much the model. Patients
(cases) are the resampling unit, never slices: slices of one patient are not independent.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ROUNDS = 10_000  # bootstrap resamples; the interval's ends move by well under 0.005 between seeds
SEED = 0


def bootstrap_ci(values: np.ndarray, level: float = 0.95, rounds: int = ROUNDS,
                 seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one value per case), resampling cases
    with replacement. One value gives a zero-width interval; no values, (nan, nan)."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(rounds, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_difference(base: pd.Series, new: pd.Series, level: float = 0.95) -> dict:
    """`new - base` per case (both indexed by case_id, the same cases): the mean difference with its
    bootstrap interval, and how many cases got better, worse or stayed the same."""
    if set(base.index) != set(new.index):
        only = sorted(set(base.index) ^ set(new.index))
        raise ValueError(f"the two runs scored different cases (e.g. {only[:5]}); a paired comparison needs "
                         "the same test patients (same data and preprocess.split/seed)")
    difference = (new - base.reindex(new.index)).to_numpy(dtype=np.float64)
    low, high = bootstrap_ci(difference, level)
    return {"cases": int(len(difference)), "base_mean": float(base.mean()), "new_mean": float(new.mean()),
            "mean_difference": float(difference.mean()), "ci_low": low, "ci_high": high, "level": level,
            "better": int((difference > 1e-9).sum()), "worse": int((difference < -1e-9).sum()),
            "same": int((np.abs(difference) <= 1e-9).sum())}
