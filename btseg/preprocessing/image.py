"""Pure functions that turn a case read from disk into model input: brain mask, normalisation,
crop, fit to size, targets, slice selection and the patient-level split.

Arrays: a case's image is float32 (S, C, H, W) (slices, channels, rows, columns); its regions
are uint8 (S, K, H, W), one 0/1 channel per labelled sub-region.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MIN_BRAIN_PIXELS = 16  # fewer brain pixels than this in a slice: treated as a slice without brain


def brain_mask(image: np.ndarray, threshold: float) -> np.ndarray:
    """bool (S, H, W): pixels where any channel exceeds `threshold` x that channel's 99th percentile.

    BraTS is skull-stripped with background exactly 0, so any threshold > 0 finds the brain; for
    8-bit exports (JPEG, TIFF) a small threshold ignores the near-black, noisy background.
    """
    high = np.percentile(image, 99, axis=(0, 2, 3)).reshape(1, -1, 1, 1)
    return np.any(image > threshold * np.maximum(high, 1e-6), axis=1)


def normalize(image: np.ndarray, brain: np.ndarray, method: str, percentiles: tuple[float, float]) -> np.ndarray:
    """Normalise each channel over the brain voxels of the whole case; background becomes 0.

    zscore:     (x - mean) / std over the brain (a constant channel becomes 0)
    percentile: clip to the given brain percentiles, then scale that range to [0, 1]
    minmax:     scale the brain's [min, max] to [0, 1]
    A case with fewer than MIN_BRAIN_PIXELS brain voxels is returned all zero.
    """
    out = np.zeros(image.shape, np.float32)
    if brain.sum() < MIN_BRAIN_PIXELS:
        return out
    for c in range(image.shape[1]):
        channel = image[:, c]
        values = channel[brain].astype(np.float64)
        if method == "zscore":
            low, scale = values.mean(), values.std()
        elif method == "percentile":
            low, high = np.percentile(values, percentiles)
            values = np.clip(values, low, high)
            scale = high - low
        elif method == "minmax":
            low, scale = values.min(), values.max() - values.min()
        else:
            raise ValueError(f"unknown normalization '{method}'; expected zscore, percentile or minmax")
        if scale > 0:
            out[:, c][brain] = (values - low) / scale
    return out


def brain_box(brain: np.ndarray, margin: int) -> tuple[slice, slice]:
    """Rows and columns of the brain's bounding box over all slices, widened by `margin` pixels."""
    rows, cols = np.flatnonzero(brain.any(axis=(0, 2))), np.flatnonzero(brain.any(axis=(0, 1)))
    height, width = brain.shape[1:]
    if not len(rows):
        return slice(0, height), slice(0, width)
    return (slice(max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, height)),
            slice(max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, width)))


def fit_to_size(planes: np.ndarray, size: int, mode: str, is_mask: bool) -> np.ndarray:
    """(N, H, W) -> (N, size, size).

    resize:    stretch to size x size
    letterbox: scale the longer side to `size` keeping the aspect ratio, pad the rest with 0
    Masks are interpolated as area fractions and kept where at least half the pixel was tumor.
    """
    height, width = planes.shape[1:]
    if not len(planes):
        return np.zeros((0, size, size), np.uint8 if is_mask else np.float32)
    if mode == "resize":
        target = (size, size)
    elif mode == "letterbox":
        scale = size / max(height, width)
        target = (max(1, round(height * scale)), max(1, round(width * scale)))
    else:
        raise ValueError(f"unknown fit mode '{mode}'; expected resize or letterbox")
    shrinking = target[0] <= height and target[1] <= width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = np.stack([cv2.resize(p.astype(np.float32), (target[1], target[0]), interpolation=interpolation)
                        for p in planes])
    if is_mask:
        resized = (resized >= 0.5).astype(np.uint8)
    out = np.zeros((len(planes), size, size), resized.dtype)
    top, left = (size - target[0]) // 2, (size - target[1]) // 2
    out[:, top:top + target[0], left:left + target[1]] = resized
    return out


def build_target(regions: np.ndarray, region_names: tuple[str, ...], outputs: dict[str, list[str]]) -> np.ndarray:
    """Sub-region masks (S, K, H, W) -> target masks (S, len(outputs), H, W): each output unites its sub-regions."""
    index = {name: i for i, name in enumerate(region_names)}
    return np.stack([regions[:, [index[n] for n in members]].any(axis=1) for members in outputs.values()],
                    axis=1).astype(np.uint8)


def select_slices(has_tumor: np.ndarray, brain_pixels: np.ndarray, tumor_free_fraction: float,
                  skip_no_brain: bool, rng: np.random.Generator) -> np.ndarray:
    """Indices of the slices to keep: every tumor slice (with brain), and a seeded
    `tumor_free_fraction` of the tumor-free ones; slices without brain dropped if `skip_no_brain`."""
    keep = np.ones(len(has_tumor), bool)
    if skip_no_brain:
        keep &= brain_pixels >= MIN_BRAIN_PIXELS
    free = np.flatnonzero(keep & ~has_tumor)
    if tumor_free_fraction < 1.0 and len(free):
        dropped = rng.permutation(free)[: len(free) - int(np.floor(tumor_free_fraction * len(free) + 0.5))]
        keep[dropped] = False
    return np.flatnonzero(keep)


