"""The training loop: one straight function, resumable after a kill, on memory-mapped slices.

On CUDA it runs at the GPU's pace (train.speed): bf16 autocast, channels_last, fused AdamW,
optional torch.compile, cuDNN autotuning, batches read by DataLoader processes into pinned memory
and copied without blocking, augmentation batched on the GPU, and the loss read back only every
few dozen steps. On the CPU the same loop runs in fp32 with albumentations, as the sample run needs.

Every epoch ends with a checkpoint (model, optimiser, scheduler, best weights, history; see
btseg.training.checkpoint) written atomically. A rerun with the same settings continues from it; because each
epoch's batch order and augmentation are seeded from (seed, epoch), a resumed run ends with the
same weights as an uninterrupted one on CPU.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from btseg.config import SpeedParams, TrainParams
from btseg.models.prediction import autocast, autocast_dtype, memory_format, predict_probabilities
from btseg.preprocessing.slices import SliceSet
from btseg.scoring.metrics import confusion_counts, per_case_table, per_slice_table
from btseg.training.augment import Augmenter
from btseg.training.checkpoint import fingerprint, matching_checkpoint, save_checkpoint
from btseg.training.device_augment import DeviceAugmenter
from btseg.training.loader import make_loader
from btseg.training.losses import Loss
from btseg.training.threads import ThreadTuner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 writes every file)."""

    rank: int
    world: int

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def mean(self, value: float) -> float:
        """The mean of `value` over all processes."""
        tensor = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return float(tensor.item()) / self.world

    def barrier(self) -> None:
        torch.distributed.barrier()


SINGLE = Distributed(0, 1)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (state dicts without the `module.` prefix)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and batch."""


def case_scores(probabilities: np.ndarray, split: SliceSet, threshold: float) -> tuple[float, float]:
    """Mean per-case Dice and IoU (cases scored as volumes) at `threshold`, averaged over targets."""
    predicted = probabilities > threshold
    tables = [per_case_table(per_slice_table(confusion_counts(predicted[:, k], split.masks[:, k]), split.index))
              for k in range(split.masks.shape[1])]
    return float(np.mean([t["dice"].mean() for t in tables])), float(np.mean([t["iou"].mean() for t in tables]))


def make_loss(config: TrainParams) -> Loss:
    return Loss(config.loss, config.dice_weight, config.dice_smooth, config.dice_reduction,
                config.focal_gamma, config.tversky_alpha, config.tversky_beta)


def make_optimizer(model: nn.Module, config: TrainParams, device: torch.device | None = None) -> torch.optim.Optimizer:
    """The optimiser; Adam/AdamW use the fused CUDA kernel on a GPU (one launch for all parameters)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=config.momentum > 0)
    optimizer = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    fused = {"fused": True} if device is not None and device.type == "cuda" else {}
    return optimizer(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, **fused)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainParams, steps_per_epoch: int):
    """The LR schedule; `onecycle` steps per batch, the others per epoch (plateau on validation Dice)."""
    if config.schedule == "cosine":
        warmup, total = config.warmup_epochs, config.epochs

        def factor(epoch: int) -> float:  # epoch counts completed epochs
            if epoch < warmup:
                return (epoch + 1) / (warmup + 1)
            return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / max(1, total - warmup)))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5,
                                                          patience=config.plateau_patience)
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate, epochs=config.epochs,
                                                   steps_per_epoch=steps_per_epoch)
    return None


