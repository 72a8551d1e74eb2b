"""btseg.scoring.metrics: counts, the four overlap scores, the empty-mask convention, per-slice/per-case tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from btseg.scoring.metrics import METRICS, confusion_counts, per_case_table, per_slice_table, scores, summary


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
        assert set(result[level]) == set(METRICS) | ({"dice_ci95_low", "dice_ci95_high"} if level == "per_case"
                                                     else set())
        for name, value in values.items():
            assert isinstance(result[level][name], float)
            assert result[level][name] == pytest.approx(value), (level, name)
    # resampling two cases with Dice 0 and 4/13 gives means 0, 2/13, 4/13 with chances 1/4, 1/2, 1/4:
    # the 2.5th and 97.5th percentiles are the extremes
    assert (result["per_case"]["dice_ci95_low"], result["per_case"]["dice_ci95_high"]) == pytest.approx((0, 4 / 13))


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


# --- specificity, HD95, size difference ------------------------------------------------------

from btseg.decisions.thresholds import counts_at_thresholds, precision_recall_curve, threshold_sweep  # noqa: E402
from btseg.scoring.metrics import (  # noqa: E402
    BRATS_LEGACY_HD95,
    bucket_summary,
    dice_conventions,
    evaluate_targets,
    hd95,
    per_case_metrics,
    per_slice_metrics,
    size_bucket,
    specificity,
)


@pytest.mark.parametrize(
    "tp, fp, fn, pixels, expected",
    [
        (2, 1, 1, 10, 6 / 7),  # tn = 10 - 4 = 6; 6 / (6 + 1)
        (0, 0, 0, 9, 1.0),  # both empty: 1
        (0, 3, 0, 9, 6 / 9),  # false alarm of 3 in 9 pixels
        (0, 0, 4, 9, 1.0),  # a miss costs no specificity: tn 5, fp 0
        (4, 0, 0, 4, 0.0),  # tumor everywhere, nothing negative to find: 0/0 -> 0 (convention)
        (1, 0, 0, 1, 0.0),  # a single pixel image that is all tumor, found
    ],
)
def test_specificity_hand_computed(tp, fp, fn, pixels, expected):
    result = specificity(np.array([[tp, fp, fn]]), np.array([pixels]))
    assert result.dtype == np.float64 and result[0] == pytest.approx(expected, abs=1e-12)


def _points(shape, *pixels) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for pixel in pixels:
        mask[pixel] = True
    return mask


@pytest.mark.parametrize(
    "prediction, truth, expected",
    [
        # single pixels 3 down, 4 across: 5 both ways
        (_points((8, 8), (0, 0)), _points((8, 8), (3, 4)), 5.0),
        # identical: 0
        (_points((8, 8), (2, 2), (2, 3)), _points((8, 8), (2, 2), (2, 3)), 0.0),
        # both empty: 0
        (_points((6, 8)), _points((6, 8)), 0.0),
        # one empty: the diagonal of the 6 x 8 image, 10, either way round
        (_points((6, 8)), _points((6, 8), (1, 1)), 10.0),
        (_points((6, 8), (1, 1)), _points((6, 8)), 10.0),
        # an outlier: prediction->truth distances [0, 10] -> 95th percentile 9.5 (linear), truth->prediction [0];
        # the larger directed percentile is 9.5 (medpy, pooling [0, 0, 10] first, would say 9.0)
        (_points((1, 11), (0, 0), (0, 10)), _points((1, 11), (0, 0)), 9.5),
        # a full 3 x 3 image vs its centre: the edge of the array is outside, so the 8 rim pixels are
        # surface; 4 at distance 1 and 4 at sqrt(2) -> 95th percentile sqrt(2); centre -> rim 1
        (np.ones((3, 3), bool), _points((3, 3), (1, 1)), np.sqrt(2)),
        # stacked slices (z, y, x): a pixel on slice 0 vs the same pixel on slice 1 -> 1
        (_points((2, 4, 4), (0, 2, 2)), _points((2, 4, 4), (1, 2, 2)), 1.0),
        # a volume with one side empty: the diagonal of 2 x 4 x 4 = 6
        (_points((2, 4, 4)), _points((2, 4, 4), (1, 2, 2)), 6.0),
    ],
)
def test_hd95_hand_computed(prediction, truth, expected):
    assert hd95(prediction, truth) == pytest.approx(expected, abs=1e-12)


def test_hd95_spacing_scales_distances_and_the_empty_diagonal():
    prediction, truth = _points((2, 4, 4), (0, 2, 2)), _points((2, 4, 4), (1, 2, 2))
    assert hd95(prediction, truth, spacing=(2.5, 1.0, 1.0)) == pytest.approx(2.5)
    # diagonal of 2*3 x 4*1 x 4*1 = sqrt(36 + 16 + 16)
    assert hd95(_points((2, 4, 4)), truth, spacing=(3.0, 1.0, 1.0)) == pytest.approx(np.sqrt(68))
    with pytest.raises(ValueError, match="spacing"):
        hd95(prediction, truth, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="shape"):
        hd95(prediction, truth[0])


def test_per_slice_and_per_case_metrics_add_surface_and_size_columns():
    prediction, truth, index = _case_example()
    per_slice = per_slice_metrics(prediction, truth, index)
    assert list(per_slice.pixels) == [12] * 4
    assert list(per_slice.tn) == [11, 2, 12, 10]
    np.testing.assert_allclose(per_slice.specificity, [1, 1, 1, 10 / 12])
    # slice 1: truth 10 px, predicted 1 of them -> -9 px, -0.9; slices 2, 3: no truth -> NaN fraction
    assert list(per_slice.area_difference_px) == [0, -9, 0, 2]
    np.testing.assert_allclose(per_slice.area_difference_fraction, [0, -0.9, np.nan, np.nan])
    # slice 0 perfect: 0; slice 2 both empty: 0; slice 3 truth empty: diagonal of 3 x 4 = 5
    assert per_slice.hd95_px[0] == 0 and per_slice.hd95_px[2] == 0 and per_slice.hd95_px[3] == pytest.approx(5.0)
    per_case = per_case_metrics(prediction, truth, per_slice)
    assert list(per_case.case_id) == ["a", "b"] and list(per_case.pixels) == [12, 36]
    assert list(per_case.volume_difference_px) == [2, -9]
    np.testing.assert_allclose(per_case.volume_difference_fraction, [np.nan, -9 / 11])
    # case a is one slice with no truth: diagonal of the 1 x 3 x 4 volume
    assert per_case.hd95_px[0] == pytest.approx(np.sqrt(1 + 9 + 16))
    assert per_case.hd95_px[1] == pytest.approx(hd95(prediction[:3], truth[:3]))


def test_per_case_hd95_stacks_slices_in_slice_index_order():
    truth = _points((3, 5, 5), (0, 2, 2), (1, 2, 2), (2, 2, 2))
    prediction = truth.copy()
    prediction[2] = False  # the slice with slice_index 30 is missed ...
    index = pd.DataFrame({"case_id": ["c"] * 3, "slice_index": [10, 30, 20]})
    per_case = per_case_metrics(prediction, truth, per_slice_metrics(prediction, truth, index))
    # ... stacked by slice_index the rows are 10, 20, 30 -> truth z 0..2, prediction z 0 and 2 (row 2 is slice 20):
    # prediction->truth all 0; truth->prediction [0, 1 (the middle slice), 0] -> 95th percentile 0.9
    assert per_case.hd95_px[0] == pytest.approx(0.9)


# --- conventions, buckets, thresholds ---------------------------------------------------------

def test_dice_conventions_hand_computed():
    # both empty / truth empty, 3 predicted / prediction empty, 2 true / dice 2/3
    per_case = pd.DataFrame({"tp": [0, 0, 0, 2], "fp": [0, 3, 0, 1], "fn": [0, 0, 2, 1],
                             "hd95_px": [0.0, 50.0, 50.0, 4.0]})
    result = dice_conventions(per_case)
    assert result["ours"] == pytest.approx((1 + 0 + 0 + 2 / 3) / 4)
    assert result["brats_legacy"] == result["ours"]
    assert result["nnunet"] == pytest.approx((0 + 0 + 2 / 3) / 3)  # both-empty case skipped
    assert result["monai_ignore_empty"] == pytest.approx((0 + 2 / 3) / 2)  # every empty-truth case skipped
    from btseg.scoring.metrics import brats_legacy_hd95
    assert brats_legacy_hd95(per_case) == pytest.approx((0 + 2 * BRATS_LEGACY_HD95 + 4) / 4)
    only_empty = dice_conventions(per_case.iloc[:1])
    assert only_empty["nnunet"] is None and only_empty["monai_ignore_empty"] is None and only_empty["ours"] == 1.0


def test_size_buckets_hand_computed():
    per_slice = pd.DataFrame({"truth_pixels": [0, 0, 1, 2, 5, 50], "predicted_pixels": [0, 3, 0, 2, 4, 40],
                              "pixels": [100] * 6, "dice": [1.0, 0.0, 0.0, 1.0, 0.8, 0.9]})
    bounds = {"tiny": 0.01, "small": 0.02, "large": 1.0}
    # fraction 0.01 is tiny and 0.02 small: the bounds are inclusive
    assert list(size_bucket(per_slice, bounds)) == ["none", "none", "tiny", "small", "large", "large"]
    result = bucket_summary(per_slice, bounds)
    assert result["none"] == {"slices": 2, "false_alarm_rate": 0.5}
    assert result["tiny"] == {"slices": 1, "dice": 0.0, "miss_rate": 1.0}
    assert result["small"] == {"slices": 1, "dice": 1.0, "miss_rate": 0.0}
    assert result["large"]["slices"] == 2 and result["large"]["dice"] == pytest.approx(0.85) \
        and result["large"]["miss_rate"] == 0.0
    empty = bucket_summary(per_slice.iloc[:2], bounds)
    assert empty["tiny"] == {"slices": 0, "dice": None, "miss_rate": None}


def test_counts_at_thresholds_equal_confusion_counts_at_each_threshold():
    rng = np.random.default_rng(5)
    probabilities = rng.random((7, 6, 5)).astype(np.float32)
    probabilities[0, 0, :3] = [0.25, 0.5, 0.75]  # exactly on a threshold: not predicted (p > t)
    truth = rng.random((7, 6, 5)) < 0.4
    thresholds = np.array([0.0, 0.25, 0.5, 0.75, 0.999])
    counts = counts_at_thresholds(probabilities, truth, thresholds, chunk=3)
    assert counts.shape == (7, 5, 3) and counts.dtype == np.int64
    for j, threshold in enumerate(thresholds):
        np.testing.assert_array_equal(counts[:, j], confusion_counts(probabilities > threshold, truth))
    with pytest.raises(ValueError, match="increase"):
        counts_at_thresholds(probabilities, truth, np.array([0.5, 0.2]))


def test_threshold_sweep_and_pr_curve_hand_computed():
    probabilities = np.array([0.9, 0.6, 0.3, 0.1]).reshape(1, 1, 2, 2)
    truth = np.array([1, 1, 0, 0]).reshape(1, 1, 2, 2)
    index = pd.DataFrame({"case_id": ["c"], "slice_index": [0]})
    sweep = threshold_sweep(probabilities, truth, index, [0.2, 0.5, 0.8])
    # 0.2: 3 predicted, tp 2 fp 1 -> 4/5; 0.5: exact -> 1; 0.8: tp 1 fn 1 -> 2/3
    np.testing.assert_allclose(sweep.case_dice, [4 / 5, 1, 2 / 3])
    curve = precision_recall_curve(probabilities[:, 0], truth[:, 0], np.array([0.2, 0.5, 0.8]))
    np.testing.assert_allclose(curve.precision, [2 / 3, 1, 1])
    np.testing.assert_allclose(curve.recall, [1, 1, 1 / 2])


def test_evaluate_targets_summary_is_compact_and_per_target_with_regions():
    prediction, truth, index = _case_example()
    stacked_prediction = np.stack([prediction, prediction], axis=1)
    stacked_truth = np.stack([truth, np.zeros_like(truth)], axis=1)
    bounds = {"small": 0.5, "large": 1.0}
    per_slice, per_case, metrics = evaluate_targets(stacked_prediction, stacked_truth, index, ["WT", "ET"],
                                                    size_buckets=bounds)
    assert list(per_slice.target) == ["WT"] * 4 + ["ET"] * 4 and "size_bucket" in per_slice
    assert set(metrics["targets"]) == {"WT", "ET"} and "size_buckets" in metrics["targets"]["WT"]
    for group in ("per_case", "per_slice", "pooled", "dice_conventions"):
        for key, value in metrics[group].items():
            values = [metrics["targets"][t][group][key] for t in ("WT", "ET")]
            values = [v for v in values if v is not None]
            assert value == pytest.approx(np.mean(values) if values else None), (group, key)
    single = evaluate_targets(prediction[:, None], truth[:, None], index, ["whole_tumor"], size_buckets=bounds)[2]
    assert "targets" not in single and single["size_buckets"]["small"]["slices"] == 1
    assert single["per_case"]["dice"] == pytest.approx(2 / 13)  # unchanged headline (test_summary_hand_computed)
    assert single["per_case"]["hd95_px"] == pytest.approx(np.mean(per_case[per_case.target == "WT"].hd95_px))


def test_choose_threshold_takes_the_best_case_dice_and_the_lowest_on_ties():
    from btseg.decisions.thresholds import choose_threshold

    truth = np.zeros((2, 1, 1, 4), np.uint8)
    truth[0, 0, 0, :2] = 1  # case a: two tumor pixels
    probabilities = np.zeros((2, 1, 1, 4), np.float32)
    probabilities[0, 0, 0, :2] = 0.65  # found only above thresholds below 0.65
    probabilities[0, 0, 0, 2] = 0.35  # a false alarm gone at thresholds >= 0.35
    index = pd.DataFrame({"case_id": ["a", "b"]})
    threshold, sweep = choose_threshold(probabilities, truth, index, [0.2, 0.4, 0.5, 0.7])
    # 0.2: case a Dice 4/5, case b 1 -> 0.9; 0.4 and 0.5: 1 and 1 -> 1.0 (tie, lowest wins); 0.7: a 0, b 1 -> 0.5
    np.testing.assert_allclose(sweep.case_dice, [0.9, 1.0, 1.0, 0.5])
    assert threshold == 0.4


def test_smoothed_threshold_prefers_a_plateau_to_a_lone_peak_at_the_edge():
    from btseg.decisions.thresholds import pick_threshold

    sweep = pd.DataFrame({"threshold": [0.1, 0.3, 0.5, 0.7, 0.9], "case_dice": [0.6, 0.8, 0.8, 0.7, 0.85]})
    assert pick_threshold(sweep) == 0.9  # the lone best point, at the edge
    assert pick_threshold(sweep, smooth=True) == 0.7  # 0.783: its neighbours hold it up
    # neighbours averaged, an edge point with its only neighbour
    np.testing.assert_allclose(sweep.smoothed, [0.7, 2.2 / 3, 2.3 / 3, 2.35 / 3, 0.775])


def test_the_chosen_thresholds_own_val_dice_is_reported_not_the_grids_best():
    from btseg.decisions.thresholds import case_dice_at, pick_threshold

    sweep = pd.DataFrame({"threshold": [0.1, 0.3, 0.5, 0.7, 0.9], "case_dice": [0.6, 0.8, 0.8, 0.7, 0.85]})
    chosen = pick_threshold(sweep, smooth=True)
    assert case_dice_at(sweep, chosen) == 0.7  # what 0.7 delivers on val, not the 0.85 of 0.9
    assert case_dice_at(sweep, 0.30000000000000004) == 0.8  # grid values read back from float arithmetic
    assert case_dice_at(sweep, 0.45) is None  # a threshold decided under another grid


def test_headline_keeps_the_numbers_people_compare():
    from btseg.scoring.metrics import headline

    prediction, truth, index = _case_example()
    _, _, full = evaluate_targets(prediction[:, None], truth[:, None], index, ["whole_tumor"],
                                  size_buckets={"all": 1.0})
    slim = headline({**full, "threshold": 0.4})
    assert slim == {"per_case": {k: full["per_case"][k] for k in ("dice", "dice_ci95_low", "dice_ci95_high", "iou",
                                                                  "precision", "recall", "hd95_px")},
                    "per_slice": {"dice": full["per_slice"]["dice"]}, "pooled": {"dice": full["pooled"]["dice"]},
                    "threshold": 0.4, "cases": 2}
