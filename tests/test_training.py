"""The training loop on tiny synthetic circles, on CPU and (where present) CUDA."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from stages.inference import pick_device, predict_probabilities
from stages.models import create_model
from stages.slices import SliceSet
from stages.training import case_dice, fit


def circles(count: int, seed: int, size: int = 32) -> SliceSet:
    """Bright discs (the tumor) on a noisy background; one case per slice, a few without a disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((count, 1, size, size), np.float16)
    masks = np.zeros((count, 1, size, size), np.uint8)
    for i in range(count):
        if i % 5:
            cx, cy, r = rng.uniform(8, size - 8, 2).tolist() + [rng.uniform(3, 7)]
            masks[i, 0] = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
        images[i, 0] = masks[i, 0] * 2.0 + rng.normal(0, 0.5, (size, size))
    index = pd.DataFrame({"row": range(count), "case_id": [f"c{i}" for i in range(count)], "slice_index": 0,
                          "source_file": "", "tumor_pixels": masks.reshape(count, -1).sum(1)})
    return SliceSet(images, masks, index, {"channels": ["grey"], "size": size})


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_fit_learns_circles_and_keeps_the_best_epoch(device):
    torch.set_num_threads(2)
    train, val = circles(48, seed=1), circles(16, seed=2)
    model = create_model("unet", in_channels=1, base_channels=8, depth=2)
    before = case_dice(predict_probabilities(model, val.images, torch.device("cpu")), val, 0.5)
    result = fit(model, train, val, epochs=6, batch_size=8, learning_rate=0.01, dice_weight=0.5,
                 threshold=0.5, seed=0, device=torch.device(device))
    assert list(result.history.epoch) == [1, 2, 3, 4, 5, 6]
    assert result.best_val_dice == result.history.val_case_dice.max()
    assert result.best_epoch == int(result.history.val_case_dice.idxmax()) + 1
    assert result.best_val_dice > max(0.8, before)
    # the kept weights are the best epoch's: they reproduce its validation Dice
    model.load_state_dict(result.best_state)
    again = case_dice(predict_probabilities(model.to(device), val.images, torch.device(device)), val, 0.5)
    assert again == pytest.approx(result.best_val_dice)


def test_cuda_requested_without_gpu_is_an_error_naming_the_param(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="train.device"):
        pick_device("cuda")
    assert pick_device("auto") == torch.device("cpu")
