"""The training loop, on memory-mapped slice arrays."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from stages.inference import predict_probabilities
from stages.losses import bce_dice_loss
from stages.metrics import confusion_counts, per_case_table, per_slice_table
from stages.slices import SliceSet

log = logging.getLogger("stages.training")


def batches(images: np.ndarray, masks: np.ndarray, batch_size: int, rng: np.random.Generator | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches as float32 tensors; shuffled when `rng` is given. Rows are read sorted (fast on a memmap)."""
    order = rng.permutation(len(images)) if rng is not None else np.arange(len(images))
    for start in range(0, len(order), batch_size):
        rows = np.sort(order[start:start + batch_size])
        yield torch.from_numpy(images[rows].astype(np.float32)), torch.from_numpy(masks[rows].astype(np.float32))


def case_dice(probabilities: np.ndarray, split: SliceSet, threshold: float) -> float:
    """Mean per-case Dice (cases scored as volumes) at `threshold`, averaged over target channels."""
    predicted = probabilities > threshold
    return float(np.mean([per_case_table(per_slice_table(confusion_counts(predicted[:, k], split.masks[:, k]), split.index))["dice"].mean()
                          for k in range(split.masks.shape[1])]))


@dataclass(frozen=True)
class TrainResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_dice: float
    history: pd.DataFrame


def fit(model: nn.Module, train: SliceSet, val: SliceSet, *, epochs: int, batch_size: int, learning_rate: float,
        dice_weight: float, threshold: float, seed: int, device: torch.device) -> TrainResult:
    """Adam on BCE + Dice with random horizontal flips; keeps the weights of the best validation epoch.

    Validation Dice is the mean per-case Dice at `threshold`, the same number evaluate reports.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    history, best_dice, best_epoch, best_state = [], -1.0, 0, None
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        losses = []
        for images, masks in tqdm(batches(train.images, train.masks, batch_size, rng), total=-(-len(train.images) // batch_size),
                                  desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False):
            images, masks = images.to(device), masks.to(device)
            flip = torch.rand(len(images), device=device) < 0.5  # left-right flip: brains are roughly symmetric
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            masks = torch.where(flip[:, None, None, None], masks.flip(-1), masks)
            loss = bce_dice_loss(model(images), masks, dice_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        val_dice = case_dice(predict_probabilities(model, val.images, device), val, threshold)
        seconds = time.perf_counter() - started
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_case_dice": val_dice, "seconds": seconds})
        log.info("epoch %d/%d: train loss %.4f, val case Dice %.4f (%.1f s)", epoch, epochs, np.mean(losses), val_dice, seconds)
        if val_dice > best_dice:
            best_dice, best_epoch = val_dice, epoch
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return TrainResult(best_state, best_epoch, best_dice, pd.DataFrame(history))
