"""Training augmentation: image and masks move together, intensity touches the image only."""

from __future__ import annotations

import numpy as np
import pytest

from stages.augment import Augmenter
from tests.conftest import default_params
from stages.config import parse_params


def augment_params(**overrides):
    raw = default_params()
    raw["train"]["augment"].update({"hflip": 0.0, **overrides})
    return parse_params(raw).train.augment


def batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 2, 32, 32), np.float32)
    masks[:, 0, 8:20, 5:14] = 1  # an off-centre box: any flip or shift moves it
    masks[:, 1, 10:12, 6:9] = 1
    images = np.concatenate([masks[:, :1] * 3.0 - 1.0, rng.normal(0, 1, (4, 1, 32, 32))], axis=1).astype(np.float32)
    return images, masks


@pytest.mark.parametrize("overrides", [{"hflip": 1.0}, {"vflip": 1.0}, {"affine": 1.0}, {"elastic": 1.0}])
def test_geometric_transforms_move_image_and_masks_together(overrides):
    images, masks = batch()
    out_images, out_masks = Augmenter(augment_params(**overrides), seed=1).for_epoch(1)(images, masks)
    assert not np.array_equal(out_masks, masks)  # something moved
    assert set(np.unique(out_masks)) <= {0.0, 1.0}  # masks stay binary
    # channel 0 of the image is 2 inside the first mask and -1 outside: it must still agree
    inside = out_images[:, 0] > 0.5
    agreement = (inside == out_masks[:, 0].astype(bool)).mean()
    assert agreement > 0.97, agreement  # only interpolated border pixels may differ


@pytest.mark.parametrize("overrides", [{"brightness_contrast": 1.0}, {"gamma": 1.0}, {"noise": 1.0}])
def test_intensity_transforms_change_the_image_not_the_masks_nor_its_range_much(overrides):
    images, masks = batch()
    out_images, out_masks = Augmenter(augment_params(**overrides), seed=1).for_epoch(1)(images, masks)
    np.testing.assert_array_equal(out_masks, masks)
    assert not np.allclose(out_images, images)
    assert np.isfinite(out_images).all() and out_images.min() < 0  # z-scored values are not clipped to [0, 1]


def test_augmentation_is_seeded_per_epoch_and_off_when_all_probabilities_are_zero():
    images, masks = batch()
    params = augment_params(hflip=0.5, affine=0.5, noise=0.5)
    first = Augmenter(params, seed=3).for_epoch(2)(images, masks)
    again = Augmenter(params, seed=3).for_epoch(2)(images, masks)
    other = Augmenter(params, seed=3).for_epoch(3)(images, masks)
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[0], other[0])
    assert not Augmenter(augment_params(), seed=3).active
