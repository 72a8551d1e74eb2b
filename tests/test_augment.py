"""Training augmentation, on the CPU (albumentations, per slice) and batched in torch
(stages/device_augment.py, run here on the CPU as it runs on a GPU): image and masks move
together, intensity touches the image only, draws are seeded per (seed, epoch, batch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from btseg.config import parse_params
from btseg.errors import PipelineError
from btseg.training.augment import Augmenter
from btseg.training.device_augment import DeviceAugmenter
from tests.conftest import default_params


def augment_params(**overrides):
    raw = default_params()
    raw["train"]["augment"].update({"hflip": 0.0, **overrides})
    return parse_params(raw).train.augment


def batch(seed: int = 0, count: int = 4, size: int = 32):
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, 2, size, size), np.float32)
    masks[:, 0, 8:20, 5:14] = 1  # an off-centre box: any flip or shift moves it
    masks[:, 1, 10:12, 6:9] = 1
    images = np.concatenate([masks[:, :1] * 3.0 - 1.0, rng.normal(0, 1, (count, 1, size, size))],
                            axis=1).astype(np.float32)
    return images, masks


def run(backend: str, params, images, masks, seed=1, epoch=1, number=1):
    """One backend's augmentation of a numpy batch, back as numpy."""
    if backend == "cpu":
        return Augmenter(params, seed)(images, masks, epoch, number)
    out = DeviceAugmenter(params, seed)(torch.from_numpy(images), torch.from_numpy(masks), epoch, number)
    return out[0].numpy(), out[1].numpy()


