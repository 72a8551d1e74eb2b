"""btseg.scoring.metrics against independent, well-known implementations, to 1e-6.

- scikit-learn (f1_score, jaccard_score, precision_score, recall_score, confusion_matrix) for the
  overlap scores and specificity, per slice, per case (the stacked volume) and pooled;
- MONAI (compute_hausdorff_distance(percentile=95), DiceMetric with and without ignore_empty) for
  HD95 in 2D and 3D and the per-case Dice conventions.
Both are test-only extras (`pip install -e '.[test]'`). Where a reference has no value (MONAI's
HD95 is inf/NaN with an empty mask) our stated convention is checked instead.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from btseg.scoring.metrics import dice_conventions, per_case_metrics, per_slice_metrics, summary

sklearn_metrics = pytest.importorskip("sklearn.metrics")
monai_metrics = pytest.importorskip("monai.metrics")
torch = pytest.importorskip("torch")

TOLERANCE = 1e-6
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI 1.6 warns about its own internal call


def _random_masks(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Blobby masks from smoothed noise, densities from empty to almost full, plus single pixels."""
    noise = ndimage.gaussian_filter(rng.random((n, size, size)), sigma=(0, 1.5, 1.5))
    levels = rng.choice([1.1, 0.62, 0.55, 0.5, 0.45, 0.0], size=(n, 1, 1))  # 1.1: empty; 0.0: full
    masks = noise > np.quantile(noise, 0.5) * levels / 0.5
    for i in rng.choice(n, size=n // 8, replace=False):  # single pixels
        masks[i] = False
        masks[i, rng.integers(size), rng.integers(size)] = True
    return masks


@pytest.fixture(scope="module")
def example():
    rng = np.random.default_rng(2024)
    n, size = 64, 16
    prediction, truth = _random_masks(rng, n, size), _random_masks(rng, n, size)
    truth[:6] = False  # tumor-free slices, some with a false alarm
    prediction[:3] = False
    index = pd.DataFrame({"case_id": [f"case_{i % 9}" for i in range(n)], "slice_index": rng.permutation(n)})
    per_slice = per_slice_metrics(prediction, truth, index)
    return prediction, truth, index, per_slice, per_case_metrics(prediction, truth, per_slice)


def _sklearn_scores(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """scikit-learn's scores; our convention where both masks are empty (sklearn's zero_division=1.0 there)."""
    y_pred, y_true = prediction.ravel().astype(int), truth.ravel().astype(int)
    zero_division = 1.0 if not y_pred.any() and not y_true.any() else 0.0
    tn, fp, fn, tp = sklearn_metrics.confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    specificity = 1.0 if zero_division == 1.0 else (tn / (tn + fp) if tn + fp else 0.0)
    kwargs = {"zero_division": zero_division, "labels": [1], "average": "binary"}
    return {"dice": sklearn_metrics.f1_score(y_true, y_pred, **kwargs),
            "iou": sklearn_metrics.jaccard_score(y_true, y_pred, **kwargs),
            "precision": sklearn_metrics.precision_score(y_true, y_pred, **kwargs),
            "recall": sklearn_metrics.recall_score(y_true, y_pred, **kwargs),
            "specificity": specificity}


def _case_rows(index: pd.DataFrame, case_id: str) -> np.ndarray:
    return index[index.case_id == case_id].sort_values("slice_index").index.to_numpy()


def test_example_covers_every_empty_mask_situation(example):
    _, _, _, per_slice, _ = example
    truth_any, predicted_any = per_slice.truth_pixels > 0, per_slice.predicted_pixels > 0
    assert (~truth_any & ~predicted_any).any() and (~truth_any & predicted_any).any() \
        and (truth_any & ~predicted_any).any()
    assert (per_slice.truth_pixels == 1).any() and (per_slice.predicted_pixels == 1).any()


def test_overlap_and_specificity_match_scikit_learn(example):
    prediction, truth, index, per_slice, per_case = example
    for row in per_slice.itertuples():
        expected = _sklearn_scores(prediction[row.Index], truth[row.Index])
        for name, value in expected.items():
            assert getattr(row, name) == pytest.approx(value, abs=TOLERANCE), (row.Index, name)
    for row in per_case.itertuples():
        rows = _case_rows(index, row.case_id)
        expected = _sklearn_scores(prediction[rows], truth[rows])
        for name, value in expected.items():
            assert getattr(row, name) == pytest.approx(value, abs=TOLERANCE), (row.case_id, name)
    pooled = summary(per_slice, per_case)["pooled"]
    for name, value in _sklearn_scores(prediction, truth).items():
        assert pooled[name] == pytest.approx(value, abs=TOLERANCE), name


def _monai_hd95(prediction: np.ndarray, truth: np.ndarray) -> float:
    as_tensor = lambda mask: torch.from_numpy(mask[None, None].astype(np.float32))  # noqa: E731 (B, C, spatial)
    return float(monai_metrics.compute_hausdorff_distance(as_tensor(prediction), as_tensor(truth),
                                                          include_background=True, percentile=95)[0, 0])


def test_hd95_matches_monai_per_slice_and_per_stacked_case(example):
    prediction, truth, index, per_slice, per_case = example
    compared = 0
    for row in per_slice.itertuples():
        p, t = prediction[row.Index], truth[row.Index]
        if p.any() and t.any():
            assert row.hd95_px == pytest.approx(_monai_hd95(p, t), rel=TOLERANCE, abs=TOLERANCE), row.Index
            compared += 1
        elif p.any() or t.any():
            assert row.hd95_px == pytest.approx(np.hypot(*p.shape))  # our convention: the image diagonal
        else:
            assert row.hd95_px == 0.0
    assert compared >= 30
    for row in per_case.itertuples():
        rows = _case_rows(index, row.case_id)
        assert row.hd95_px == pytest.approx(_monai_hd95(prediction[rows], truth[rows]), rel=TOLERANCE,
                                            abs=TOLERANCE), row.case_id


def test_hd95_matches_monai_with_anisotropic_spacing():
    from btseg.scoring.metrics import hd95

    rng = np.random.default_rng(3)
    for _ in range(5):
        prediction, truth = _random_masks(rng, 4, 12), _random_masks(rng, 4, 12)
        prediction[0, 5, 5] = truth[1, 6, 6] = True  # neither volume empty
        expected = monai_metrics.compute_hausdorff_distance(
            torch.from_numpy(prediction[None, None].astype(np.float32)),
            torch.from_numpy(truth[None, None].astype(np.float32)),
            include_background=True, percentile=95, spacing=[3.0, 0.9, 0.9])[0, 0]
        assert hd95(prediction, truth, spacing=(3.0, 0.9, 0.9)) == pytest.approx(float(expected), rel=TOLERANCE)


def test_per_case_dice_conventions_match_monai_dicemetric(example):
    prediction, truth, index, _, per_case = example
    per_case = per_case.copy()
    empty_truth_case = per_case.case_id.iloc[0]  # make one case tumor-free with a false alarm, one empty/empty
    both_empty_case = per_case.case_id.iloc[1]
    truth = truth.copy()
    prediction = prediction.copy()
    truth[_case_rows(index, empty_truth_case)] = False
    truth[_case_rows(index, both_empty_case)] = False
    prediction[_case_rows(index, both_empty_case)] = False
    prediction[_case_rows(index, empty_truth_case)[0], 0, 0] = True
    per_case = per_case_metrics(prediction, truth, per_slice_metrics(prediction, truth, index))
    conventions = dice_conventions(per_case)
    volumes = [(prediction[_case_rows(index, c)], truth[_case_rows(index, c)]) for c in per_case.case_id]
    # MONAI wants every case the same shape: pad each stacked volume to the deepest one (empty slices
    # change no count)
    depth = max(len(p) for p, _ in volumes)
    pad = lambda mask: np.pad(mask, ((0, depth - len(mask)), (0, 0), (0, 0)))  # noqa: E731
    y_pred = torch.from_numpy(np.stack([pad(p) for p, _ in volumes])[:, None].astype(np.float32))
    y = torch.from_numpy(np.stack([pad(t) for _, t in volumes])[:, None].astype(np.float32))
    for ignore_empty, ours in ((True, conventions["monai_ignore_empty"]), (False, conventions["ours"])):
        metric = monai_metrics.DiceMetric(include_background=True, reduction="mean", ignore_empty=ignore_empty)
        metric(y_pred=y_pred, y=y)
        assert ours == pytest.approx(float(metric.aggregate()), abs=TOLERANCE), ignore_empty
    # and case by case, MONAI without ignore_empty is our convention
    per_case_monai = monai_metrics.compute_dice(y_pred, y, include_background=True, ignore_empty=False)[:, 0].numpy()
    np.testing.assert_allclose(per_case.dice, per_case_monai, atol=TOLERANCE)
