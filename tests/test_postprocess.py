"""Post-processing rules on hand-built volumes, and the choice on validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from btseg.decisions import postprocess
from btseg.decisions.postprocess import apply_rule, choose_postprocess, sizes_within_tumors


def volume_case() -> tuple[np.ndarray, pd.DataFrame]:
    """Two cases; case a has 3 slices given out of order: a 2x2x3 blob across slices 0-2 (12 voxels),
    a 1-voxel speck on slice 2 and a 2-voxel speck on slice 0; case b: one 1-voxel speck."""
    masks = np.zeros((4, 1, 8, 8), bool)
    index = pd.DataFrame({"case_id": ["a", "a", "b", "a"], "slice_index": [2, 0, 5, 1]})
    for row in (0, 1, 3):
        masks[row, 0, 1:3, 1:3] = True  # the blob: the same 2x2 square on each slice of a
    masks[0, 0, 6, 6] = True  # a's slice 2: 1-voxel speck
    masks[1, 0, 6, 5:7] = True  # a's slice 0: 2-voxel speck
    masks[2, 0, 4, 4] = True  # b: 1 voxel
    return masks, index


def test_keep_largest_keeps_the_3d_blob_per_case():
    masks, index = volume_case()
    out = apply_rule(masks, index, "keep_largest")
    assert out[[0, 1, 3], 0, 1:3, 1:3].all() and out.sum() == 12 + 1  # a's blob, and b's only component
    assert masks.sum() == 12 + 1 + 2 + 1  # input untouched


def test_remove_small_counts_voxels_in_3d():
    masks, index = volume_case()
    assert apply_rule(masks, index, "remove_small:2").sum() == 12 + 2  # 1-voxel specks go, in both cases
    assert apply_rule(masks, index, "remove_small:3").sum() == 12
    assert apply_rule(masks, index, "remove_small:13").sum() == 0


def test_components_touching_across_slices_are_one():
    masks = np.zeros((2, 1, 4, 4), bool)
    masks[0, 0, 0, 0] = masks[1, 0, 0, 0] = True  # a voxel above a voxel: 6-connected in 3D
    index = pd.DataFrame({"case_id": ["a", "a"], "slice_index": [0, 1]})
    assert apply_rule(masks, index, "remove_small:2").sum() == 2


def test_unknown_rule_is_an_error():
    masks, index = volume_case()
    with pytest.raises(ValueError, match="unknown post-processing rule"):
        apply_rule(masks, index, "remove_small:x")


def test_choice_is_none_unless_a_rule_is_strictly_better():
    masks, index = volume_case()
    truth = masks.copy()  # the prediction is perfect: nothing can improve it
    rule, scores = choose_postprocess(masks, truth, index, [2, 50])
    assert rule == "none" and list(scores.rule) == ["none", "remove_small:2", "remove_small:50", "keep_largest"]
    truth = apply_rule(masks, index, "remove_small:3")  # the specks are false alarms
    rule, scores = choose_postprocess(masks, truth, index, [3, 50])
    # case a: none 24/27, keep_largest 1; case b (no tumor, a 1-voxel alarm): none 0, keep_largest 0, remove_small:3 1
    assert scores.set_index("rule").case_dice.to_dict() == pytest.approx(
        {"none": (24 / 27 + 0) / 2, "keep_largest": (1 + 0) / 2, "remove_small:3": 1.0, "remove_small:50": (0 + 1) / 2})
    assert rule == "remove_small:3"


def test_tta_averages_the_flipped_predictions_of_a_model_that_is_not_flip_equivariant():
    import torch

    from btseg.models.prediction import predict_masks, predict_probabilities

    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 1, 3, padding=1)  # an asymmetric kernel: flips change its output
    images = np.random.default_rng(0).normal(size=(3, 1, 8, 8)).astype(np.float32)
    plain = predict_probabilities(model, images, torch.device("cpu"))
    tta = predict_probabilities(model, images, torch.device("cpu"), tta=True)
    expected = np.zeros_like(plain)
    for flip in (lambda a: a, lambda a: a[..., ::-1], lambda a: a[..., ::-1, :], lambda a: a[..., ::-1, ::-1]):
        expected += flip(predict_probabilities(model, np.ascontiguousarray(flip(images)), torch.device("cpu"))) / 4
    np.testing.assert_allclose(tta, expected, atol=1e-6)
    assert np.abs(tta - plain).max() > 1e-3
    masks = predict_masks(model, images, torch.device("cpu"), 0.5, tta=True)
    np.testing.assert_array_equal(masks, (tta > 0.5).astype(np.uint8))


def test_among_rules_that_tie_on_validation_the_mildest_is_kept():
    masks = np.zeros((1, 1, 10, 10), bool)
    masks[0, 0, 0:3, 0:4] = True  # the tumor, found
    truth = masks.copy()
    masks[0, 0, 9, 9] = True  # a one-voxel false alarm: keep_largest and remove_small:2 both remove it
    index = pd.DataFrame({"case_id": ["a"], "slice_index": [0]})
    rule, scores = choose_postprocess(masks, truth, index, [2, 50])
    dice = scores.set_index("rule").case_dice
    assert dice["none"] == pytest.approx(24 / 25) and dice["remove_small:2"] == dice["keep_largest"] == 1.0
    assert dice["remove_small:50"] == 0.0  # the tumor (12 voxels) goes too
    assert rule == "remove_small:2"


def test_sizes_above_the_smallest_training_tumor_are_left_out(monkeypatch):
    """Case a: 12 tumor voxels over 3 slices of target 0, 30 of target 1; b: none; c: 5 of target 0
    on one slice; d: 40 of target 1 only. The smallest tumor of any target is c's 5 voxels."""
    masks = np.zeros((6, 2, 8, 8), bool)
    index = pd.DataFrame({"case_id": ["a", "b", "a", "c", "a", "d"], "slice_index": [0, 0, 1, 0, 2, 0]})
    for row in (0, 2, 4):
        masks[row, 0, 0:2, 0:2] = True  # a: 3 x 4 voxels of target 0
        masks[row, 1, 0:2, 0:5] = True  # a: 3 x 10 of target 1
    masks[3, 0, 5, 0:5] = True  # c: 5
    masks[5, 1, 0:5, 0:8] = True  # d: 40
    monkeypatch.setattr(postprocess, "CHUNK", 4)  # counted in two pieces, a case's slices in both
    assert sizes_within_tumors([50, 2, 5, 6], masks, index) == [2, 5]  # 5 deletes no tumor of 5 voxels; 6 would
    masks[3] = False  # without c: target 0's smallest is a's 12, target 1's is a's 30
    assert sizes_within_tumors([13, 12, 31], masks, index) == [12]
    assert sizes_within_tumors([50, 10], np.zeros_like(masks), index) == [10, 50]  # no tumor: every size


