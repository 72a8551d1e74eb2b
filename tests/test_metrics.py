"""stages.metrics: counts, the four overlap scores, the empty-mask convention, per-slice/per-case tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.metrics import METRICS, confusion_counts, per_case_table, per_slice_table, scores, summary


def masks(*rows: str) -> np.ndarray:
    """One 2D 0/1 mask per argument, rows separated by '/': masks("10/01") is [[1, 0], [0, 1]]."""
    return np.array([[[int(c) for c in row] for row in mask.split("/")] for mask in rows], dtype=np.uint8)


# --- confusion_counts -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "prediction, truth, expected",
    [
        # p: 1 1 0    t: 1 0 0   -> tp at (0,0); fp at (0,1); fn at (1,0)
        #    0 0 0       1 0 0
        (masks("110/000"), masks("100/100"), [[1, 1, 1]]),
        # identical masks: everything predicted is true, nothing missed
        (masks("011/011"), masks("011/011"), [[4, 0, 0]]),
        # both empty
        (masks("000/000"), masks("000/000"), [[0, 0, 0]]),
        # truth empty, 2 pixels predicted
        (masks("100/001"), masks("000/000"), [[0, 2, 0]]),
        # prediction empty, 3 pixels of tumor
        (masks("000/000"), masks("111/000"), [[0, 0, 3]]),
        # prediction is the complement of truth: no overlap at all
        (masks("101/010"), masks("010/101"), [[0, 3, 3]]),
        # two images at once: one row of counts each
        (masks("110/000", "000/000"), masks("100/100", "000/001"), [[1, 1, 1], [0, 0, 1]]),
    ],
)
def test_confusion_counts(prediction, truth, expected):
    counts = confusion_counts(prediction, truth)
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, np.array(expected))


def test_confusion_counts_bool_and_01_agree_and_extra_axes_are_flattened():
    prediction = masks("110/000", "011/011")
    truth = masks("100/100", "010/011")
    expected = confusion_counts(prediction, truth)
    np.testing.assert_array_equal(confusion_counts(prediction.astype(bool), truth.astype(bool)), expected)
    # (N, 1, H, W) as the model writes it: same counts as (N, H, W)
    np.testing.assert_array_equal(confusion_counts(prediction[:, None], truth[:, None]), expected)


@pytest.mark.parametrize(
    "prediction_shape, truth_shape",
    [
        ((1, 2, 3), (1, 3, 2)),  # transposed
        ((2, 2, 2), (1, 2, 2)),  # different number of images
        ((1, 1, 4, 4), (1, 4, 4)),  # channel axis on one side only
    ],
)
def test_confusion_counts_shape_mismatch_raises(prediction_shape, truth_shape):
    with pytest.raises(ValueError, match="shape") as error:
        confusion_counts(np.zeros(prediction_shape), np.zeros(truth_shape))
    assert str(prediction_shape) in str(error.value) and str(truth_shape) in str(error.value)


# --- scores ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "tp, fp, fn, dice, iou, precision, recall",
    [
        # both empty: nothing to find, nothing claimed -> all 1
        (0, 0, 0, 1, 1, 1, 1),
        # truth empty, prediction not: dice 0/3, iou 0/3, precision 0/3, recall 0/0 -> 0
        (0, 3, 0, 0, 0, 0, 0),
        # prediction empty, truth not: dice 0/2, iou 0/2, precision 0/0 -> 0, recall 0/2
        (0, 0, 2, 0, 0, 0, 0),
        # perfect
        (4, 0, 0, 1, 1, 1, 1),
        # dice 2*2/(4+1+1) = 2/3, iou 2/(2+1+1) = 1/2, precision 2/3, recall 2/3
        (2, 1, 1, 2 / 3, 1 / 2, 2 / 3, 2 / 3),
        # dice 6/(6+1) = 6/7, iou 3/4, precision 3/4, recall 3/3
        (3, 1, 0, 6 / 7, 3 / 4, 3 / 4, 1),
        # dice 2/(2+3) = 2/5, iou 1/4, precision 1/1, recall 1/4
        (1, 0, 3, 2 / 5, 1 / 4, 1, 1 / 4),
        # no overlap: all 0
        (0, 3, 3, 0, 0, 0, 0),
    ],
)
def test_scores_hand_computed(tp, fp, fn, dice, iou, precision, recall):
    result = scores(np.array([[tp, fp, fn]]))
    assert set(result) == set(METRICS)
    expected = {"dice": dice, "iou": iou, "precision": precision, "recall": recall}
    for name in METRICS:
        assert result[name].dtype == np.float64
        assert result[name].shape == (1,)
        assert result[name][0] == pytest.approx(expected[name], abs=1e-12), name


def test_scores_vectorised_rows_are_independent():
    # an all-empty row next to scored rows must not leak its 1s into them (or vice versa)
    result = scores(np.array([[0, 0, 0], [0, 3, 0], [2, 1, 1]]))
    np.testing.assert_allclose(result["dice"], [1, 0, 2 / 3])
    np.testing.assert_allclose(result["precision"], [1, 0, 2 / 3])
    np.testing.assert_allclose(result["recall"], [1, 0, 2 / 3])


def test_scores_accepts_a_single_row_of_counts():
    result = scores(np.array([2, 1, 1]))
    assert result["dice"].shape == (1,)
    assert result["dice"][0] == pytest.approx(2 / 3)


# --- per-slice, per-case, summary -----------------------------------------------------------

def _case_example():
    """Four 3x4 slices of two cases where per-case Dice differs from the mean of slice Dice.

    case b, slice 0: truth 1 pixel, predicted exactly            -> tp 1, fp 0, fn 0, dice 1
    case b, slice 1: truth 10 pixels, only 1 of them predicted    -> tp 1, fp 0, fn 9, dice 2/11
    case b, slice 2: both empty                                   -> 0, 0, 0, dice 1 (convention)
    case a, slice 0: truth empty, 2 pixels predicted              -> tp 0, fp 2, fn 0, dice 0
    case b as a volume: tp 2, fp 0, fn 9 -> dice 4/13 (0.31), while its mean slice dice is 8/11 (0.73).
    """
    prediction = masks("1000/0000/0000", "1000/0000/0000", "0000/0000/0000", "0110/0000/0000")
    truth = masks("1000/0000/0000", "1111/1111/1100", "0000/0000/0000", "0000/0000/0000")
    # rows not in case order and a non-default index: the tables must not depend on either
    index = pd.DataFrame(
        {"case_id": ["b", "b", "b", "a"], "slice_index": [40, 41, 42, 7], "path": ["x"] * 4},
        index=[10, 11, 12, 13],
    )
    return prediction, truth, index


def test_per_slice_table_hand_computed():
    prediction, truth, index = _case_example()
    table = per_slice_table(confusion_counts(prediction, truth), index)
    assert list(table.case_id) == ["b", "b", "b", "a"]
    assert list(table.slice_index) == [40, 41, 42, 7]
    assert list(table.tp) == [1, 1, 0, 0]
    assert list(table.fp) == [0, 0, 0, 2]
    assert list(table.fn) == [0, 9, 0, 0]
    assert list(table.truth_pixels) == [1, 10, 0, 0]
    assert list(table.predicted_pixels) == [1, 1, 0, 2]
    np.testing.assert_allclose(table.dice, [1, 2 / 11, 1, 0])
    np.testing.assert_allclose(table.iou, [1, 1 / 10, 1, 0])
    np.testing.assert_allclose(table.precision, [1, 1, 1, 0])
    np.testing.assert_allclose(table.recall, [1, 1 / 10, 1, 0])


def test_per_case_table_sums_counts_not_slice_scores():
    prediction, truth, index = _case_example()
    per_slice = per_slice_table(confusion_counts(prediction, truth), index)
    per_case = per_case_table(per_slice)
    assert list(per_case.case_id) == ["a", "b"]  # sorted by case
    assert list(per_case.slices) == [1, 3]
    assert list(per_case.tp) == [0, 2]
    assert list(per_case.fp) == [2, 0]
    assert list(per_case.fn) == [0, 9]
    # a: tp 0, fp 2, fn 0 -> all 0; b: tp 2, fp 0, fn 9 -> dice 4/13, iou 2/11, precision 1, recall 2/11
    np.testing.assert_allclose(per_case.dice, [0, 4 / 13])
    np.testing.assert_allclose(per_case.iou, [0, 2 / 11])
    np.testing.assert_allclose(per_case.precision, [0, 1])
    np.testing.assert_allclose(per_case.recall, [0, 2 / 11])
    # the point of the test: the volume's dice is not the mean of its slices' dice (8/11)
    mean_slice_dice_b = per_slice[per_slice.case_id == "b"].dice.mean()
    assert mean_slice_dice_b == pytest.approx(8 / 11)
    assert per_case.dice[1] != pytest.approx(mean_slice_dice_b)


def test_summary_hand_computed():
    prediction, truth, index = _case_example()
    per_slice = per_slice_table(confusion_counts(prediction, truth), index)
    result = summary(per_slice, per_case_table(per_slice))
    assert result["cases"] == 2 and result["slices"] == 4
    expected = {
        # mean over cases a, b: dice (0 + 4/13)/2, iou (0 + 2/11)/2, precision (0 + 1)/2, recall (0 + 2/11)/2
        "per_case": {"dice": 2 / 13, "iou": 1 / 11, "precision": 1 / 2, "recall": 1 / 11},
        # mean over 4 slices: dice (1 + 2/11 + 1 + 0)/4, iou (1 + 1/10 + 1 + 0)/4, ...
        "per_slice": {"dice": 6 / 11, "iou": 0.525, "precision": 0.75, "recall": 0.525},
        # all pixels pooled: tp 2, fp 2, fn 9 -> dice 4/15, iou 2/13, precision 2/4, recall 2/11
        "pooled": {"dice": 4 / 15, "iou": 2 / 13, "precision": 1 / 2, "recall": 2 / 11},
    }
    for level, values in expected.items():
        assert set(result[level]) == set(METRICS)
        for name, value in values.items():
            assert isinstance(result[level][name], float)
            assert result[level][name] == pytest.approx(value), (level, name)


# --- against an independent implementation --------------------------------------------------

def _pixels(mask: np.ndarray) -> set[tuple[int, ...]]:
    return set(zip(*np.nonzero(mask)))


def _reference_scores(predicted: set, true: set) -> dict[str, float]:
    """The four metrics from sets of pixel coordinates, convention written out case by case."""
    overlap = len(predicted & true)
    if not predicted and not true:
        return dict.fromkeys(METRICS, 1.0)
    return {
        "dice": 2 * overlap / (len(predicted) + len(true)),
        "iou": overlap / len(predicted | true),
        "precision": overlap / len(predicted) if predicted else 0.0,
        "recall": overlap / len(true) if true else 0.0,
    }


def test_random_masks_match_set_based_reference():
    rng = np.random.default_rng(1234)
    n_slices, size = 60, 9
    # densities from empty to full so that every branch of the convention is hit
    densities = [0.0, 0.05, 0.3, 0.7, 1.0]
    prediction = rng.random((n_slices, size, size)) < rng.choice(densities, size=(n_slices, 1, 1))
    truth = rng.random((n_slices, size, size)) < rng.choice(densities, size=(n_slices, 1, 1))
    case_ids = [f"case_{i % 7}" for i in range(n_slices)]
    index = pd.DataFrame({"case_id": case_ids, "slice_index": range(n_slices)})

    per_slice = per_slice_table(confusion_counts(prediction, truth), index)
    per_case = per_case_table(per_slice)
    # the seed gives every empty-mask situation at least once
    predicted_any, truth_any = per_slice.predicted_pixels > 0, per_slice.truth_pixels > 0
    assert (~predicted_any & ~truth_any).any()
    assert (predicted_any & ~truth_any).any()
    assert (~predicted_any & truth_any).any()

    for row in per_slice.itertuples():
        expected = _reference_scores(_pixels(prediction[row.Index]), _pixels(truth[row.Index]))
        for name in METRICS:
            assert getattr(row, name) == pytest.approx(expected[name]), (row.Index, name)

    for row in per_case.itertuples():
        # the case as a volume: pixel coordinates (slice, y, x) over its slices
        slices = [i for i, case in enumerate(case_ids) if case == row.case_id]
        expected = _reference_scores(
            {(i, *p) for i in slices for p in _pixels(prediction[i])},
            {(i, *p) for i in slices for p in _pixels(truth[i])},
        )
        assert row.slices == len(slices)
        for name in METRICS:
            assert getattr(row, name) == pytest.approx(expected[name]), (row.case_id, name)

    pooled = summary(per_slice, per_case)["pooled"]
    expected = _reference_scores(_pixels(prediction), _pixels(truth))
    for name in METRICS:
        assert pooled[name] == pytest.approx(expected[name]), name