class WeightAverage:
    """An exponential moving average of a model's weights and batch-norm statistics (train.ema_decay),
    kept in a copy of the model that validation scores and the model file keeps.

    After the n-th step every floating-point entry of the state moves as
    `average = d * average + (1 - d) * current` with `d = min(decay, (1 + n) / (10 + n))`, so the
    first steps' random weights fade quickly; integer entries (batch-norm step counts) are copied.
    Training itself never reads the average: the optimiser's path is the same with it or without.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates, self.source = decay, 0, model
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        # looked up at every step, never kept: moving a module (prediction puts it in channels_last)
        # may give a tensor new storage, and a kept reference would then move a tensor no longer used
        pairs = list(zip(_tensors(self.model), _tensors(self.source), strict=True))
        floating = [(a, c) for a, c in pairs if a.is_floating_point()]
        if floating:  # one fused call for all tensors, as torch.optim.swa_utils' EMA does
            torch._foreach_lerp_([a for a, _ in floating], [c for _, c in floating], 1.0 - decay)
        for average, current in pairs:
            if not average.is_floating_point():
                average.copy_(current)

    def state(self) -> dict:
        return {"updates": self.updates, "state_dict": self.model.state_dict()}

    def restore(self, saved: dict) -> None:
        self.updates = int(saved["updates"])
        self.model.load_state_dict(saved["state_dict"])


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    """A module's parameters and buffers, in their fixed order (a copy of the module lists its own alike)."""
    return [*module.parameters(), *module.buffers()]


class Stepper:
    """One optimisation step exactly as `fit` runs it (benchmarks/bench.py times this same object).

    The model in channels_last and bf16 autocast for the forward pass where the device runs them
    fast (train.speed, resolved by btseg.models.prediction: CUDA, and CPUs with bf16 units), the loss
    in fp32, optionally torch.compile; on CUDA cuDNN autotuning, and batches arrive pinned and are
    copied without blocking, then widened from fp16/uint8 on the device.
    """

    def __init__(self, model: nn.Module, config: TrainParams, device: torch.device):
        speed = config.speed
        self.device, self.model, self.grad_clip = device, model, config.grad_clip
        self.layout = memory_format(speed.channels_last, device)
        if unwrap(model) is model:  # a DistributedDataParallel model was placed before wrapping (training.run)
            model.to(device, memory_format=self.layout)
        self.optimizer = make_optimizer(unwrap(model), config, device)  # after placing: fused needs CUDA parameters
        self.loss_fn = make_loss(config)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: autotune each convolution once
        self.forward = torch.compile(model) if speed.compile else model  # shares the parameters with `model`
        self.precision_setting = speed.precision
        self.precision = autocast_dtype(speed.precision, device)
        # after placing the model: the average lives on the same device, in the same layout
        self.average = WeightAverage(unwrap(model), config.ema_decay) if config.ema_decay > 0 else None

    def forward_backward(self, images: torch.Tensor, masks: torch.Tensor, augmenter: DeviceAugmenter | None = None,
                         epoch: int = 0, batch: int = 0) -> torch.Tensor:
        """Forward and backward pass of one batch; returns the loss (detached, still on the device)."""
        images = images.to(self.device, non_blocking=True).float()
        masks = masks.to(self.device, non_blocking=True).float()
        if augmenter is not None:
            images, masks = augmenter(images, masks, epoch, batch)
        images = images.contiguous(memory_format=self.layout)
        with autocast(self.device, self.precision):
            outputs = self.forward(images)
        loss = self.loss_fn.deep(_as_float(outputs), masks)  # the loss itself in fp32
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach()

    def update(self) -> None:
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        if self.average is not None:
            self.average.update()

    @property
    def kept(self) -> nn.Module:
        """The model validation scores and the best epoch keeps: the weight average, or the model itself."""
        return unwrap(self.model) if self.average is None else self.average.model


def augments_on_device(setting: str, device: torch.device) -> bool:
    """train.speed.augment_on: auto -> batched torch on a GPU, albumentations in the loader on a CPU
    (3-8x faster there per core than the batched code; docs/benchmarks.md)."""
    return setting == "device" or (setting == "auto" and device.type == "cuda")


