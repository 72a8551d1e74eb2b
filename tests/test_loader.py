"""The training data path: every slice once per epoch, the same batches for any number of loader
processes, memory-mapped arrays handed to those processes by file name."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from btseg.config import parse_params
from btseg.training.augment import Augmenter
from btseg.training.loader import EpochPlan, SliceBatches, loader_workers, make_loader
from tests.conftest import default_params


def speed(**overrides):
    raw = default_params()
    raw["train"]["speed"].update(overrides)
    return parse_params(raw).train.speed


def arrays(tmp_path, count=37, size=16):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "images.npy", rng.normal(0, 1, (count, 2, size, size)).astype(np.float16))
    np.save(tmp_path / "masks.npy", (rng.random((count, 1, size, size)) > 0.7).astype(np.uint8))
    return np.load(tmp_path / "images.npy", mmap_mode="r"), np.load(tmp_path / "masks.npy", mmap_mode="r")


def test_plan_serves_every_slice_once_per_epoch_in_sorted_batches_reshuffled_per_epoch():
    plan = EpochPlan(37, 8, seed=3)
    epochs = []
    for epoch in (1, 2):
        plan.set_epoch(epoch)
        keys = list(plan)
        assert len(keys) == len(plan) == 5 and [k.number for k in keys] == [1, 2, 3, 4, 5]
        assert all(np.array_equal(k.rows, np.sort(k.rows)) for k in keys)
        rows = np.concatenate([k.rows for k in keys])
        assert sorted(rows.tolist()) == list(range(37))
        epochs.append(rows)
    assert not np.array_equal(epochs[0], epochs[1])
    again = EpochPlan(37, 8, seed=3)
    again.set_epoch(2)
    np.testing.assert_array_equal(np.concatenate([k.rows for k in again]), epochs[1])


def test_distributed_plans_split_each_epoch_into_disjoint_shares():
    shares = []
    for rank in (0, 1):
        plan = EpochPlan(40, 4, seed=1, rank=rank, world=2)
        plan.set_epoch(3)
        shares.append(np.concatenate([k.rows for k in plan]))
        assert len(plan) == 5
    assert not set(shares[0]) & set(shares[1])
    assert sorted(np.concatenate(shares).tolist()) == list(range(40))


def test_memory_mapped_arrays_travel_by_file_name(tmp_path):
    images, masks = arrays(tmp_path, count=500, size=32)
    dataset = SliceBatches(images, masks, None)
    payload = pickle.dumps(dataset)
    assert len(payload) < 2000  # not the 2 MB of the arrays
    copy = pickle.loads(payload)
    key = next(iter(EpochPlan(500, 16, seed=0)))
    for (a, b) in zip(dataset[key], copy[key]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert dataset[key][0].dtype == torch.float16 and dataset[key][1].dtype == torch.uint8  # widened on the device


@pytest.mark.slow
def test_batches_are_the_same_with_and_without_loader_processes(tmp_path):
    images, masks = arrays(tmp_path)
    raw = default_params()
    raw["train"]["augment"].update(hflip=0.5, affine=0.5, noise=0.5)
    augment = parse_params(raw).train.augment
    seen = {}
    for workers in (0, 2):
        loader, plan = make_loader(images, masks, batch_size=8, seed=5, speed=speed(loader_workers=workers),
                                   device=torch.device("cpu"), augmenter=Augmenter(augment, 11))
        batches = []
        for epoch in (1, 2):
            plan.set_epoch(epoch)
            batches += [(i.clone(), m.clone()) for i, m in loader]
        seen[workers] = batches
    assert len(seen[0]) == 10
    for (i0, m0), (i2, m2) in zip(seen[0], seen[2]):
        torch.testing.assert_close(i0, i2, rtol=0, atol=0)
        torch.testing.assert_close(m0, m2, rtol=0, atol=0)
    assert seen[0][0][0].dtype == torch.float32  # augmented on the CPU: float32


@pytest.mark.parametrize(("setting", "device", "expected"), [("auto", "cpu", 0), (3, "cpu", 3), (0, "cuda", 0)])
def test_loader_workers_setting(setting, device, expected):
    assert loader_workers(setting, torch.device(device)) == expected


def test_auto_loader_workers_on_cuda_leave_a_core_and_stop_at_eight(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(16)))
    assert loader_workers("auto", torch.device("cuda")) == 8
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0, 1})
    assert loader_workers("auto", torch.device("cuda")) == 1
