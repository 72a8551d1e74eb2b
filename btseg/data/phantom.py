"""Synthetic brain MRI with a tumor: the anatomy behind the `sample` data source.

A case is a 3D phantom sampled slice by slice: an elliptical brain with smooth texture and two
ventricles, and an irregular lesion made of a necrotic core, an enhancing rim and surrounding
edema. Each MRI sequence shows the tissues with its own contrast (edema bright on FLAIR and T2,
the rim bright on T1ce, ventricles bright on T2), so a model must combine sequences the way it
would on real BraTS. Slices above and below the lesion hold no tumor.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from btseg.errors import PipelineError

SEQUENCES = ("flair", "t1", "t1ce", "t2")

# Relative signal of each tissue per sequence: background, brain, ventricle, edema, enhancing rim,
# necrotic core. Loosely after typical glioma appearance; only the contrasts matter.
CONTRAST = {
    "flair": (0.0, 0.45, 0.10, 1.00, 0.75, 0.55),
    "t1": (0.0, 0.60, 0.20, 0.45, 0.55, 0.25),
    "t1ce": (0.0, 0.55, 0.20, 0.50, 1.00, 0.25),
    "t2": (0.0, 0.45, 1.00, 0.90, 0.65, 0.95),
}
BACKGROUND, BRAIN, VENTRICLE, EDEMA, ENHANCING, NECROSIS = range(6)


@dataclass(frozen=True)
class Lesion:
    center_xyz: tuple[float, float, float]  # pixels in-plane, slice units along z
    radius_xyz: tuple[float, float, float]
    harmonics: tuple[tuple[float, float], ...]  # (amplitude, phase) of angular bumps 2, 3, 4, ...
    core_fraction: float  # radius of the necrotic core relative to the lesion
    edema_scale: float  # radius of the edema relative to the lesion


@dataclass(frozen=True)
class Phantom:
    size: int
    depth: int  # slices in the volume
    brain_center: tuple[float, float]
    brain_radius: tuple[float, float]
    lesion: Lesion
    texture_seed: int


def random_phantom(rng: np.random.Generator, size: int, depth: int) -> Phantom:
    """Draw one phantom; the lesion spans roughly the middle half of the `depth` slices."""
    brain_center = (size / 2 + rng.uniform(-6, 6), size / 2 + rng.uniform(-6, 6))
    brain_radius = (size * rng.uniform(0.33, 0.38), size * rng.uniform(0.40, 0.44))
    angle = rng.uniform(0, 2 * np.pi)
    offset = rng.uniform(0.2, 0.45)
    radius = size * rng.uniform(0.08, 0.16)
    lesion = Lesion(
        center_xyz=(
            brain_center[0] + offset * brain_radius[0] * np.cos(angle),
            brain_center[1] + offset * brain_radius[1] * np.sin(angle),
            depth / 2 + rng.uniform(-depth / 8, depth / 8),
        ),
        radius_xyz=(radius * rng.uniform(0.8, 1.2), radius * rng.uniform(0.8, 1.2), depth * rng.uniform(0.25, 0.35)),
        harmonics=tuple((rng.uniform(0.0, 0.18), rng.uniform(0, 2 * np.pi)) for _ in range(3)),
        core_fraction=rng.uniform(0.3, 0.55),
        edema_scale=rng.uniform(1.35, 1.8),
    )
    return Phantom(size, depth, brain_center, brain_radius, lesion, int(rng.integers(2**31)))


def tissue_map(case: Phantom, z: float) -> np.ndarray:
    """Tissue label per pixel (int8, size x size) of the slice at height `z`."""
    size = case.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    bx, by = case.brain_center
    # the brain is an ellipsoid: its cross-section shrinks towards the top and bottom slices
    middle = case.depth / 2
    section = np.sqrt(max(0.05, 1 - ((z - middle) / (0.62 * case.depth)) ** 2))
    brx, bry = case.brain_radius[0] * section, case.brain_radius[1] * section
    tissue = np.full((size, size), BACKGROUND, np.int8)
    tissue[((xx - bx) / brx) ** 2 + ((yy - by) / bry) ** 2 <= 1] = BRAIN
    if abs(z - middle) < 0.3 * case.depth:  # two ventricles either side of the midline, mid-brain only
        for side in (-1, 1):
            vx, vy = bx + side * 0.12 * brx, by - 0.05 * bry
            tissue[((xx - vx) / (0.07 * brx)) ** 2 + ((yy - vy) / (0.22 * bry)) ** 2 <= 1] = VENTRICLE

    lesion = case.lesion
    lx, ly, lz = lesion.center_xyz
    rx, ry, rz = lesion.radius_xyz
    height = 1 - ((z - lz) / rz) ** 2
    if height <= 0:
        return tissue
    scale = np.sqrt(height)
    theta = np.arctan2(yy - ly, xx - lx)
    bumps = 1 + sum(a * np.cos((k + 2) * theta + p) for k, (a, p) in enumerate(lesion.harmonics))
    # radial distance in units of the (irregular) lesion boundary at this height
    rho = np.sqrt(((xx - lx) / rx) ** 2 + ((yy - ly) / ry) ** 2) / (scale * bumps)
    inside_brain = tissue != BACKGROUND
    tissue[(rho <= lesion.edema_scale) & inside_brain] = EDEMA
    tissue[(rho <= 1) & inside_brain] = ENHANCING
    tissue[(rho <= lesion.core_fraction) & inside_brain] = NECROSIS
    return tissue


def render(case: Phantom, tissue: np.ndarray, sequence: str, rng: np.random.Generator) -> np.ndarray:
    """Signal (float32, size x size) of one sequence: tissue contrast x smooth texture + noise."""
    signal = np.asarray(CONTRAST[sequence], np.float32)[tissue]
    texture_rng = np.random.default_rng(case.texture_seed + SEQUENCES.index(sequence))
    texture = cv2.GaussianBlur(texture_rng.normal(0, 1, tissue.shape).astype(np.float32), (0, 0), 6)
    texture /= texture.std() + 1e-6
    signal *= 1 + 0.08 * texture
    signal = cv2.GaussianBlur(signal, (0, 0), 0.8)  # partial-volume blur at tissue borders
    signal += rng.normal(0, 0.04, signal.shape).astype(np.float32)
    signal[tissue == BACKGROUND] = np.abs(signal[tissue == BACKGROUND]) * 0.3
    return signal


def check_drawable(sequences: list[str], regions: list[str], known_regions, param: str) -> None:
    """Stop with one line when a sample generator is asked for a sequence or region it cannot draw."""
    unknown = [s for s in sequences if s not in SEQUENCES] + [r for r in regions if r not in known_regions]
    if unknown:
        raise PipelineError(f"params.yaml: {param}: the sample generator cannot draw {unknown}; it knows "
                            f"sequences {list(SEQUENCES)} and regions {list(known_regions)}")
