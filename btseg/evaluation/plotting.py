"""Failure-analysis figures: overlays of truth and prediction on the MRI, and the summary plots.

Overlay colours: true positives yellow, false negatives (missed) green, false positives (false
alarm) red, and the ground truth's outline in cyan, so a missed or over-reaching border is visible
even where the tint is faint.
"""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from scipy import ndimage  # noqa: E402

# RGB colours of the overlay classes, in the order overlay() paints them
COLOURS = {"TP: tumor found": (1.0, 0.9, 0.0), "FN: tumor missed": (0.1, 0.85, 0.2),
           "FP: false alarm": (0.95, 0.1, 0.1)}
OUTLINE = (0.0, 0.85, 1.0)  # ground-truth contour
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
    """RGB float (H, W, 3): grey `image` with TP (yellow), FN (green) and FP (red) pixels tinted."""
    rgb = np.repeat(to_grey(image)[..., None], 3, axis=2)
    truth, prediction = truth.astype(bool), prediction.astype(bool)
    for region, colour in zip((truth & prediction, truth & ~prediction, prediction & ~truth), COLOURS.values()):
        rgb[region] = (1 - ALPHA) * rgb[region] + ALPHA * np.asarray(colour)
    return rgb


PANEL_INCHES = 2.9  # width of one gallery column
TITLE_POINTS = 8
SMALL_PIXELS = 20  # error regions up to this size (or 0.2% of the slice) get a ring


def fit_title(title: str, inches: float = PANEL_INCHES, points: int = TITLE_POINTS) -> str:
    """`title` with each line wrapped to the characters that fit a panel `inches` wide at `points`
    (a character is about 0.6 em), breaking long ids such as TCGA_CS_4942_19970222 only if they must."""
    width = max(12, int(inches * 72 / (points * 0.6)))
    return "\n".join(textwrap.fill(line, width, break_long_words=True) or line for line in title.split("\n"))


