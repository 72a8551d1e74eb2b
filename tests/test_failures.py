"""btseg.evaluation.failures: which test slices the galleries show, from hand-made per-slice / per-case tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from btseg.evaluation import failures

# two slices per case; row index = the slice's row in the test arrays
PER_SLICE = pd.DataFrame({
    "case_id":          ["a", "a", "b", "b", "c", "c", "d", "d"],
    "slice_index":      [0, 1, 0, 1, 0, 1, 0, 1],
    "truth_pixels":     [10, 40, 0, 30, 0, 0, 5, 50],
    "predicted_pixels": [0, 35, 6, 30, 0, 9, 5, 49],
    "tp":               [0, 30, 0, 30, 0, 0, 5, 49],
    "fp":               [0, 5, 6, 0, 0, 9, 0, 0],
    "fn":               [10, 10, 0, 0, 0, 0, 0, 1],
    "dice":             [0.0, 0.8, 0.0, 1.0, 1.0, 0.0, 1.0, 0.99],
})
PER_CASE = pd.DataFrame({
    "case_id": ["a", "b", "c", "d"],
    "tp": [30, 30, 0, 54], "fp": [5, 6, 9, 0], "fn": [20, 0, 0, 1],
    "dice": [60 / 85, 60 / 66, 0.0, 108 / 109],
})


def test_worst_cases_rank_cases_by_dice_and_show_their_most_wrong_slice():
    worst = failures.worst_cases(PER_CASE, PER_SLICE, 3)
    # c (Dice 0, a false alarm only), a, b; a's most wrong slice is slice 1 (15 wrong pixels, vs 10 on slice 0)
    assert list(worst.case_id) == ["c", "a", "b"]
    assert list(worst.index) == [5, 1, 2]
    assert worst.title.iloc[1].startswith("case a\ncase Dice 0.71, tumor 50 px\nslice 1: Dice 0.80")


def test_best_cases_skip_tumor_free_cases_and_show_the_largest_tumor():
    best = failures.best_cases(PER_CASE, PER_SLICE, 10)
    assert list(best.case_id) == ["d", "b", "a"] and list(best.index) == [7, 3, 1]


def test_missed_tumors_and_false_alarms():
    missed = failures.missed_tumors(PER_SLICE, 5)
    assert list(missed.index) == [0] and "tumor 10 px, predicted 0 px" in missed.title.iloc[0]
    alarms = failures.false_alarms(PER_SLICE, 5)
    assert list(alarms.index) == [5, 2]  # largest false alarm first
    assert failures.false_alarms(PER_SLICE, 1).index.tolist() == [5]
    assert failures.missed_tumors(PER_SLICE[PER_SLICE.truth_pixels == 0], 3).empty


def test_best_cases_leave_out_the_worst_so_no_case_shows_twice():
    per_slice = pd.DataFrame({"case_id": ["a", "b", "c"], "slice_index": [0, 0, 0], "tp": [5, 3, 1], "fp": [0, 1, 4],
                              "fn": [0, 2, 4], "truth_pixels": [5, 5, 5], "predicted_pixels": [5, 4, 5]})
    per_slice["dice"] = 2 * per_slice.tp / (2 * per_slice.tp + per_slice.fp + per_slice.fn)
    per_case = per_slice[["case_id", "tp", "fp", "fn", "dice"]].copy()
    worst = failures.worst_cases(per_case, per_slice, 2)
    best = failures.best_cases(per_case, per_slice, 2, exclude=set(worst.case_id))
    assert list(worst.case_id) == ["c", "b"] and list(best.case_id) == ["a"]


def test_small_misses_are_found_and_long_titles_wrapped():
    from btseg.evaluation.plotting import fit_title, small_regions

    mask = np.zeros((20, 20), bool)
    mask[2, 3] = True  # a one-pixel miss
    mask[10:18, 10:18] = True  # a large one
    assert small_regions(mask, 20) == [(2.0, 3.0)]
    assert small_regions(np.zeros((4, 4), bool), 20) == []
    title = fit_title("case TCGA_CS_4942_19970222\ncase Dice 0.85, tumor 1234 px, predicted 1200 px", inches=1.5)
    assert all(len(line) <= int(1.5 * 72 / (8 * 0.6)) for line in title.split("\n"))
    assert "TCGA_CS_4942_19970222" in title.replace("\n", "")
