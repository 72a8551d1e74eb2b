"""Failure-case figures: image with ground truth and prediction overlaid in distinct colours."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

# RGB colours of the overlay classes; yellow = where both agree (true positive)
COLOURS = {"ground truth only (missed)": (0.1, 0.85, 0.2), "prediction only (false alarm)": (0.95, 0.1, 0.1),
           "both (correct)": (1.0, 0.9, 0.0)}
ALPHA = 0.55


def to_grey(image: np.ndarray) -> np.ndarray:
    """(H, W) float -> (H, W) in [0, 1], stretched between the 1st and 99th percentile of the brain.

    Normalised slices are 0 outside the brain; that background is shown black.
    """
    brain = image != 0
    if not brain.any():
        return np.zeros(image.shape, np.float32)
    low, high = np.percentile(image[brain], [1, 99])
    return np.where(brain, np.clip((image - low) / (high - low + 1e-6), 0, 1), 0.0)


def overlay(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """RGB float (H, W, 3): grey `image` with missed (green), false-alarm (red), correct (yellow) pixels tinted."""
    rgb = np.repeat(to_grey(image)[..., None], 3, axis=2)
    truth, prediction = truth.astype(bool), prediction.astype(bool)
    for region, colour in zip((truth & ~prediction, prediction & ~truth, truth & prediction), COLOURS.values()):
        rgb[region] = (1 - ALPHA) * rgb[region] + ALPHA * np.asarray(colour)
    return rgb


def worst_slices(per_slice: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k slices with the lowest Dice among those with tumor in truth or prediction (ties: larger tumor first)."""
    candidates = per_slice[(per_slice.truth_pixels > 0) | (per_slice.predicted_pixels > 0)]
    return candidates.sort_values(["dice", "truth_pixels"], ascending=[True, False]).head(k)


def failure_figure(images: np.ndarray, truths: np.ndarray, predictions: np.ndarray, titles: list[str], suptitle: str):
    """Figure with one column per case: the image on top, the overlay below, one legend for all."""
    count = max(len(images), 1)
    figure, axes = plt.subplots(2, count, figsize=(2.6 * count, 5.9), squeeze=False)
    for column in range(count):
        for row in range(2):
            axes[row, column].axis("off")
        if column >= len(images):
            axes[0, column].set_title("no tumor in truth\nor prediction", fontsize=8)
            continue
        axes[0, column].imshow(to_grey(images[column]), cmap="gray")
        axes[0, column].set_title(titles[column], fontsize=8)
        axes[1, column].imshow(overlay(images[column], truths[column], predictions[column]))
    handles = [Patch(color=colour, label=label) for label, colour in COLOURS.items()]
    figure.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.suptitle(suptitle, fontsize=10)
    figure.tight_layout(rect=(0, 0.05, 1, 0.95))
    return figure