def split_cases(case_ids: list[str], fractions: dict[str, float], seed: int,
                strata: dict[str, object] | None = None) -> dict[str, str]:
    """Assign every case (patient) to one split, seeded; returns case_id -> split name.

    Within each stratum (e.g. cases with and without tumor) counts are rounded half up from the
    fractions and the cases dealt out, so each split gets its share of every stratum; the first
    split takes the remainder. With too few cases for every split to get one, ValueError.
    """
    unique = sorted(set(case_ids))
    names = list(fractions)
    if len(unique) < len(names):
        raise ValueError(f"{len(unique)} cases cannot fill {len(names)} splits {names}")
    rng = np.random.default_rng(seed)
    groups: dict[object, list[str]] = {}
    for case in unique:
        groups.setdefault((strata or {}).get(case), []).append(case)
    assignment: dict[str, str] = {}
    carry = {name: 0.0 for name in names}  # rounding debt, so small strata do not all round the same way
    for key in sorted(groups, key=str):
        members = [groups[key][i] for i in rng.permutation(len(groups[key]))]
        start = 0
        for name in names[1:]:
            wanted = fractions[name] * len(members) + carry[name]
            count = min(int(np.floor(wanted + 0.5)), len(members) - start)
            carry[name] = wanted - count
            for case in members[start:start + count]:
                assignment[case] = name
            start += count
        for case in members[start:]:
            assignment[case] = names[0]
    # every split needs at least one case: move one from the largest split where one is empty
    for name in names:
        if name not in assignment.values():
            donor = max(names, key=lambda n: sum(v == n for v in assignment.values()))
            case = sorted(c for c, v in assignment.items() if v == donor)[0]
            assignment[case] = name
    if len(set(assignment.values())) < len(names):
        raise ValueError(f"{len(unique)} cases are too few for split fractions {fractions}")
    return assignment


@dataclass(frozen=True)
class Settings:
    """How images become model input; recorded in meta.json and in every model file."""

    size: int
    normalization: str
    percentiles: tuple[float, float]
    brain_threshold: float
    crop_to_brain: bool
    crop_margin: int
    fit: str
    neighbours: int = 0  # 2.5D: slices on each side stacked as extra channels

    @classmethod
    def from_meta(cls, meta: dict) -> "Settings":
        """From a slices meta.json (or the `data_meta` a model file carries)."""
        norm, geometry = meta["normalization"], meta["geometry"]
        return cls(meta["size"], norm["method"], tuple(norm.get("percentiles", (0.0, 100.0))),
                   geometry["brain_threshold"], geometry["crop_to_brain"], geometry["crop_margin"], geometry["fit"],
                   geometry.get("neighbours", 0))


@dataclass(frozen=True)
class Placement:
    """Where the model's size x size input sits in the source slices, to map predictions back."""

    height: int
    width: int
    rows: slice
    cols: slice


def prepare_image(image: np.ndarray, settings: Settings) -> tuple[np.ndarray, np.ndarray, Placement]:
    """A case's raw image (S, C, H, W), slices in order -> model input float32 (S, C', size, size)
    with C' = C * (2 * settings.neighbours + 1) (see `stack_neighbours`), its brain mask (S, H, W) and
    the placement to map outputs back (see `place_back`)."""
    brain = brain_mask(image, settings.brain_threshold)
    normalized = normalize(image, brain, settings.normalization, settings.percentiles)  # over the whole case's brain
    s, c, h, w = image.shape
    rows, cols = brain_box(brain, settings.crop_margin) if settings.crop_to_brain else (slice(0, h), slice(0, w))
    cropped = normalized[:, :, rows, cols]
    ch, cw = cropped.shape[2:]
    fitted = fit_to_size(cropped.reshape(s * c, ch, cw), settings.size, settings.fit, is_mask=False)
    inputs = stack_neighbours(fitted.reshape(s, c, settings.size, settings.size), settings.neighbours)
    return inputs, brain, Placement(h, w, rows, cols)


def stack_neighbours(images: np.ndarray, k: int) -> np.ndarray:
    """2.5D input: each slice of a case (S, C, H, W) with the k slices before and after it as extra
    channels, (S, C * (2k + 1), H, W), ordered by offset -k..k, each offset's C channels together.
    At the volume's ends the nearest slice stands in for the missing ones. k = 0: unchanged."""
    if k == 0:
        return images
    s = len(images)
    offsets = [np.clip(np.arange(s) + d, 0, s - 1) for d in range(-k, k + 1)]
    return np.concatenate([images[rows] for rows in offsets], axis=1)


def place_back(probabilities: np.ndarray, placement: Placement, settings: Settings) -> np.ndarray:
    """Model output (S, K, size, size) -> (S, K, H, W) on the source slices: undo the fit, then the crop."""
    s, k = probabilities.shape[:2]
    box_h = placement.rows.stop - placement.rows.start
    box_w = placement.cols.stop - placement.cols.start
    planes = probabilities.reshape(s * k, settings.size, settings.size).astype(np.float32)
    if settings.fit == "letterbox":  # drop the padding around the scaled content
        scale = settings.size / max(box_h, box_w)
        th, tw = max(1, round(box_h * scale)), max(1, round(box_w * scale))
        top, left = (settings.size - th) // 2, (settings.size - tw) // 2
        planes = planes[:, top:top + th, left:left + tw]
    restored = (np.stack([cv2.resize(p, (box_w, box_h), interpolation=cv2.INTER_LINEAR) for p in planes])
                if len(planes) else np.zeros((0, box_h, box_w), np.float32))
    out = np.zeros((s, k, placement.height, placement.width), np.float32)
    out[:, :, placement.rows, placement.cols] = restored.reshape(s, k, box_h, box_w)
    return out