def peaked_case() -> tuple[np.ndarray, pd.DataFrame]:
    """Case a, 2 slices given out of order: a confident core (0.9) on slice 0 with a 0.4 rim that runs
    on into slice 1, and apart from it a 0.45 plateau (uncertain throughout); case b: a 0.35 speck."""
    probabilities = np.full((3, 1, 6, 6), 0.05, np.float32)
    index = pd.DataFrame({"case_id": ["a", "b", "a"], "slice_index": [1, 0, 0]})
    probabilities[2, 0, 1:4, 1:4] = 0.4  # slice 0 of a: the rim...
    probabilities[2, 0, 2, 2] = 0.9  # ...around the core
    probabilities[0, 0, 2, 1:4] = 0.4  # slice 1 of a: the rim goes on, touching slice 0's rim
    probabilities[2, 0, 5, 4:6] = 0.45  # the plateau, not touching the rim
    probabilities[1, 0, 3, 3] = 0.35  # b
    return probabilities, index


def test_peak_rule_keeps_the_components_that_reach_the_peak_rim_and_all():
    probabilities, index = peaked_case()
    out = postprocess.segment(probabilities, index, 0.3, "peak:0.8")
    expected = np.zeros_like(out)
    expected[2, 0, 1:4, 1:4] = True  # core and rim, slice 0
    expected[0, 0, 2, 1:4] = True  # the rim on slice 1: the same 3D component
    np.testing.assert_array_equal(out, expected)  # the plateau and b's speck never reach 0.8
    assert postprocess.segment(probabilities, index, 0.3, "peak:0.4").sum() == 9 + 3 + 2  # b's 0.35 goes
    # a peak at or below the threshold keeps every component: the threshold alone
    np.testing.assert_array_equal(postprocess.segment(probabilities, index, 0.3, "peak:0.2"), probabilities > 0.3)
    np.testing.assert_array_equal(postprocess.segment(probabilities, index, 0.3, "none"), probabilities > 0.3)


