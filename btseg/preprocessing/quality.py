"""Suspect inputs that real archives hold: reported in meta.json, optionally left out
(preprocess.suspect_cases).

- identical channels: two sequences of a case with the same voxels, i.e. a missing sequence filled
  in with another (10 of the 110 LGG patients: in 6 all three channels are the FLAIR);
- a near-empty volume: brain in fewer than NEAR_EMPTY of its voxels;
- an intensity outlier: a channel whose brain maximum exceeds OUTLIER_RATIO times its brain 99th
  percentile (a hot spot or artefact that would squash a min-max or z-score normalisation).
"""

from __future__ import annotations

import numpy as np

NEAR_EMPTY = 0.002  # fraction of the volume's voxels
OUTLIER_RATIO = 10.0


def suspect_reasons(image: np.ndarray, brain: np.ndarray, channels: list[str]) -> list[str]:
    """Why a case (raw image float (S, C, H, W), brain mask bool (S, H, W)) looks wrong; [] if it does not."""
    reasons = []
    for a in range(len(channels)):
        for b in range(a + 1, len(channels)):
            if np.array_equal(image[:, a], image[:, b]):
                reasons.append(f"channels {channels[a]} and {channels[b]} are identical "
                               "(a missing sequence filled in?)")
    fraction = float(brain.mean()) if brain.size else 0.0
    if fraction < NEAR_EMPTY:
        reasons.append(f"near-empty volume: brain in {fraction:.2%} of the voxels")
    if brain.any():
        for c, name in enumerate(channels):
            values = image[:, c][brain]
            high, top = float(np.percentile(values, 99)), float(values.max())
            if high > 0 and top > OUTLIER_RATIO * high:
                reasons.append(f"intensity outlier in {name}: maximum {top:g} is {top / high:.0f}x the 99th percentile")
    return reasons