def training_batches(train: SliceSet, config: TrainParams, device: torch.device,
                     dist: Distributed = SINGLE) -> tuple[torch.utils.data.DataLoader, object, DeviceAugmenter | None]:
    """The loader of training batches, its epoch plan, and the augmenter to run on the device (or None
    when augmentation is off or runs on the CPU in the loader: train.speed.augment_on)."""
    speed = config.speed
    on_device = augments_on_device(speed.augment_on, device)
    seed = config.seed + 7919 * dist.rank
    channels = tuple(train.meta["channels"])
    cpu_augmenter = Augmenter(config.augment, seed, channels)
    active = cpu_augmenter.active
    loader, plan = make_loader(train.images, train.masks, batch_size=config.batch_size // dist.world, seed=config.seed,
                               speed=speed, device=device,
                               augmenter=cpu_augmenter if active and not on_device else None,
                               rank=dist.rank, world=dist.world)
    return loader, plan, DeviceAugmenter(config.augment, seed, channels) if active and on_device else None


@dataclass(frozen=True)
class TrainResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_dice: float
    history: pd.DataFrame
    stopped_early: bool


def follows_load(config: TrainParams, device: torch.device, dist: Distributed) -> bool:
    """Whether fit tunes its thread count to the machine's load (train.speed.threads_follow_load):
    on a CPU, in a single process."""
    return config.speed.threads_follow_load and device.type == "cpu" and dist.world == 1


def steps_by_threads(history: pd.DataFrame) -> dict[str, int]:
    """Training steps run at each thread count over a run, from its epochs' rows (fit with the tuner on);
    the keys are strings, as they come back from JSON."""
    total: dict[int, int] = {}
    for counts in history.get("steps_by_threads", []):
        for threads, steps in (counts if isinstance(counts, dict) else {}).items():  # epochs run before: none
            total[int(threads)] = total.get(int(threads), 0) + int(steps)
    return {str(threads): total[threads] for threads in sorted(total)}