BACKENDS = ["cpu", "device"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("overrides", [{"hflip": 1.0}, {"vflip": 1.0}, {"affine": 1.0}, {"elastic": 1.0},
                                       {"affine": 1.0, "elastic": 1.0, "hflip": 0.5}])
def test_geometric_transforms_move_image_and_masks_together(backend, overrides):
    images, masks = batch()
    out_images, out_masks = run(backend, augment_params(**overrides), images, masks)
    assert not np.array_equal(out_masks, masks)  # something moved
    assert set(np.unique(out_masks)) <= {0.0, 1.0}  # masks stay binary
    # channel 0 of the image is 2 inside the first mask and -1 outside: it must still agree
    inside = out_images[:, 0] > 0.5
    agreement = (inside == out_masks[:, 0].astype(bool)).mean()
    assert agreement > 0.97, agreement  # only interpolated border pixels may differ


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("overrides", [{"brightness_contrast": 1.0}, {"gamma": 1.0}, {"noise": 1.0}])
def test_intensity_transforms_change_the_image_not_the_masks_nor_its_range_much(backend, overrides):
    images, masks = batch()
    out_images, out_masks = run(backend, augment_params(**overrides), images, masks)
    np.testing.assert_array_equal(out_masks, masks)
    assert not np.allclose(out_images, images)
    assert np.isfinite(out_images).all() and out_images.min() < 0  # z-scored values are not clipped to [0, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_flips_are_exact_reversals(backend):
    images, masks = batch()
    out_images, out_masks = run(backend, augment_params(hflip=1.0, vflip=1.0), images, masks)
    np.testing.assert_array_equal(out_images, images[:, :, ::-1, ::-1])
    np.testing.assert_array_equal(out_masks, masks[:, :, ::-1, ::-1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_augmentation_is_seeded_per_epoch_and_batch_and_off_when_all_probabilities_are_zero(backend):
    images, masks = batch()
    params = augment_params(hflip=0.5, affine=0.5, noise=0.5)
    first = run(backend, params, images, masks, seed=3, epoch=2, number=5)
    again = run(backend, params, images, masks, seed=3, epoch=2, number=5)
    other_epoch = run(backend, params, images, masks, seed=3, epoch=3, number=5)
    other_batch = run(backend, params, images, masks, seed=3, epoch=2, number=6)
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[0], other_epoch[0])
    assert not np.array_equal(first[0], other_batch[0])
    assert not Augmenter(augment_params(), seed=3).active
    assert not DeviceAugmenter(augment_params(), seed=3).active


def test_device_flip_probability_is_per_slice():
    images, masks = batch(count=400, size=16)
    out, _ = run("device", augment_params(hflip=0.3), images, masks)
    flipped = np.array([np.array_equal(o, i[:, :, ::-1]) for o, i in zip(out, images)])
    assert abs(flipped.mean() - 0.3) < 0.07  # binomial(400, 0.3): sd 0.023


def _sample(grid_args, images):
    augmenter = DeviceAugmenter(augment_params(affine=1.0), seed=0)
    count = len(images)
    angle = torch.full((count,), grid_args[0], dtype=torch.float32)
    scale = torch.full((count,), grid_args[1], dtype=torch.float32)
    shift = torch.tensor([grid_args[2]] * count, dtype=torch.float32)
    grid = augmenter._grid(images.shape, torch.ones(count, dtype=torch.bool), angle, scale, shift,
                           torch.zeros(count, dtype=torch.bool), None)
    return torch.nn.functional.grid_sample(torch.from_numpy(images), grid, mode="nearest", align_corners=False).numpy()


def test_device_affine_rotation_shift_and_scale_match_hand_computed_moves():
    images, _ = batch(count=1)
    # a positive quarter turn moves pixel centres onto pixel centres: exactly numpy's rot90
    quarter = _sample((math.pi / 2, 1.0, (0.0, 0.0)), images)
    # counter-clockwise, as albumentations
    np.testing.assert_allclose(quarter, np.rot90(images, k=1, axes=(2, 3)), atol=1e-6)
    # a shift of 0.25 of 32 pixels moves the content 8 pixels right and down, zeros come in
    shifted = _sample((0.0, 1.0, (0.25, 0.25)), images)
    expected = np.zeros_like(images)
    expected[:, :, 8:, 8:] = images[:, :, :-8, :-8]
    np.testing.assert_allclose(shifted, expected, atol=1e-6)
    # scale 2 about the centre: output pixel (16 + d) shows input pixel (16 + d / 2)
    zoomed = _sample((0.0, 2.0, (0.0, 0.0)), images)
    np.testing.assert_allclose(zoomed[0, :, 16 + 6, 16 + 4], images[0, :, 16 + 3, 16 + 2], atol=1e-6)


def test_device_brightness_contrast_is_affine_on_the_unit_range_within_its_limit():
    images, masks = batch(count=8)
    limit = 0.2
    out, _ = run("device", augment_params(brightness_contrast=1.0, brightness_contrast_limit=limit), images, masks)
    for before, after in zip(images, out):
        low, span = before.min(), before.max() - before.min()
        x, y = ((before - low) / span).ravel(), ((after - low) / span).ravel()
        kept = (y > 1e-4) & (y < 1 - 1e-4)  # not clipped
        alpha, beta = np.polyfit(x[kept], y[kept], 1)
        np.testing.assert_allclose(y[kept], alpha * x[kept] + beta, atol=1e-5)
        assert 1 - limit - 1e-6 <= alpha <= 1 + limit + 1e-6 and -limit - 1e-6 <= beta <= limit + 1e-6


def test_device_gamma_is_a_power_in_range_and_noise_has_the_asked_spread():
    images, masks = batch(count=8, size=64)
    out, _ = run("device", augment_params(gamma=1.0), images, masks)
    for before, after in zip(images, out):
        low, span = before.min(), before.max() - before.min()
        x, y = ((before - low) / span).ravel(), ((after - low) / span).ravel()
        inner = (x > 0.05) & (x < 0.95)
        power = np.log(y[inner]) / np.log(x[inner])
        assert power.std() < 1e-3 and 0.8 - 1e-4 <= power.mean() <= 1.2 + 1e-4
    out, _ = run("device", augment_params(noise=1.0, noise_std=0.2), images, masks)
    for before, after in zip(images, out):
        span = before.max() - before.min()
        x = (before - before.min()) / span
        inner = (x > 0.2) & (x < 0.8)  # far from the clipping bounds
        spread = ((after - before) / span)[inner].std()
        assert abs(spread - 0.2 / 4) < 0.005, spread


CHANNELS = ("t1", "flair", "t1ce")  # fill_from flair: the middle one, so its column moves in the choice


def replaced_channels(out: np.ndarray, images: np.ndarray, source: int) -> np.ndarray:
    """Bool (B, C): which channels of each slice now hold the source channel; fails if a channel holds
    anything but its own values or the source's."""
    copies = np.array([[np.array_equal(o[c], i[source]) for c in range(i.shape[0])] for o, i in zip(out, images)])
    kept = np.array([[np.array_equal(o[c], i[c]) for c in range(i.shape[0])] for o, i in zip(out, images)])
    assert (copies | kept).all()
    copies[:, source] = False
    return copies


@pytest.mark.parametrize("backend", BACKENDS)
def test_fill_copies_the_source_channel_over_a_nonempty_set_of_the_others_each_set_alike(backend):
    rng = np.random.default_rng(4)
    images = rng.normal(0, 1, (600, 3, 8, 8)).astype(np.float32)
    masks = (rng.random((600, 1, 8, 8)) < 0.3).astype(np.float32)
    params = augment_params(fill=1.0, fill_from="flair")
    if backend == "cpu":
        out, out_masks = Augmenter(params, 1, CHANNELS)(images, masks, 0, 0)
    else:
        out, out_masks = (t.numpy() for t in DeviceAugmenter(params, 1, CHANNELS)(
            torch.from_numpy(images), torch.from_numpy(masks), 0, 0))
    np.testing.assert_array_equal(out_masks, masks)
    np.testing.assert_array_equal(out[:, 1], images[:, 1])  # the source itself stays
    chosen = replaced_channels(out, images, source=1)
    assert chosen.any(axis=1).all()  # fill 1.0: every slice loses at least one sequence
    sets = {(True, False): 0, (False, True): 0, (True, True): 0}
    for row in chosen[:, [0, 2]]:
        sets[tuple(row.tolist())] += 1
    for count in sets.values():  # three sets, each 1/3: binomial(600, 1/3) sd 0.019
        assert abs(count / 600 - 1 / 3) < 0.07, sets


@pytest.mark.parametrize("backend", BACKENDS)
def test_fill_probability_is_per_slice_and_zero_leaves_every_channel(backend):
    rng = np.random.default_rng(5)
    images = rng.normal(0, 1, (500, 3, 4, 4)).astype(np.float32)
    masks = np.zeros((500, 1, 4, 4), np.float32)
    for probability in (0.3, 0.0):
        params = augment_params(fill=probability, fill_from="flair")
        if backend == "cpu":
            out = Augmenter(params, 2, CHANNELS)(images, masks, 3, 7)[0]
        else:
            out = DeviceAugmenter(params, 2, CHANNELS)(torch.from_numpy(images), torch.from_numpy(masks), 3, 7)[0]
            out = out.numpy()
        filled = replaced_channels(out, images, source=1).any(axis=1).mean()
        assert abs(filled - probability) < 0.07, (probability, filled)  # binomial(500, 0.3): sd 0.02


@pytest.mark.parametrize("backend", BACKENDS)
def test_fill_replaces_the_same_sequences_at_every_2_5d_offset_from_that_offset(backend):
    """2.5D slices hold offsets -k..k, each with the C channels together (stack_neighbours)."""
    rng = np.random.default_rng(6)
    images = rng.normal(0, 1, (64, 2 * 3, 4, 4)).astype(np.float32)
    masks = np.zeros((64, 1, 4, 4), np.float32)
    params = augment_params(fill=1.0, fill_from="flair")
    if backend == "cpu":
        out = Augmenter(params, 3, CHANNELS)(images, masks, 0, 0)[0]
    else:
        out = DeviceAugmenter(params, 3, CHANNELS)(torch.from_numpy(images), torch.from_numpy(masks), 0, 0)[0].numpy()
    first = replaced_channels(out[:, :3], images[:, :3], source=1)
    second = replaced_channels(out[:, 3:], images[:, 3:], source=1)
    np.testing.assert_array_equal(first, second)
    assert first.any(axis=1).all()


def test_fill_is_off_for_a_dataset_without_the_channel_and_a_name_no_dataset_has_is_refused():
    params = augment_params(fill=1.0, fill_from="flair")
    assert not Augmenter(params, 0, ("grey",)).active and not DeviceAugmenter(params, 0, ("grey",)).active
    assert not Augmenter(params, 0, ("flair",)).active  # one channel: nothing to fill
    assert Augmenter(params, 0, CHANNELS).active and DeviceAugmenter(params, 0, CHANNELS).active
    with pytest.raises(PipelineError, match="train.augment.fill_from: 'flare' is no dataset's input channel"):
        augment_params(fill=0.2, fill_from="flare")
    augment_params(fill=0.0, fill_from="flare")  # off: the name is not looked at
