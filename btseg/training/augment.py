"""Training augmentation with albumentations, built from params.yaml train.augment.

Geometric transforms (flips, affine, elastic) move image and masks together; intensity
transforms (brightness/contrast, gamma, noise) touch the image only. Channel filling (`fill`) copies
one input channel over a random non-empty set of the others, as an archive fills a missing
sequence, so a multi-sequence model still works on the cases that lack some. albumentations expects
float images in [0, 1] for intensity work and clips to that range, while our slices are
z-scored, so each slice is rescaled to [0, 1] for those transforms and mapped back after.
Seeded per (epoch, batch): the same seed gives the same augmented batches, also after a resume
or with another number of loader processes. btseg/training/device_augment.py does the same on the GPU.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch

from btseg.config import AugmentParams

TRANSFORMS = ("hflip", "vflip", "affine", "brightness_contrast", "gamma", "noise", "elastic", "fill")  # probabilities


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """The random seed of one batch's augmentation, shared by the CPU and the device augmenter."""
    return ((seed * 100_003 + epoch) * 10_007 + batch) % 2**31


def fill_source(params: AugmentParams, channels: tuple[str, ...]) -> int | None:
    """Index of train.augment.fill_from among the slices' channel names; None when filling is off, this
    dataset lacks that channel (params.yaml's check makes sure some dataset has it) or has no other."""
    if params.fill == 0 or params.fill_from not in channels or len(channels) < 2:
        return None
    return channels.index(params.fill_from)


def any_active(params: AugmentParams, source: int | None) -> bool:
    """Whether an augmenter has anything to do, `source` from fill_source."""
    return source is not None or any(getattr(params, name) > 0 for name in TRANSFORMS if name != "fill")


def fill_choice(filled: np.ndarray | torch.Tensor, subset: np.ndarray | torch.Tensor, source: int,
                count: int) -> np.ndarray | torch.Tensor:
    """Which channels each slice replaces, bool (B, count): none where `filled` is False, else the
    channels other than `source` picked by the bits of `subset` (an integer in 1 .. 2**(count-1) - 1
    per slice: every non-empty set of them equally likely)."""
    xp = torch if isinstance(filled, torch.Tensor) else np
    columns = [filled & ((subset >> bit) & 1 == 1) for bit in range(count - 1)]
    columns.insert(source, xp.zeros_like(filled))  # the copied channel itself stays
    return xp.stack(columns, 1)


def fill_channels(images: np.ndarray | torch.Tensor, replace: np.ndarray | torch.Tensor,
                  source: int) -> np.ndarray | torch.Tensor:
    """Images (B, O * C, H, W) (O = 1, or the 2.5D offsets, each holding the C channels) with channel c
    of every offset replaced by channel `source` of the same offset where replace (B, C) is True."""
    b, total, h, w = images.shape
    count = replace.shape[1]
    grouped = images.reshape(b, total // count, count, h, w)
    where = torch.where if isinstance(images, torch.Tensor) else np.where
    return where(replace[:, None, :, None, None], grouped[:, :, source:source + 1], grouped).reshape(images.shape)


class Augmenter:
    """Per-slice augmentation on the CPU, seeded per (seed, epoch, batch): the same batches come out
    after a resume and whatever the number of loader processes that run it. `channels` names the
    slices' channels (meta.json), needed only by `fill`."""

    def __init__(self, params: AugmentParams, seed: int, channels: tuple[str, ...] = ()):
        self.params, self.seed = params, seed
        self.source, self.channels = fill_source(params, channels), len(channels)
        self.active = any_active(params, self.source)
        self.intensity_on = any(getattr(params, name) > 0 for name in ("brightness_contrast", "gamma", "noise"))
        self._composes: tuple[A.Compose, A.Compose] | None = None  # built in the process that runs them

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_composes": None}

    def _build(self) -> tuple[A.Compose, A.Compose]:
        p = self.params
        border = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": 0}
        geometric = A.Compose([
            A.HorizontalFlip(p=p.hflip),
            A.VerticalFlip(p=p.vflip),
            A.Affine(rotate=(-p.rotate_degrees, p.rotate_degrees), scale=(1 - p.scale, 1 + p.scale),
                     translate_percent=(-p.shift, p.shift), p=p.affine, **border),
            A.ElasticTransform(alpha=30, sigma=5, p=p.elastic, **border),
        ])
        intensity = A.Compose([
            A.RandomBrightnessContrast(brightness_limit=p.brightness_contrast_limit,
                                       contrast_limit=p.brightness_contrast_limit, p=p.brightness_contrast),
            A.RandomGamma(gamma_limit=(80, 120), p=p.gamma),
            # std relative to the [0, 1] range ~ 4 sd
            A.GaussNoise(std_range=(p.noise_std / 4, p.noise_std / 4), p=p.noise),
        ])
        return geometric, intensity

    def __call__(self, images: np.ndarray, masks: np.ndarray, epoch: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Augment a batch: images float32 (B, C, H, W), masks uint8/float (B, K, H, W); new arrays."""
        if self._composes is None:
            self._composes = self._build()
        geometric, intensity = self._composes
        seed = batch_seed(self.seed, epoch, batch)
        geometric.set_random_seed(seed)
        intensity.set_random_seed(seed + 1)
        if self.source is not None:
            draws = np.random.default_rng(seed + 2)
            filled = draws.random(len(images)) < self.params.fill
            subset = draws.integers(1, 2 ** (self.channels - 1), len(images))
            images = fill_channels(images, fill_choice(filled, subset, self.source, self.channels), self.source)
        out_images, out_masks = np.empty_like(images), np.empty_like(masks)
        for i in range(len(images)):
            moved = geometric(image=images[i].transpose(1, 2, 0), mask=masks[i].transpose(1, 2, 0))
            image = moved["image"]
            if self.intensity_on:
                low, high = float(image.min()), float(image.max())
                scale = high - low or 1.0
                image = intensity(image=((image - low) / scale).astype(np.float32))["image"] * scale + low
            out_images[i] = image.transpose(2, 0, 1)
            out_masks[i] = moved["mask"].transpose(2, 0, 1)
        return out_images, out_masks