@pytest.mark.parametrize("rule", ["peak:", "peak:x", "peak:1.5", "peak:-0.1"])
def test_a_malformed_peak_rule_is_an_error(rule):
    probabilities, index = peaked_case()
    with pytest.raises(ValueError, match="peak:P"):
        postprocess.segment(probabilities, index, 0.3, rule)


def test_apply_rule_refuses_a_peak_rule_it_cannot_apply_to_masks():
    masks, index = volume_case()
    with pytest.raises(ValueError, match="needs the probabilities"):
        apply_rule(masks, index, "peak:0.8")


def test_peak_sweep_counts_as_the_metrics_module_does_on_the_masks():
    """peak_case_dice counts per component; the reference thresholds full masks and scores them with
    btseg.scoring (per case, averaged over targets), on random blobs in two targets."""
    rng = np.random.default_rng(3)
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.random((12, 2, 16, 16)), sigma=(0, 0, 2, 2))
    probabilities = (noise - noise.min()) / (noise.max() - noise.min())
    truth = ndimage.gaussian_filter(rng.random((12, 2, 16, 16)), sigma=(0, 0, 2, 2)) > 0.52
    truth[4:8, 1] = False  # case b has no tumor of target 1: an empty truth scores 1 only when nothing is kept
    index = pd.DataFrame({"case_id": np.repeat(["a", "b", "c"], 4), "slice_index": np.tile([3, 0, 2, 1], 3)})
    peaks = [0.3, 0.5, 0.6, 0.7, 0.9]
    swept = postprocess.peak_case_dice(probabilities, truth, index, 0.4, peaks)
    reference = [postprocess.mean_case_dice(postprocess.keep_peaked(probabilities, index, 0.4, h), truth, index)
                 for h in peaks]
    np.testing.assert_allclose(swept, reference, atol=1e-12)
    assert len(set(np.round(reference, 6))) > 2  # the peaks keep different components


def test_a_peak_rule_replaces_the_plain_choice_only_when_clearly_better():
    """Case a's tumor is the core and its rim; the plain threshold 0.5 finds the core alone; 0.3
    with a peak above the plateau's 0.45 finds core and rim and leaves the plateau (a false alarm at
    0.3) out; so do 0.1 and higher peaks, and the mildest of those is taken."""
    probabilities, index = peaked_case()
    truth = postprocess.segment(probabilities, index, 0.3, "peak:0.8")
    plain_rule, rules = choose_postprocess(probabilities > 0.5, truth, index, [2])
    threshold, rule, table = postprocess.choose_peak(probabilities, truth, index, 0.5, plain_rule, rules,
                                                     [0.1, 0.3, 0.5], [0.1, 0.3, 0.5, 0.8])
    assert (threshold, rule) == (0.3, "peak:0.5")
    assert list(table.rule[:len(rules)]) == list(rules.rule) and (table.threshold[:len(rules)] == 0.5).all()
    # a: 1 core voxel of 12 tumor voxels at 0.5 -> 2/13; b has no tumor and nothing above 0.5 -> 1
    assert table.case_dice[table.rule == "none"].iloc[0] == pytest.approx((2 / 13 + 1) / 2)
    assert table.case_dice[(table.rule == "peak:0.8") & (table.threshold == 0.3)].iloc[0] == pytest.approx(1.0)
    # when no peak rule beats the plain choice by more than TIE, the plain choice stays
    threshold, rule, _ = postprocess.choose_peak(probabilities, probabilities > 0.5, index, 0.5, "none",
                                                 rules.assign(case_dice=1.0), [0.1, 0.3, 0.5], [0.8])
    assert (threshold, rule) == (0.5, "none")


def brute_expected_dice_threshold(volume: np.ndarray) -> float:
    """The expected-Dice threshold by masks, one grid value at a time (the reference)."""
    volume = np.asarray(volume)
    best, best_t = -1.0, None
    for t in postprocess.EXPECTED_DICE_GRID:
        chosen = volume > float(t)  # compared in the volume's dtype, as the masks are
        expected = 2 * volume[chosen].astype(np.float64).sum() / (chosen.sum() + volume.astype(np.float64).sum())
        if expected > best + 1e-12:
            best, best_t = expected, float(t)
    return best_t


