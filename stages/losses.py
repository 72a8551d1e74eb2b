"""Segmentation losses on logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image and target channel, averaged over both.

    logits, target: (N, K, H, W); target is 0/1. `smooth` keeps images whose mask is empty
    defined: predicting all-background on an empty mask gives a loss near 0, not NaN.
    """
    probs = torch.sigmoid(logits).flatten(2)
    target = target.flatten(2).to(probs.dtype)
    intersection = (probs * target).sum(2)
    dice = (2 * intersection + smooth) / (probs.sum(2) + target.sum(2) + smooth)
    return 1 - dice.mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 0.5) -> torch.Tensor:
    """(1 - w) * binary cross-entropy + w * soft Dice loss; both averaged over the batch."""
    bce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
    return (1 - dice_weight) * bce + dice_weight * soft_dice_loss(logits, target)