def small_regions(mask: np.ndarray, max_pixels: int) -> list[tuple[float, float]]:
    """Centres (row, column) of the connected regions of `mask` (8-connected) with at most `max_pixels` pixels."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if not count:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    small = [i + 1 for i in np.flatnonzero(sizes <= max_pixels)]
    return [tuple(float(v) for v in c) for c in ndimage.center_of_mass(mask, labels, small)] if small else []


def _legend(figure) -> None:
    handles = [Patch(color=colour, label=label) for label, colour in COLOURS.items()]
    handles.append(Line2D([], [], color=OUTLINE, linewidth=1.5, label="ground-truth outline"))
    figure.legend(handles=handles, loc="lower center", ncol=4, fontsize=9, frameon=False)


def gallery_figure(images: np.ndarray, truths: np.ndarray, predictions: np.ndarray, titles: list[str],
                   suptitle: str, empty_message: str = "nothing to show"):
    """One column per example: the MRI slice on top, the TP/FN/FP overlay with the truth outline below.

    images: (N, H, W) float; truths, predictions: (N, H, W) boolean or 0/1; titles: N panel titles.
    With N = 0 the figure says `empty_message` (e.g. no missed tumor at this threshold).
    """
    if not len(images):
        figure = plt.figure(figsize=(10.0, 2.6))
        figure.text(0.5, 0.45, empty_message, ha="center", va="center", fontsize=13)
        figure.suptitle(suptitle, fontsize=11)
        return figure
    count = len(images)
    figure, axes = plt.subplots(2, count, figsize=(max(PANEL_INCHES * count, 10.0), 7.4), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for column in range(len(images)):
        truth, prediction = truths[column].astype(bool), predictions[column].astype(bool)
        axes[0, column].imshow(to_grey(images[column]), cmap="gray", interpolation="nearest")
        axes[0, column].set_title(fit_title(titles[column]), fontsize=TITLE_POINTS)
        axes[1, column].imshow(overlay(images[column], truth, prediction), interpolation="nearest")
        if truth.any():
            axes[1, column].contour(truth.astype(float), levels=[0.5], colors=[OUTLINE], linewidths=1.0)
        # a miss or false alarm of a few pixels vanishes under the outline: ring it (only where the
        # slice's misses or false alarms are all small; a large one is seen, and rings would clutter it)
        for region, colour in ((truth & ~prediction, COLOURS["FN: tumor missed"]),
                               (prediction & ~truth, COLOURS["FP: false alarm"])):
            limit = max(SMALL_PIXELS, region.size // 500)
            centres = small_regions(region, limit) if region.sum() <= 3 * limit else []
            if centres:
                ys, xs = zip(*centres)
                axes[1, column].scatter(xs, ys, s=160, facecolors="none", edgecolors=[colour], linewidths=1.6)
    _legend(figure)
    figure.suptitle(suptitle, fontsize=11)
    figure.tight_layout(rect=(0, 0.05, 1, 0.96))
    return figure


def overview_slices(masks: np.ndarray, most: int = 3) -> list[int]:
    """The slices a prediction's overview shows, in slice order: the `most` slices with the most
    predicted tumor (any target; slices without tumor are not among them) and the middle slice."""
    tumor = masks.reshape(len(masks), -1).sum(axis=1)
    ranked = [int(i) for i in np.argsort(-tumor, kind="stable")[:most] if tumor[i] > 0]
    return sorted({*ranked, len(masks) // 2})


PREDICTION_COLOURS = (COLOURS["TP: tumor found"], COLOURS["FP: false alarm"], COLOURS["FN: tumor missed"])


def overview_figure(image: np.ndarray, masks: np.ndarray, slice_numbers: list[int], targets: list[str],
                    suptitle: str):
    """A volume prediction at a glance: the input (H, W per slice of `image` (S, H, W)) with each
    target's predicted outline (the report's found-tumor yellow for the first target, then red and
    green), on the slices overview_slices picks; `masks` (S, K, H, W)."""
    picked = overview_slices(masks)
    figure, axes = plt.subplots(1, len(picked), figsize=(max(PANEL_INCHES * len(picked), 6.0), 3.6), squeeze=False)
    tumor = masks.reshape(len(masks), masks.shape[1], -1).sum(axis=2)
    for axis, index in zip(axes[0], picked):
        axis.axis("off")
        axis.imshow(to_grey(image[index]), cmap="gray", interpolation="nearest")
        for k in range(masks.shape[1]):
            if masks[index, k].any():
                axis.contour(masks[index, k].astype(float), levels=[0.5],
                             colors=[PREDICTION_COLOURS[k % len(PREDICTION_COLOURS)]], linewidths=1.2)
        found = ", ".join(f"{name} {int(tumor[index, k])} px" for k, name in enumerate(targets))
        middle = " (middle)" if index == len(masks) // 2 else ""
        axis.set_title(fit_title(f"slice {slice_numbers[index]}{middle}: {found}"), fontsize=TITLE_POINTS)
    handles = [Line2D([], [], color=PREDICTION_COLOURS[k % len(PREDICTION_COLOURS)], linewidth=1.5,
                      label=f"predicted {name}") for k, name in enumerate(targets)]
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    figure.suptitle(suptitle, fontsize=10)
    figure.tight_layout(rect=(0, 0.06, 1, 0.93))
    return figure


def analysis_figure(per_slice: pd.DataFrame, per_case: pd.DataFrame, pr_curve: pd.DataFrame, threshold: float,
                    suptitle: str):
    """Three panels: per-slice Dice vs true tumor area, the per-case Dice distribution, and the
    pooled precision-recall curve over thresholds with the chosen threshold marked."""
    figure, (size_axis, case_axis, pr_axis) = plt.subplots(1, 3, figsize=(15, 4.6))
    tumor = per_slice[per_slice.truth_pixels > 0]
    found = tumor.predicted_pixels > 0
    size_axis.scatter(tumor.truth_pixels[found], tumor.dice[found], s=14, alpha=0.7, label="slices with tumor")
    size_axis.scatter(tumor.truth_pixels[~found], tumor.dice[~found], s=22, marker="x", color="red",
                      label="missed (nothing predicted)")
    if len(tumor):
        size_axis.set_xscale("log")
    size_axis.set(xlabel="true tumor area per slice (pixels, log scale)", ylabel="Dice", ylim=(-0.03, 1.03),
                  title="Dice vs tumor size (per slice)")
    size_axis.legend(fontsize=8, loc="lower right")
    size_axis.grid(alpha=0.3)

    dice = np.sort(per_case.dice.to_numpy())
    case_axis.hist(dice, bins=np.linspace(0, 1, 21), color="tab:blue", alpha=0.75)
    case_axis.axvline(dice.mean() if len(dice) else 0, color="black", linestyle="--",
                      label=f"mean {dice.mean() if len(dice) else 0:.3f}")
    case_axis.set(xlabel="per-case Dice (slices stacked into a volume)", ylabel="cases", xlim=(0, 1),
                  title=f"per-case Dice distribution ({len(dice)} cases)")
    case_axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    case_axis.legend(fontsize=8, loc="upper left")
    case_axis.grid(alpha=0.3)

    pr_axis.plot(pr_curve.recall, pr_curve.precision, color="tab:purple", marker=".", markersize=3)
    at = pr_curve.iloc[(pr_curve.threshold - threshold).abs().argsort()[:1]]
    pr_axis.scatter(at.recall, at.precision, s=60, color="black", zorder=3, label=f"threshold {threshold:.2f}")
    pr_axis.set(xlabel="recall (pooled pixels)", ylabel="precision (pooled pixels)", xlim=(-0.02, 1.02),
                ylim=(-0.02, 1.02), title="precision-recall over thresholds 0.01-0.99")
    pr_axis.legend(fontsize=8, loc="lower left")
    pr_axis.grid(alpha=0.3)
    figure.suptitle(suptitle, fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.94))
    return figure