def test_expected_dice_threshold_by_hand():
    # two sure pixels and four at 0.3 (sum 3.0): all six expect 2*3/(6+3) = 0.667, the sure two
    # 2*1.8/(2+3) = 0.72 from t = 0.30 on (0.3 itself is not above 0.30), none 0: the lowest best is 0.30
    assert postprocess.expected_dice_threshold(np.array([0.9, 0.9, 0.3, 0.3, 0.3, 0.3])) == pytest.approx(0.30)
    # a faint tumor: ten pixels at 0.4 in ninety at 0.05 (sum 8.5): above 0.05 the ten expect
    # 2*4/(10+8.5) = 0.43; a common threshold of 0.5 would find nothing
    faint = np.array([0.4] * 10 + [0.05] * 90)
    assert postprocess.expected_dice_threshold(faint) == pytest.approx(0.05)
    assert postprocess.expected_dice_threshold(np.zeros(5)) == pytest.approx(0.05)  # nothing expected: nothing found


def test_expected_dice_threshold_matches_the_masks_one_threshold_at_a_time():
    rng = np.random.default_rng(5)
    for _ in range(30):
        volume = rng.beta(rng.uniform(0.2, 2), rng.uniform(0.5, 5), size=rng.integers(5, 400)).astype(np.float32)
        assert postprocess.expected_dice_threshold(volume) == pytest.approx(brute_expected_dice_threshold(volume))


def test_each_case_gets_its_own_threshold_then_the_rule():
    probabilities, index = peaked_case()  # a: a 0.9 core in a 0.4 rim and a 0.45 plateau; b: a 0.35 speck
    masks = postprocess.per_case_masks(probabilities, index)
    for case in ("a", "b"):
        rows = np.flatnonzero(index.case_id == case)
        t = brute_expected_dice_threshold(probabilities[rows, 0])
        np.testing.assert_array_equal(masks[rows], probabilities[rows] > t)
    thresholds = postprocess.case_thresholds(probabilities, index).set_index("case_id").threshold
    for case in ("a", "b"):
        rows = np.flatnonzero(index.case_id == case)
        assert thresholds[case] == brute_expected_dice_threshold(probabilities[rows, 0])
    # b: the 0.35 speck alone (above 0.05: the background of 0.05 is not above it) expects
    # 2*0.35/(1 + 0.35 + 35*0.05) = 0.226, more than with the background (0.11): its threshold is 0.05
    assert thresholds["b"] == pytest.approx(0.05)
    np.testing.assert_array_equal(postprocess.segment(probabilities, index, 0.9, "expected_dice"), masks)
    np.testing.assert_array_equal(postprocess.segment(probabilities, index, 0.9, "expected_dice+keep_largest"),
                                  apply_rule(masks, index, "keep_largest"))
    with pytest.raises(ValueError, match="common threshold"):
        postprocess.segment(probabilities, index, 0.3, "expected_dice+peak:0.8")


def test_per_case_threshold_chooses_the_rule_on_val_under_it():
    """decide() with evaluate.per_case_threshold: the rule is `expected_dice`, with the component rule
    that raises val Dice under the per-case masks."""
    from btseg.config import EvaluateParams
    from btseg.decisions.choose import decide, validation_sweeps
    from btseg.preprocessing.slices import SliceSet
    from tests.conftest import tiny_params

    probabilities, index = peaked_case()
    truth = postprocess.per_case_masks(probabilities, index).copy()
    truth[index.case_id.to_numpy() == "b"] = False  # b's speck is a false alarm: remove_small fixes it
    val = SliceSet(images=np.zeros_like(probabilities), masks=truth.astype(np.uint8), index=index, meta={})
    settings = EvaluateParams(**{**tiny_params()["evaluate"], "per_case_threshold": True})
    threshold, rule = decide(probabilities, val, settings, [2])
    assert rule == "expected_dice+remove_small:2"
    _, rules = validation_sweeps(probabilities, val, settings, [2])
    assert list(rules.rule) == ["expected_dice", "expected_dice+remove_small:2", "expected_dice+keep_largest"]
    assert rules.threshold.isna().all()
    assert rules.case_dice.iloc[1] == pytest.approx(1.0)
