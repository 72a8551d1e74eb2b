"""btseg.preprocessing.image: normalisation, fitting to size, targets, slice selection, patient-level split."""

from __future__ import annotations

import numpy as np
import pytest

from btseg.preprocessing.image import (
    brain_box,
    brain_mask,
    build_target,
    fit_to_size,
    normalize,
    select_slices,
    split_cases,
)


# One-slice views of the case-level functions, for the hand-computed single-image cases below.
def zscore_over_brain(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> z-scored over the pixels where any channel is non-zero."""
    brain = np.any(image != 0, axis=0)[None]
    return normalize(image[None].astype(np.float32), brain, "zscore", (0.0, 100.0))[0]


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    return fit_to_size(np.asarray(mask), size, "resize", is_mask=True)


def whole_tumor(mask: np.ndarray) -> np.ndarray:
    names = tuple(f"r{i}" for i in range(len(mask)))
    return build_target(np.asarray(mask)[None], names, {"whole_tumor": list(names)})[0]

# --- zscore_over_brain ----------------------------------------------------------------------


def test_zscore_hand_computed():
    # 6x6 image, brain = the inner 4x4 (16 pixels, the least that is normalised).
    # channel 0 over the brain: 8 pixels of 0 and 8 of 2 -> mean 1, std 1 -> -1 and +1;
    #   its 0s are brain (channel 1 is non-zero there), so they become -1, not background.
    # channel 1 over the brain: constant 5 -> std 0 -> 0.
    image = np.zeros((2, 6, 6), np.float64)
    image[0, 1:5, 1:5] = np.array([[0, 2, 0, 2]] * 4)
    image[1, 1:5, 1:5] = 5.0
    out = zscore_over_brain(image)

    expected = np.zeros((2, 6, 6), np.float32)
    expected[0, 1:5, 1:5] = np.array([[-1, 1, -1, 1]] * 4)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


def test_zscore_random_image_has_mean_zero_std_one_over_brain():
    rng = np.random.default_rng(0)
    brain = np.zeros((32, 32), bool)
    brain[6:26, 4:30] = True
    brain[10:14, 10:14] = False  # a hole of background inside
    scales, offsets = np.array([1.0, 50.0, 0.01, 300.0]), np.array([0.0, 1000.0, 5.0, -2.0])
    image = ((rng.normal(size=(4, 32, 32)) * scales[:, None, None] + offsets[:, None, None]) * brain).astype(np.float32)

    out = zscore_over_brain(image)

    assert out.shape == image.shape and out.dtype == np.float32
    for channel in out:
        assert channel[brain].mean() == pytest.approx(0.0, abs=1e-5)
        assert channel[brain].std() == pytest.approx(1.0, abs=1e-4)
        assert np.all(channel[~brain] == 0)


def test_zscore_integer_image():
    # BraTS .h5 slices may come as integers; the result is the same as for floats
    image = np.zeros((1, 5, 5), np.int16)
    image[0, :4, :4] = np.arange(1, 17).reshape(4, 4)
    np.testing.assert_allclose(zscore_over_brain(image), zscore_over_brain(image.astype(np.float64)), atol=1e-6)


@pytest.mark.parametrize("brain_pixels", [0, 1, 15])
def test_zscore_near_empty_brain_gives_zeros(brain_pixels):
    image = np.zeros((2, 8, 8), np.float32)
    image[0].flat[:brain_pixels] = np.arange(1, brain_pixels + 1)
    out = zscore_over_brain(image)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.zeros((2, 8, 8), np.float32))


def test_zscore_sixteen_brain_pixels_are_normalised():
    image = np.zeros((1, 8, 8), np.float32)
    image[0].flat[:16] = [1, 3] * 8  # mean 2, std 1
    out = zscore_over_brain(image)
    np.testing.assert_array_equal(out[0].flat[:16], [-1, 1] * 8)
    assert np.all(out[0].flat[16:] == 0)


def test_zscore_constant_channel_becomes_zero():
    image = np.zeros((3, 6, 6), np.float32)
    image[:, 1:5, 1:5] = 7.0  # every channel constant over the brain
    np.testing.assert_array_equal(zscore_over_brain(image), np.zeros((3, 6, 6), np.float32))


def test_zscore_does_not_modify_its_input():
    image = np.zeros((1, 6, 6), np.float32)
    image[0, 1:5, 1:5] = np.arange(16).reshape(4, 4) + 1
    before = image.copy()
    zscore_over_brain(image)
    np.testing.assert_array_equal(image, before)


# --- resize_mask ----------------------------------------------------------------------------


def test_resize_mask_half_coverage_rule():
    # 4x4 -> 2x2: each output pixel is one 2x2 block; tumor if at least 2 of its 4 pixels were.
    mask = np.array(
        [
            [  # blocks: top-left 4/4 -> 1, top-right 2/4 -> 1, bottom-left 1/4 -> 0, bottom-right 3/4 -> 1
                [1, 1, 1, 0],
                [1, 1, 1, 0],
                [0, 0, 1, 1],
                [1, 0, 0, 1],
            ],
            [  # blocks: 0/4 -> 0, 2/4 on a diagonal -> 1, 1/4 -> 0, 4/4 -> 1
                [0, 0, 1, 0],
                [0, 0, 0, 1],
                [0, 0, 1, 1],
                [0, 1, 1, 1],
            ],
        ],
        dtype=np.uint8,
    )
    out = resize_mask(mask, 2)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[[1, 1], [0, 1]], [[0, 1], [0, 1]]])


@pytest.mark.parametrize("dtype", [np.uint8, bool, np.int64, np.float32])
def test_resize_mask_accepts_any_binary_dtype(dtype):
    mask = np.zeros((1, 4, 4), dtype)
    mask[0, :2, :2] = 1
    np.testing.assert_array_equal(resize_mask(mask, 2), [[[1, 0], [0, 0]]])


def test_resize_mask_same_size_is_identity():
    mask = (np.random.default_rng(0).random((3, 8, 8)) < 0.4).astype(np.uint8)
    np.testing.assert_array_equal(resize_mask(mask, 8), mask)


def test_resize_mask_upsampling_stays_binary():
    mask = np.array([[[1, 0], [0, 0]]], np.uint8)
    out = resize_mask(mask, 4)
    assert out.shape == (1, 4, 4) and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 1}
    assert out[0, 0, 0] == 1 and out[0, 3, 3] == 0


# --- whole_tumor ----------------------------------------------------------------------------


def test_whole_tumor_is_the_union_of_sub_regions():
    mask = np.array(
        [
            [[1, 0, 0], [0, 0, 0]],  # necrotic core
            [[1, 1, 0], [0, 0, 0]],  # edema, overlapping the core
            [[0, 0, 0], [0, 0, 4]],  # enhancing, stored as label 4 in some exports
        ],
        dtype=np.uint8,
    )
    out = whole_tumor(mask)
    assert out.shape == (1, 2, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[[1, 1, 0], [0, 0, 1]]])


def test_whole_tumor_empty_and_single_channel():
    np.testing.assert_array_equal(whole_tumor(np.zeros((3, 2, 2))), np.zeros((1, 2, 2), np.uint8))
    single = np.array([[[0.0, 1.0], [1.0, 0.0]]])
    np.testing.assert_array_equal(whole_tumor(single), single.astype(np.uint8))


# --- split_cases ----------------------------------------------------------------------------

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
CASES = [f"volume_{i}" for i in range(1, 21)]


def test_split_cases_counts_for_twenty_cases():
    assignment = split_cases(CASES, FRACTIONS, seed=7)
    counts = {name: list(assignment.values()).count(name) for name in FRACTIONS}
    assert counts == {"train": 14, "val": 3, "test": 3}


@pytest.mark.parametrize("seed", [0, 7, 12345])
def test_split_cases_every_case_in_exactly_one_split(seed):
    # slice-level ids: each case repeated; a case must never land in two splits
    case_ids = [case for case in CASES for _ in range(5)]
    assignment = split_cases(case_ids, FRACTIONS, seed=seed)
    assert sorted(assignment) == sorted(CASES)
    assert set(assignment.values()) == set(FRACTIONS)


def test_split_cases_deterministic_per_seed():
    assert split_cases(CASES, FRACTIONS, seed=7) == split_cases(CASES, FRACTIONS, seed=7)
    assert split_cases(CASES, FRACTIONS, seed=7) != split_cases(CASES, FRACTIONS, seed=8)


def test_split_cases_independent_of_input_order():
    shuffled = list(np.random.default_rng(0).permutation(CASES))
    assert split_cases(shuffled, FRACTIONS, seed=7) == split_cases(CASES, FRACTIONS, seed=7)


@pytest.mark.parametrize(
    "n_cases, expected",
    [
        (3, {"train": 1, "val": 1, "test": 1}),  # 0.45 rounds to 0, raised to the minimum of 1
        (24, {"train": 16, "val": 4, "test": 4}),  # 3.6 rounds to 4; train takes the rest
    ],
)
def test_split_cases_counts(n_cases, expected):
    assignment = split_cases([f"c{i}" for i in range(n_cases)], FRACTIONS, seed=0)
    assert {name: list(assignment.values()).count(name) for name in FRACTIONS} == expected


@pytest.mark.parametrize(
    "case_ids, fractions",
    [
        ([], FRACTIONS),
        (["a"], FRACTIONS),
        (["a", "b"], FRACTIONS),
        (["a", "a", "b", "b"], FRACTIONS),  # four slices but two cases
    ],
    ids=["none", "one", "two", "two-cases-four-slices"],
)
def test_split_cases_too_few_cases_raises(case_ids, fractions):
    with pytest.raises(ValueError, match=r"cases (cannot fill|are too few)"):
        split_cases(case_ids, fractions, seed=0)


def test_split_cases_rounding_that_empties_a_split_borrows_from_the_largest():
    # val and test round up to 2 cases each and would leave train none: every split still gets one
    assignment = split_cases(["a", "b", "c", "d"], {"train": 0.2, "val": 0.4, "test": 0.4}, seed=0)
    assert sorted(assignment.values()).count("train") == 1 and set(assignment.values()) == {"train", "val", "test"}


# --- case-level options -----------------------------------------------------------------------

def test_normalize_percentile_clips_and_scales_over_the_brain():
    image = np.zeros((1, 1, 1, 101), np.float32)
    image[0, 0, 0, 1:] = np.arange(1, 101)  # brain values 1..100, background one 0
    brain = image[:, 0] > 0
    out = normalize(image, brain, "percentile", (10.0, 90.0))
    low, high = np.percentile(np.arange(1, 101), [10, 90])  # 10.9, 90.1
    expected = (np.clip(np.arange(1, 101), low, high) - low) / (high - low)
    np.testing.assert_allclose(out[0, 0, 0, 1:], expected, atol=1e-6)
    assert out[0, 0, 0, 0] == 0 and out.min() == 0 and out.max() == pytest.approx(1)


def test_normalize_minmax_and_zscore_use_all_slices_of_the_case():
    image = np.zeros((2, 1, 4, 4), np.float32)
    image[0, 0, :2, :2] = 10  # slice 0: brain values 10
    image[1, 0, :2, :2] = 30  # slice 1: brain values 30
    image[:, 0, 2:, 2:] = 20  # 16 more brain pixels valued 20 (enough brain to normalise)
    brain = image[:, 0] > 0
    minmax = normalize(image, brain, "minmax", (0, 100))
    assert minmax[0, 0, 0, 0] == 0 and minmax[1, 0, 0, 0] == 1 and minmax[0, 0, 3, 3] == pytest.approx(0.5)
    zscore = normalize(image, brain, "zscore", (0, 100))
    assert zscore[brain[:, None].repeat(1, 1)].mean() == pytest.approx(0, abs=1e-6)
    assert zscore[0, 0, 0, 0] == pytest.approx(-zscore[1, 0, 0, 0])  # 10 and 30 sit symmetric around 20


def test_brain_mask_ignores_dim_background():
    image = np.full((1, 1, 4, 4), 1.0, np.float32)  # JPEG-like background noise of 1 (out of 255)
    image[0, 0, 1:3, 1:3] = 200
    brain = brain_mask(image, threshold=0.02)
    assert brain.sum() == 4 and brain[0, 1:3, 1:3].all()


def test_brain_box_covers_every_slice_with_margin():
    brain = np.zeros((2, 10, 10), bool)
    brain[0, 2:4, 3:5] = True
    brain[1, 5:7, 1:2] = True
    rows, cols = brain_box(brain, margin=1)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (1, 8, 0, 6)


def test_letterbox_keeps_aspect_and_pads():
    planes = np.ones((1, 20, 40), np.float32)
    out = fit_to_size(planes, 8, "letterbox", is_mask=False)
    assert out.shape == (1, 8, 8)
    np.testing.assert_array_equal(out[0].sum(axis=1) > 0, [0, 0, 1, 1, 1, 1, 0, 0])  # 8 x 4 content, centred


def test_build_target_regions_wt_tc_et():
    regions = np.zeros((1, 3, 1, 3), np.uint8)  # sub-regions: necrotic, edema, enhancing; pixels 0..2
    regions[0, 0, 0, 0] = 1
    regions[0, 1, 0, 1] = 1
    regions[0, 2, 0, 2] = 1
    out = build_target(regions, ("necrotic", "edema", "enhancing"),
                       {"WT": ["necrotic", "edema", "enhancing"], "TC": ["necrotic", "enhancing"], "ET": ["enhancing"]})
    np.testing.assert_array_equal(out[0, :, 0], [[1, 1, 1], [1, 0, 1], [0, 0, 1]])


def test_select_slices_keeps_tumor_and_a_fraction_of_tumor_free():
    has_tumor = np.array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0], bool)
    brain = np.array([100] * 9 + [0])  # the last slice has no brain
    keep = select_slices(has_tumor, brain, 0.5, skip_no_brain=True, rng=np.random.default_rng(0))
    assert {0, 5} <= set(keep) and 9 not in keep
    assert len(keep) == 2 + 4  # half of the 7 tumor-free slices with brain, rounded half up
    everything = select_slices(has_tumor, brain, 1.0, skip_no_brain=False, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(everything, np.arange(10))


def test_split_cases_stratified_spreads_tumor_free_patients():
    cases = [f"c{i}" for i in range(20)]
    strata = {c: i < 10 for i, c in enumerate(cases)}  # half the patients have tumor
    assignment = split_cases(cases, {"train": 0.6, "val": 0.2, "test": 0.2}, 3, strata)
    for split, expected in (("train", 6), ("val", 2), ("test", 2)):
        members = [c for c, s in assignment.items() if s == split]
        assert sum(strata[c] for c in members) == expected and sum(not strata[c] for c in members) == expected


def test_neighbours_stack_the_slices_around_each_slice_as_channels():
    from btseg.preprocessing.image import stack_neighbours

    images = np.arange(4 * 2, dtype=np.float32).reshape(4, 2, 1, 1)  # slice s, channel c = 2s + c
    stacked = stack_neighbours(images, 1)
    assert stacked.shape == (4, 6, 1, 1)
    # slice 0: offsets -1 (clamped to slice 0), 0, +1; each offset's two channels together
    np.testing.assert_array_equal(stacked[0, :, 0, 0], [0, 1, 0, 1, 2, 3])
    np.testing.assert_array_equal(stacked[2, :, 0, 0], [2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(stacked[3, :, 0, 0], [4, 5, 6, 7, 6, 7])
    assert stack_neighbours(images, 0) is images


@pytest.mark.slow
def test_neighbours_reach_the_slices_arrays_and_training(tmp_path, params_dict):
    import subprocess

    import yaml

    from btseg.preprocessing.slices import load_split
    from tests.conftest import stage_argv

    params_dict["preprocess"]["neighbours"] = 1
    params_dict["data"]["datasets"] = ["brats2020_nifti"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict, sort_keys=False))
    for stage in ("stages.download", "stages.preprocess"):
        result = subprocess.run(stage_argv(stage, "--dataset", "brats2020_nifti"), cwd=tmp_path, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    test = load_split(tmp_path / "data/slices/brats2020_nifti", "test")
    c = len(test.meta["channels"])
    assert test.images.shape[1] == 3 * c and test.meta["geometry"]["neighbours"] == 1
    # within a case, the middle block of slice s+1 is the last block of slice s (its next neighbour)
    rows = test.index[test.index.case_id == test.index.case_id[0]].sort_values("slice_index").row.to_numpy()
    np.testing.assert_array_equal(test.images[rows[1], c:2 * c], test.images[rows[0], 2 * c:])
