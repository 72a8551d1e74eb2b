"""Device choice and batched prediction, shared by training (validation) and evaluation."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn


def pick_device(requested: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; `cuda` without a GPU is an error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA GPU is visible; set train.device=auto or cpu")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def set_threads(num_threads: int) -> None:
    torch.set_num_threads(num_threads or os.cpu_count() or 1)


@torch.no_grad()
def predict_probabilities(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 32) -> np.ndarray:
    """Probability per pixel and target, float32 (N, K, H, W), for images (N, C, H, W)."""
    model.eval()
    out = None
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start:start + batch_size].astype(np.float32)).to(device)
        probabilities = torch.sigmoid(model(batch)).float().cpu().numpy()
        if out is None:
            out = np.empty((len(images), *probabilities.shape[1:]), np.float32)
        out[start:start + len(batch)] = probabilities
    return out if out is not None else np.empty((0, 1, *images.shape[2:]), np.float32)
