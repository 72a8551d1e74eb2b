"""Training under torchrun with DistributedDataParallel, two CPU processes (gloo)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import run_in

pytestmark = pytest.mark.slow
stage = run_in


def make_project(root: Path, params: dict, nproc: int) -> Path:
    root.mkdir()
    params = {**params, "train": {**params["train"], "nproc": nproc}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("stages.download", "stages.preprocess"):
        assert stage(root, name, "--dataset", "brats2020").returncode == 0
    return root


def test_two_process_ddp_shards_the_data_writes_once_and_learns_like_one_process(tmp_path, params_dict):
    params_dict["data"]["datasets"] = ["brats2020"]
    params_dict["train"].update(epochs=6, batch_size=4, base_channels=8, learning_rate=0.005)
    single = make_project(tmp_path / "single", params_dict, nproc=1)
    double = make_project(tmp_path / "ddp", params_dict, nproc=2)

    result = stage(single, "stages.train", "--dataset", "brats2020", "--model", "unet")
    assert result.returncode == 0, result.stderr
    result = stage(double, "stages.train", "--dataset", "brats2020", "--model", "unet")
    assert result.returncode == 0, result.stderr[-3000:]

    # both ranks trained on disjoint halves of each epoch's shuffled slices
    seen = re.findall(r"rank (\d)/2 epoch 1: (\d+) slices, rows ([\d,.]+)", result.stderr)
    assert sorted(rank for rank, _, _ in seen) == ["0", "1"], result.stderr[-2000:]
    rows = {rank: set(r.rstrip(".").split(",")) - {""} for rank, _, r in seen}
    assert not rows["0"] & rows["1"]
    train_slices = len((double / "data/slices/brats2020/train/index.csv").read_text().splitlines()) - 1
    assert sum(int(n) for _, n, _ in seen) == train_slices

    # rank 0 alone wrote: one model, one log line per epoch
    curve = (double / "dvclive/brats2020/unet/plots/metrics/val_case_dice.tsv").read_text().splitlines()
    assert len(curve) == 1 + 6
    a = torch.load(single / "models/brats2020/unet/model.pt", weights_only=True)
    b = torch.load(double / "models/brats2020/unet/model.pt", weights_only=True)
    assert b["train_params"]["nproc"] == 2
    # the same total batch: the two runs learn comparably (not identically: the data order differs)
    assert abs(a["val_case_dice"] - b["val_case_dice"]) < 0.15, (a["val_case_dice"], b["val_case_dice"])
    assert b["val_case_dice"] > 0.5


def test_sync_batchnorm_on_cpu_is_refused_with_the_param(tmp_path, params_dict):
    params_dict["data"]["datasets"] = ["brats2020"]
    params_dict["train"].update(epochs=1, sync_batchnorm=True)
    project = make_project(tmp_path / "p", params_dict, nproc=2)
    result = stage(project, "stages.train", "--dataset", "brats2020", "--model", "unet")
    assert result.returncode == 1
    assert "train.sync_batchnorm: needs CUDA GPUs" in result.stderr
    assert "train.nproc=2" in result.stderr.strip().splitlines()[-1]