def fit(model: nn.Module, train: SliceSet, val: SliceSet, config: TrainParams, *, threshold: float,
        device: torch.device, checkpoint: Path | None = None, identity: dict | None = None,
        on_epoch: Callable[[dict], None] | None = None, dist: Distributed = SINGLE, tta: bool = False) -> TrainResult:
    """Train with early stopping on validation Dice, keeping the best epoch's weights.

    Validation Dice is the mean per-case Dice at `threshold` (with `tta`, of the flip-averaged
    predictions), the number evaluate reports. With train.ema_decay the weights validated and kept
    are the moving average of the weights (WeightAverage), not the last step's.
    With `checkpoint`, each epoch is saved there and a matching checkpoint is resumed.
    `on_epoch` receives each epoch's row of the history (for dvclive). Under torchrun (`dist`), the
    model is DistributedDataParallel, each process trains on its shard with batch_size / world,
    losses are averaged over processes and only rank 0 writes.
    """
    stepper = Stepper(model, config, device)
    optimizer, loss_fn = stepper.optimizer, stepper.loss_fn
    loader, plan, device_augmenter = training_batches(train, config, device, dist)
    steps = len(plan)
    scheduler = make_scheduler(optimizer, config, steps)
    check_every = 1 if device.type == "cpu" else 32  # reading the loss back waits for the GPU: not at every step
    tuner = ThreadTuner(torch.get_num_threads()) if follows_load(config, device, dist) else None
    if stepper.average is not None:
        log.info("validating and keeping a moving average of the weights (train.ema_decay %g)", config.ema_decay)
    key = fingerprint(config, identity or {})
    history: list[dict] = []
    best_dice, best_epoch, best_state, stale, start = -1.0, 0, None, 0, 1

    saved = matching_checkpoint(checkpoint, key)
    if saved:
        unwrap(model).load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        if stepper.average is not None:
            stepper.average.restore(saved["average"])
        history, best_dice, best_epoch, best_state, stale = (saved["history"], saved["best_dice"], saved["best_epoch"],
                                                             saved["best_state"], saved["stale"])
        start = saved["epoch"] + 1
        log.info("resuming from %s after epoch %d", checkpoint, saved["epoch"])

    stopped_early = bool(history) and config.early_stopping_patience > 0 and stale >= config.early_stopping_patience
    for epoch in range(start, config.epochs + 1):
        if stopped_early:
            break
        started = time.perf_counter()
        # batch order, dropout and augmentation depend only on (seed, epoch): resumable bit for bit
        torch.manual_seed(config.seed * 100_003 + epoch)
        random.seed(config.seed * 100_003 + epoch)
        plan.set_epoch(epoch)
        model.train()
        if tuner is not None:
            tuner.pause()
        losses: list[torch.Tensor] = []
        progress = tqdm(loader, total=steps, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False,
                        disable=None if dist.writer else True)
        for batch, (images, masks) in enumerate(progress, start=1):
            losses.append(stepper.forward_backward(images, masks, device_augmenter, epoch, batch))
            if batch % check_every == 0 or batch == steps:
                _check_finite(losses, epoch, batch, check_every)
                progress.set_postfix(loss=f"{losses[-1].item():.4f}")
            stepper.update()
            if tuner is not None:
                tuner.step_done()
            if config.schedule == "onecycle":
                scheduler.step()
        # every process scores the whole validation split with the same weights: the same decisions
        val_loss, val_dice, val_iou = _validate(stepper.kept, val, loss_fn, threshold, device, config.speed, tta)
        epoch_loss = float(torch.stack(losses).mean())
        train_loss = epoch_loss if dist.world == 1 else dist.mean(epoch_loss)
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_case_dice": val_dice,
               "val_case_iou": val_iou, "learning_rate": optimizer.param_groups[0]["lr"],
               "seconds": time.perf_counter() - started,
               **({} if tuner is None else {"steps_by_threads": tuner.take_counts()})}
        history.append(row)
        if config.schedule == "plateau":
            scheduler.step(val_dice)
        elif scheduler is not None and config.schedule != "onecycle":
            scheduler.step()
        if val_dice > best_dice:
            best_dice, best_epoch, stale = val_dice, epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in stepper.kept.state_dict().items()}
        else:
            stale += 1
        log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val case Dice %.4f (%.1f s%s)", epoch, config.epochs,
                 row["train_loss"], val_loss, val_dice, row["seconds"],
                 "" if tuner is None else f", {torch.get_num_threads()} threads")
        stopped_early = config.early_stopping_patience > 0 and stale >= config.early_stopping_patience
        if checkpoint is not None and dist.writer:
            save_checkpoint(checkpoint, key, epoch, unwrap(model), optimizer, scheduler, history, best_dice, best_epoch,
                            best_state, stale, None if stepper.average is None else stepper.average.state())
        if dist.world > 1:
            dist.barrier()  # the checkpoint is complete before any process can be killed into a resume
        if on_epoch is not None and dist.writer:
            on_epoch(row)
        if stopped_early:
            log.info("early stop: no validation gain in %d epochs; best epoch %d", stale, best_epoch)
    return TrainResult(best_state, best_epoch, best_dice, pd.DataFrame(history), stopped_early)


def _as_float(outputs: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    return outputs.float() if isinstance(outputs, torch.Tensor) else [out.float() for out in outputs]


def _check_finite(losses: list[torch.Tensor], epoch: int, batch: int, window: int) -> None:
    """Raise Diverged naming the first batch of the last `window` whose loss is NaN or infinite."""
    recent = torch.stack(losses[-window:])
    finite = torch.isfinite(recent)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0, 0])
        bad_batch = batch - len(recent) + 1 + first
        raise Diverged(f"loss became {recent[first].item()} at epoch {epoch}, batch {bad_batch}")


@torch.no_grad()
def _validate(model: nn.Module, val: SliceSet, loss_fn: Loss, threshold: float, device: torch.device,
              speed: SpeedParams, tta: bool = False) -> tuple[float, float, float]:
    probabilities = predict_probabilities(model, val.images, device, precision=speed.precision,
                                          channels_last=speed.channels_last, tta=tta)
    # the loss on probabilities turned back into logits: one pass over the validation split
    logits = torch.logit(torch.from_numpy(probabilities).clamp(1e-6, 1 - 1e-6))
    val_loss = float(loss_fn(logits, torch.from_numpy(val.masks.astype(np.float32))))
    dice, iou = case_scores(probabilities, val, threshold)
    return val_loss, dice, iou
