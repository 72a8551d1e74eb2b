"""Segmentation losses on logits (N, K, H, W) against 0/1 targets of the same shape.

Every overlap loss is computed per target channel and averaged over channels, so each BraTS
region (WT, TC, ET) counts the same whatever its size. `reduction="image"` scores each image
on its own and averages (an empty image predicted empty scores ~0 loss thanks to `smooth`);
`reduction="batch"` pools the pixels of the whole batch first (more stable with small tumors).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from btseg.config import LOSS_NAMES

LOSSES = LOSS_NAMES  # each name is a branch of Loss.__call__


def _sums(logits: torch.Tensor, target: torch.Tensor,
          reduction: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """True-positive, false-positive, false-negative soft counts: (N, K) per image or (K,) per batch."""
    probs = torch.sigmoid(logits.float())
    target = target.to(probs.dtype)
    dims = (2, 3) if reduction == "image" else (0, 2, 3)
    if reduction not in ("image", "batch"):
        raise ValueError(f"unknown reduction '{reduction}'; expected image or batch")
    tp = (probs * target).sum(dims)
    return tp, (probs * (1 - target)).sum(dims), ((1 - probs) * target).sum(dims)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0,
                   reduction: str = "image") -> torch.Tensor:
    """1 - soft Dice, per image (or batch) and target channel, averaged."""
    tp, fp, fn = _sums(logits, target, reduction)
    return 1 - ((2 * tp + smooth) / (2 * tp + fp + fn + smooth)).mean()


def tversky_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.3, beta: float = 0.7,
                 gamma: float = 1.0, smooth: float = 1.0, reduction: str = "image") -> torch.Tensor:
    """1 - Tversky index TP / (TP + alpha FP + beta FN), raised to `gamma` (focal Tversky when gamma != 1).

    beta > alpha penalises missed tumor more than false alarms; alpha = beta = 0.5 is soft Dice.
    """
    tp, fp, fn = _sums(logits, target, reduction)
    index = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    return ((1 - index).clamp(min=0) ** gamma).mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Binary focal loss (Lin et al., 2017): BCE weighted by (1 - p_t)^gamma, mean over pixels."""
    target = target.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)  # probability given to the true class
    return ((1 - p_t) ** gamma * bce).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 0.5, smooth: float = 1.0,
                  reduction: str = "image") -> torch.Tensor:
    """(1 - w) * binary cross-entropy + w * soft Dice loss."""
    bce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
    return (1 - dice_weight) * bce + dice_weight * soft_dice_loss(logits, target, smooth, reduction)


@dataclass(frozen=True)
class Loss:
    """A loss chosen by name with its settings (params.yaml train.loss and friends)."""

    name: str = "bce_dice"
    dice_weight: float = 0.5
    smooth: float = 1.0
    reduction: str = "image"
    focal_gamma: float = 2.0
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7

    def __post_init__(self):
        if self.name not in LOSSES:
            raise ValueError(f"unknown loss '{self.name}'; expected one of {LOSSES}")

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.name == "bce":
            return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
        if self.name == "dice":
            return soft_dice_loss(logits, target, self.smooth, self.reduction)
        if self.name == "bce_dice":
            return bce_dice_loss(logits, target, self.dice_weight, self.smooth, self.reduction)
        if self.name == "focal":
            return focal_loss(logits, target, self.focal_gamma)
        gamma = self.focal_gamma if self.name == "focal_tversky" else 1.0
        return tversky_loss(logits, target, self.tversky_alpha, self.tversky_beta, gamma, self.smooth, self.reduction)

    def deep(self, outputs: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """The loss of a model output; with deep supervision (a list), auxiliary outputs are scored
        against the target pooled to their size, with weights halving per level, normalised to 1."""
        if isinstance(outputs, torch.Tensor):
            return self(outputs, target)
        weights = [0.5**level for level in range(len(outputs))]
        total = sum(w * self(out, target if out.shape[-2:] == target.shape[-2:]
                             else (F.adaptive_max_pool2d(target.float(), out.shape[-2:])))
                    for w, out in zip(weights, outputs))
        return total / sum(weights)
