"""benchmarks/resolution_study.py: a run folder's scores and minutes, and the paired gain per minute,
against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from benchmarks.resolution_study import pairs, read_run
from btseg.training.checkpoint import CHECKPOINT_KEY


def fake_run(folder: Path, size: int, split: int, seconds: list[float], val: list[float], dice: dict[str, float]):
    """A project folder as the train and evaluate stages leave it, for the unet model."""
    (folder / "checkpoints/lgg/unet").mkdir(parents=True)
    evaluation = folder / "reports/lgg/unet/evaluation"
    evaluation.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump({"preprocess": {"size": size, "seed": split}}))
    history = [{"epoch": e, "seconds": s, "val_case_dice": v} for e, (s, v) in enumerate(zip(seconds, val), 1)]
    torch.save({CHECKPOINT_KEY: "k", "history": history}, folder / "checkpoints/lgg/unet/checkpoint.pt")
    mean = sum(dice.values()) / len(dice)
    (evaluation / "metrics_full.json").write_text(json.dumps({"cases": len(dice), "per_case": {
        "dice": mean, "dice_ci95_low": mean - 0.1, "dice_ci95_high": mean + 0.1, "precision": 0.9, "recall": 0.8}}))
    pd.DataFrame({"case_id": list(dice), "dice": list(dice.values()), "target": "whole_tumor"}).to_csv(
        evaluation / "per_case.csv", index=False)
    return folder


def test_minutes_come_from_the_median_epoch_and_the_gain_is_paired_per_patient(tmp_path):
    # 128 px: 4 epochs of 30 s, one of them paused for 10 minutes (630 s): 2 minutes of training, best epoch 2
    small = fake_run(tmp_path / "a", 128, 19, [30, 30, 630, 30], [0.5, 0.8, 0.7, 0.75], {"p1": 0.6, "p2": 0.9})
    # 160 px: 4 epochs of 60 s: 4 minutes, best epoch 4
    large = fake_run(tmp_path / "b", 160, 19, [60, 61, 59, 60], [0.5, 0.6, 0.7, 0.8], {"p1": 0.8, "p2": 0.85})
    a, b = read_run(small, "lgg", "unet", 128, 19), read_run(large, "lgg", "unet", 160, 19)
    assert (a["minutes"], a["best_epoch"], a["minutes_to_best"]) == (2.0, 2, 1.0)
    assert (b["minutes"], b["best_epoch"], b["minutes_to_best"]) == (4.0, 4, 4.0)
    assert read_run(small, "lgg", "resunet", 128, 19) is None  # not trained there
    paired = pairs(pd.DataFrame([b, a])).iloc[0]  # in any order: the smaller size is the base
    assert paired.sizes == "128 -> 160" and (paired.better, paired.worse) == (1, 1)
    assert paired.difference == pytest.approx(((0.8 - 0.6) + (0.85 - 0.9)) / 2)
    assert paired.extra_minutes == pytest.approx(2.0)
    assert paired.dice_per_10_min == pytest.approx(10 * 0.075 / 2.0)


def test_a_folder_of_another_size_or_split_is_refused_by_name(tmp_path):
    folder = fake_run(tmp_path / "a", 128, 19, [30], [0.5], {"p1": 0.6})
    refusal = r"a/params.yaml: preprocess.size/seed are \(128, 19\), not the --run's \(160, 19\)"
    with pytest.raises(SystemExit, match=refusal):
        read_run(folder, "lgg", "unet", 160, 19)
