"""Pure functions that turn a raw slice into a model input: normalise, resize, binarise, split."""

from __future__ import annotations

import cv2
import numpy as np

NORMALIZATION = "zscore_per_image_channel_over_brain"


def zscore_over_brain(image: np.ndarray) -> np.ndarray:
    """Z-score each channel of `image` (C, H, W) over the brain; background stays 0.

    The brain is where any channel is non-zero (BraTS is skull-stripped, background exactly 0).
    An image with almost no brain (< 16 pixels) is returned all zero rather than divided by noise.
    A channel that is constant over the brain becomes 0 there.
    """
    brain = np.any(image != 0, axis=0)
    out = np.zeros(image.shape, np.float32)
    if brain.sum() < 16:
        return out
    for c, channel in enumerate(image):
        values = channel[brain]
        std = values.std()
        if std > 0:
            out[c][brain] = (values - values.mean()) / std
    return out


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) float -> (C, size, size) float32; area interpolation when shrinking avoids aliasing."""
    interpolation = cv2.INTER_AREA if image.shape[1] >= size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(c.astype(np.float32), (size, size), interpolation=interpolation) for c in image])


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """(K, H, W) 0/1 -> (K, size, size) uint8: a pixel is tumor if at least half its area was."""
    return (resize_image(mask.astype(np.float32), size) >= 0.5).astype(np.uint8)


def whole_tumor(mask: np.ndarray) -> np.ndarray:
    """Sub-region channels (K, H, W) -> binary whole-tumor mask (1, H, W): any label present."""
    return np.any(mask > 0, axis=0, keepdims=True).astype(np.uint8)


def split_cases(case_ids: list[str], fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Assign every case (patient) to one split, seeded; returns case_id -> split name.

    Counts are rounded from the fractions with at least one case per split, so a case's slices
    never land in two splits. Needs at least as many cases as splits.
    """
    unique = sorted(set(case_ids))
    names = list(fractions)
    if len(unique) < len(names):
        raise ValueError(f"{len(unique)} cases cannot fill {len(names)} splits {names}")
    order = np.random.default_rng(seed).permutation(len(unique))
    # round half up (Python's round() rounds half to even, 2.5 -> 2); val and test get at least one case
    counts = [max(1, int(np.floor(fractions[name] * len(unique) + 0.5))) for name in names[1:]]
    counts.insert(0, len(unique) - sum(counts))
    if counts[0] < 1:
        raise ValueError(f"{len(unique)} cases are too few for split fractions {fractions}")
    assignment, start = {}, 0
    for name, count in zip(names, counts):
        for index in order[start:start + count]:
            assignment[unique[index]] = name
        start += count
    return assignment
