"""Training batches from the memory-mapped slice arrays, through a torch DataLoader.

Each DataLoader item is a whole batch: its rows are read from the memmap with one sorted fancy
index (one pass over the file's pages instead of B random reads), optionally augmented on the CPU
(albumentations), and handed over as tensors: images stay float16 and masks uint8 unless the CPU
augmented them, so half the bytes cross to the GPU, where they are widened. On CUDA the loader
pins them for non-blocking copies.

The epoch's batch order is decided in the main process (EpochPlan) and every batch's
augmentation is seeded by (seed, epoch, batch): the batches are the same for any number of
loader processes, after a resume too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from btseg.config import SpeedParams
from btseg.training.augment import Augmenter

log = logging.getLogger("btseg.training.loader")


@dataclass(frozen=True)
class BatchKey:
    """What a loader process needs to produce one batch."""

    epoch: int
    number: int  # 1-based within the epoch
    rows: np.ndarray  # sorted row numbers


class EpochPlan(torch.utils.data.Sampler):
    """The batches of one epoch, shuffled from (seed, epoch); with several processes (torchrun), this
    process's disjoint share from torch's DistributedSampler (the same permutation on every process)."""

    def __init__(self, count: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.count, self.batch_size, self.seed, self.rank, self.world = count, batch_size, seed, rank, world
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rows(self) -> np.ndarray:
        if self.world == 1:
            return np.random.default_rng([self.seed, self.epoch]).permutation(self.count)
        sampler = torch.utils.data.DistributedSampler(range(self.count), num_replicas=self.world, rank=self.rank,
                                                      shuffle=True, seed=self.seed)
        sampler.set_epoch(self.epoch)
        rows = np.fromiter(sampler, dtype=np.int64)
        log.info("rank %d/%d epoch %d: %d slices, rows %s", self.rank, self.world, self.epoch, len(rows),
                 ",".join(map(str, rows[:8])) + ("..." if len(rows) > 8 else ""))
        return rows

    def __iter__(self) -> Iterator[BatchKey]:
        order = self.rows()
        for number, start in enumerate(range(0, len(order), self.batch_size), start=1):
            yield BatchKey(self.epoch, number, np.sort(order[start:start + self.batch_size]))

    def __len__(self) -> int:
        share = -(-self.count // self.world) if self.world > 1 else self.count
        return -(-share // self.batch_size)


class SliceBatches(torch.utils.data.Dataset):
    """Reads (and on the CPU augments) the batch a BatchKey names. Sent to loader processes by file
    name, not by content: each process maps the arrays itself."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, augmenter: Augmenter | None):
        self.images, self.masks, self.augmenter = images, masks, augmenter

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for name in ("images", "masks"):
            array = state[name]
            if isinstance(array, np.memmap) and array.filename:
                state[name] = ("memmap", array.filename, array.shape)
        return state

    def __setstate__(self, state: dict) -> None:
        for name in ("images", "masks"):
            if isinstance(state[name], tuple):
                _, filename, shape = state[name]
                state[name] = np.load(filename, mmap_mode="r")
                if state[name].shape != shape:
                    raise RuntimeError(f"{filename}: changed while training ({state[name].shape}, expected {shape})")
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: BatchKey) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = self.images[key.rows], self.masks[key.rows]
        if self.augmenter is not None:
            images, masks = self.augmenter(images.astype(np.float32), masks, key.epoch, key.number)
        return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(np.ascontiguousarray(masks))


def loader_workers(setting: str | int, device: torch.device) -> int:
    """train.speed.loader_workers: auto -> none on CPU (the training shares the same cores), on CUDA
    min(8, cores - 1) (measured on a 16-core H100 machine: 8 and 14 loader processes reached the
    same ceiling; docs/benchmarks.md)."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(8, cores - 1))


def _worker_init(_: int) -> None:
    cv2.setNumThreads(1)  # one loader process, one core: OpenCV's own threads would oversubscribe them


def make_loader(images: np.ndarray, masks: np.ndarray, *, batch_size: int, seed: int, speed: SpeedParams,
                device: torch.device, augmenter: Augmenter | None, rank: int = 0,
                world: int = 1) -> tuple[torch.utils.data.DataLoader, EpochPlan]:
    """A DataLoader of whole batches and the plan to set each epoch on (`plan.set_epoch(epoch)`)."""
    plan = EpochPlan(len(images), batch_size, seed, rank, world)
    workers = loader_workers(speed.loader_workers, device)
    loader = torch.utils.data.DataLoader(
        SliceBatches(images, masks, augmenter), batch_size=None, sampler=plan, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=speed.prefetch_batches if workers else None, worker_init_fn=_worker_init if workers else None,
        # not fork: a child forked from a process whose OpenCV/OpenMP thread pools (or CUDA) already ran can hang
        multiprocessing_context="forkserver" if workers else None)
    return loader, plan
