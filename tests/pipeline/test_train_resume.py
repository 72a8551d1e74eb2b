"""A training killed part-way resumes from its checkpoint and ends exactly as an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import run_in, stage_argv

pytestmark = pytest.mark.slow  # trains or runs stages in subprocesses

ENV = {**os.environ, "TQDM_DISABLE": "1"}
stage = run_in


@pytest.fixture
def projects(tmp_path, params_dict) -> tuple[Path, Path]:
    # with a weight average: the resumed run must bring it back too
    params_dict["train"].update(epochs=40, base_channels=8, batch_size=2, schedule="cosine", warmup_epochs=2,
                                ema_decay=0.99)
    params_dict["train"]["augment"].update(affine=0.5, noise=0.3)  # resumed augmentation must match too
    params_dict["data"]["datasets"] = ["tumor_coco"]
    first = tmp_path / "uninterrupted"
    first.mkdir()
    (first / "params.yaml").write_text(yaml.safe_dump(params_dict, sort_keys=False))
    for name in ("stages.download", "stages.preprocess"):
        assert stage(first, name, "--dataset", "tumor_coco").returncode == 0
    second = tmp_path / "killed"
    shutil.copytree(first, second)
    return first, second


def test_killed_training_resumes_to_the_same_weights_and_log(projects):
    uninterrupted, killed = projects
    result = stage(uninterrupted, "stages.train", "--dataset", "tumor_coco", "--model", "unet")
    assert result.returncode == 0, result.stderr

    process = subprocess.Popen(stage_argv("stages.train", "--dataset", "tumor_coco", "--model", "unet"),
                               cwd=killed, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    live = killed / "checkpoints/tumor_coco/unet/dvclive/metrics.json"  # the log of the run in progress
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        try:
            if json.loads(live.read_text())["step"] >= 3:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # no clean-up of any kind: like a lost machine or the OOM killer
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "models/tumor_coco/unet/model.pt").exists()
    saved = torch.load(killed / "checkpoints/tumor_coco/unet/checkpoint.pt", weights_only=True)
    assert 3 <= saved["epoch"] < 40

    result = stage(killed, "stages.train", "--dataset", "tumor_coco", "--model", "unet")
    assert result.returncode == 0, result.stderr
    assert f"resuming from checkpoints/tumor_coco/unet/checkpoint.pt after epoch {saved['epoch']}" in result.stderr
    a = torch.load(uninterrupted / "models/tumor_coco/unet/model.pt", weights_only=True)
    b = torch.load(killed / "models/tumor_coco/unet/model.pt", weights_only=True)
    assert a["best_epoch"] == b["best_epoch"] and a["val_case_dice"] == b["val_case_dice"]
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    log_a = (uninterrupted / "dvclive/tumor_coco/unet/plots/metrics/val_case_dice.tsv").read_text().splitlines()
    log_b = (killed / "dvclive/tumor_coco/unet/plots/metrics/val_case_dice.tsv").read_text().splitlines()
    # the resumed log ends where the uninterrupted one does
    assert log_b[-1] == log_a[-1] and log_a[-1].startswith("39\t")
    loss_a = (uninterrupted / "dvclive/tumor_coco/unet/loss.csv").read_text().splitlines()
    loss_b = (killed / "dvclive/tumor_coco/unet/loss.csv").read_text().splitlines()
    assert len(loss_b) == len(loss_a) == 1 + 2 * 40 and loss_b[-2:] == loss_a[-2:]  # no epoch twice, none missing


def test_nan_loss_stops_with_epoch_and_batch_and_keeps_the_last_good_checkpoint(projects):
    import re

    import numpy as np

    project, _ = projects
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(epochs=5, schedule="constant")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    images = project / "data/slices/tumor_coco/train/images.npy"
    array = np.load(images)
    array[0, 0, 0, 0] = np.nan  # a NaN input gives a NaN loss in whichever batch holds slice 0
    np.save(images, array)
    result = stage(project, "stages.train", "--dataset", "tumor_coco", "--model", "unet")
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    match = re.fullmatch(r"error: loss became nan at epoch (\d+), batch (\d+); the last good epoch is kept in "
                         r"checkpoints/tumor_coco/unet/checkpoint.pt; lower train.learning_rate or set train.grad_clip",
                         line)
    assert match, line
    checkpoint = project / "checkpoints/tumor_coco/unet/checkpoint.pt"
    epoch = int(match[1])
    if epoch > 1:
        assert torch.load(checkpoint, weights_only=True)["epoch"] == epoch - 1
    else:
        assert not checkpoint.exists()
    assert not (project / "models/tumor_coco/unet/model.pt").exists()


def test_checkpoint_of_other_data_is_not_resumed(projects):
    project, _ = projects
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(epochs=2, schedule="constant")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stage(project, "stages.train", "--dataset", "tumor_coco", "--model", "unet").returncode == 0
    # the same arrays written again (new files, new times): still this checkpoint's data, so it resumes
    assert stage(project, "stages.preprocess", "--dataset", "tumor_coco").returncode == 0
    result = stage(project, "stages.train", "--dataset", "tumor_coco", "--model", "unet")
    assert result.returncode == 0, result.stderr
    assert "resuming from checkpoints/tumor_coco/unet/checkpoint.pt after epoch 2" in result.stderr
    # other images with the same settings (another sample seed): other data, trained from scratch
    params["data"]["sample"]["seed"] += 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("stages.download", "stages.preprocess"):
        assert stage(project, name, "--dataset", "tumor_coco").returncode == 0
    result = stage(project, "stages.train", "--dataset", "tumor_coco", "--model", "unet")
    assert result.returncode == 0, result.stderr
    assert "resuming" not in result.stderr and "written with other settings; training from scratch" in result.stderr
