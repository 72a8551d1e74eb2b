"""Training augmentation with albumentations, built from params.yaml train.augment.

Geometric transforms (flips, affine, elastic) move image and masks together; intensity
transforms (brightness/contrast, gamma, noise) touch the image only. albumentations expects
float images in [0, 1] for intensity work and clips to that range, while our slices are
z-scored, so each slice is rescaled to [0, 1] for those transforms and mapped back after.
Seeded per epoch: the same seed and epoch give the same augmented batches, also after a resume.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from stages.config import AugmentParams


class Augmenter:
    def __init__(self, params: AugmentParams, seed: int):
        self.params, self.seed = params, seed
        self.active = any(getattr(params, name) > 0 for name in
                          ("hflip", "vflip", "affine", "brightness_contrast", "gamma", "noise", "elastic"))

    def for_epoch(self, epoch: int) -> "EpochAugmenter":
        return EpochAugmenter(self.params, seed=self.seed * 100_003 + epoch)


class EpochAugmenter:
    def __init__(self, p: AugmentParams, seed: int):
        border = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": 0}
        self.geometric = A.Compose([
            A.HorizontalFlip(p=p.hflip),
            A.VerticalFlip(p=p.vflip),
            A.Affine(rotate=(-p.rotate_degrees, p.rotate_degrees), scale=(1 - p.scale, 1 + p.scale),
                     translate_percent=(-p.shift, p.shift), p=p.affine, **border),
            A.ElasticTransform(alpha=30, sigma=5, p=p.elastic, **border),
        ], seed=seed)
        self.intensity = A.Compose([
            A.RandomBrightnessContrast(brightness_limit=p.brightness_contrast_limit,
                                       contrast_limit=p.brightness_contrast_limit, p=p.brightness_contrast),
            A.RandomGamma(gamma_limit=(80, 120), p=p.gamma),
            A.GaussNoise(std_range=(p.noise_std / 4, p.noise_std / 4), p=p.noise),  # std relative to the [0, 1] range ~ 4 sd
        ], seed=seed + 1)

    def __call__(self, images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Augment a batch: images float32 (B, C, H, W), masks uint8/float (B, K, H, W); new arrays."""
        out_images, out_masks = np.empty_like(images), np.empty_like(masks)
        for i in range(len(images)):
            moved = self.geometric(image=images[i].transpose(1, 2, 0), mask=masks[i].transpose(1, 2, 0))
            image = moved["image"]
            low, high = float(image.min()), float(image.max())
            scale = high - low or 1.0
            image = self.intensity(image=((image - low) / scale).astype(np.float32))["image"] * scale + low
            out_images[i] = image.transpose(2, 0, 1)
            out_masks[i] = moved["mask"].transpose(2, 0, 1)
        return out_images, out_masks
