"""Benchmark: how fast training and inference run on this machine, and where the time goes.

    python benchmarks/bench.py --model unet --base-channels 32 --batch 32 --size 240 --channels 4

For one model/size/batch it measures, in one run:
- seed_style_fp32: the plain loop (fp32, default layout, unfused optimiser, loss read back every
  step) on batches already on the device: the baseline;
- synthetic: the pipeline's training step (btseg.training.loop.Stepper: bf16 autocast on CUDA,
  channels_last, fused AdamW, torch.compile with --compile) on batches already on the device;
- real: the same step fed by the pipeline's data path (memory-mapped fp16 slices written to a
  temporary folder, DataLoader processes, augmentation as --augment and train.speed.augment_on).
  real / synthetic is what the data path costs (1.0 = nothing);
- flops: a training step's floating-point operations per image (torch.utils.flop_counter), the
  achieved TFLOP/s, and a large matrix product's TFLOP/s on this device for scale;
- peak device memory of the pipeline's step; inference of one --volume-slices volume
  (preprocessed fp16 on the host -> binary mask on the host), seconds and slices/s;
- with --epoch-slices N: one full training epoch of N generated slices through btseg.training.loop.fit,
  logged like a pipeline run.

With --variants (the CPU comparison of docs/benchmarks.md):

    python benchmarks/bench.py --device cpu --base-channels 16 --batch 16 --size 128 --channels 1 \
        --variants fp32:contiguous,fp32:channels_last,bf16:contiguous,bf16:channels_last --competitor 0.5

it measures, side by side in one run and interleaved over --rounds rounds (the median kept), the
seed-style fp32 loop and, for each precision:layout[:compile] variant, the pipeline's step through
the data path and one --volume-slices volume through bts-predict's path (predict_probabilities,
its default batch), each with its ratio to fp32:contiguous (the pipeline on a CPU before bf16);
--competitor F runs a niced (nice 19) process that keeps F of one core busy meanwhile.

Prints a table and writes everything to --json. Settings not given here (loss, optimiser, the rest
of train.speed) come from params.yaml.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from btseg.cli import run_stage
from btseg.config import TrainParams, load_params, parse_params
from btseg.errors import PipelineError
from btseg.fileio import write_json
from btseg.models import MODELS, create_model
from btseg.models.prediction import (
    autocast_dtype,
    memory_format,
    pick_device,
    predict_masks,
    predict_probabilities,
    set_threads,
)
from btseg.preprocessing.slices import SliceSet
from btseg.training.augment import TRANSFORMS
from btseg.training.loader import loader_workers
from btseg.training.loop import Stepper, augments_on_device, fit, make_loss, training_batches

log = logging.getLogger("benchmarks.bench")

BRATS_VOLUME = 155


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks/bench.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="params file for everything not set here")
    parser.add_argument("--model", default="unet", choices=list(MODELS))
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32, help="slices per training step")
    parser.add_argument("--size", type=int, default=240, help="slice height and width")
    parser.add_argument("--channels", type=int, default=4, help="input channels (4 MRI sequences)")
    parser.add_argument("--targets", type=int, default=1, help="output channels (1 whole tumor, 3 WT/TC/ET)")
    parser.add_argument("--steps", type=int, default=50, help="timed training steps per measurement")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (autotuning, compilation)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (train.speed.compile)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], help="default: train.speed.precision")
    parser.add_argument("--workers", help="loader processes (default: train.speed.loader_workers)")
    parser.add_argument("--augment-on", choices=["auto", "cpu", "device"], help="default: train.speed.augment_on")
    parser.add_argument("--augment", default="hflip=0.5,affine=0.5",
                        help="train.augment probabilities for the real data path, e.g. hflip=0.5,affine=0.5,"
                             "brightness_contrast=0.5; 'params' = as params.yaml; 'none' = off")
    parser.add_argument("--slices", type=int, default=0,
                        help="generated slices for the real data path (default: enough for warm-up + steps)")
    parser.add_argument("--volume-slices", type=int, default=BRATS_VOLUME, help="slices of the inference volume")
    parser.add_argument("--epoch-slices", type=int, default=0,
                        help="also train one full epoch of this many generated slices (BraTS 2020: 57195)")
    parser.add_argument("--skip-baseline", action="store_true", help="skip the seed-style fp32 loop")
    parser.add_argument("--ddp", action="store_true",
                        help="also time the step wrapped in DistributedDataParallel with one process "
                             "(train.nproc's path)")
    parser.add_argument("--profile", help="also write a torch.profiler summary of 10 data-path steps to this file")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--workdir", help="folder for the generated slice arrays (default: a temporary folder)")
    parser.add_argument("--json", default="bench.json", help="where to write the results")
    parser.add_argument("--variants", help="precision:layout[:compile] variants to compare side by side, comma-"
                                           "separated: precision fp32/bf16/auto, layout contiguous/channels_last")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0: one per core)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of --variants (median kept)")
    parser.add_argument("--competitor", type=float, default=0.0,
                        help="share of one core (0-1] a niced busy process takes while measuring")
    parser.add_argument("--competitor-session", choices=["same", "other"], default="other",
                        help="other (default): the competitor in a session of its own, as a job in another terminal "
                             "(Linux's autogroup scheduling then weighs it like any process, niced or not); same: "
                             "a child of this session, where nice 19 leaves it only idle time")
    return parser


def main(argv: Sequence[str]) -> None:
    args = arguments().parse_args(argv)
    device = pick_device(args.device)
    set_threads(args.threads)
    config = bench_config(args)
    log.info("device %s; %s, %d base channels, depth %d, batch %d of %d x %d x %d", describe(device), args.model,
             args.base_channels, args.depth, args.batch, args.channels, args.size, args.size)
    results: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": describe(device),
                     "torch": torch.__version__, "python": platform.python_version(),
                     "settings": {k: v for k, v in vars(args).items() if k not in ("params", "json", "workdir")},
                     "train_speed": config.speed.model_dump(),
                     "resolved": {"loader_workers": loader_workers(config.speed.loader_workers, device),
                                  "augment_on": ("device" if augments_on_device(config.speed.augment_on, device)
                                                 else "cpu"),
                                  "autocast": str(autocast_dtype(config.speed.precision, device)
                                                  or "fp32 (off)").removeprefix("torch.")}}
    make = model_factory(args)
    if args.variants:
        with competing_process(args.competitor, args.competitor_session == "other"):
            results["variants"] = compare_variants(parse_variants(args.variants), make, config, args, device)
        results["competitor_core_share"], results["competitor_session"] = args.competitor, args.competitor_session
        write_json(Path(args.json), results)
        print(variants_table(results))
        log.info("results written to %s", args.json)
        return

    if not args.skip_baseline:
        results["seed_style_fp32"] = timed_steps(seed_style_step(make(), config, device, args), args, device)
    model = make()
    stepper = Stepper(model, config, device)
    reset_peak(device)
    results["synthetic"] = timed_steps(synthetic_step(stepper, args, device), args, device)
    results["synthetic"]["peak_memory_gib"] = peak_gib(device)
    if args.ddp:
        results["ddp_one_process"] = timed_steps(synthetic_step(ddp_stepper(make(), config, device), args, device),
                                                 args, device)
        results["ddp_over_plain"] = results["ddp_one_process"]["images_per_s"] / results["synthetic"]["images_per_s"]
    results["flops_per_image"] = training_flops(make(), args, device) / args.batch
    results["matmul_tflops"] = matmul_tflops(device)

    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        slices = args.slices or args.batch * (args.warmup + args.steps)
        data = generate_slices(Path(folder) / "train", slices, args)
        step = real_step(stepper, data, config, device)
        results["real"] = timed_steps(step, args, device)
        if args.profile:
            profile_steps(step, device, Path(args.profile))
        if args.epoch_slices:
            results["epoch"] = full_epoch(make(), config, Path(folder) / "epoch", args, device)
    results["inference"] = inference_volume(stepper, args, device)
    summarise(results)
    write_json(Path(args.json), results)
    print(table(results))
    log.info("results written to %s", args.json)


def bench_config(args) -> TrainParams:
    """params.yaml's train section with the benchmark's model size, batch and speed settings."""
    raw = load_params(args.params).model_dump()
    train = raw["train"]
    train.update(models=[args.model], batch_size=args.batch, base_channels=args.base_channels, depth=args.depth,
                 epochs=1, early_stopping_patience=0, deep_supervision=False, schedule="constant")
    speed = train["speed"]
    speed["compile"] = args.compile
    if args.precision:
        speed["precision"] = args.precision
    if args.augment_on:
        speed["augment_on"] = args.augment_on
    if args.workers is not None:
        speed["loader_workers"] = args.workers if args.workers == "auto" else _int(args.workers, "--workers")
    if args.augment != "params":
        augment = train["augment"]
        for name in TRANSFORMS:
            augment[name] = 0.0
        for item in filter(None, args.augment.split(",")) if args.augment != "none" else []:
            name, _, value = item.partition("=")
            if name not in augment:
                raise PipelineError(f"--augment: unknown transform {name!r}; "
                                    f"expected names of train.augment: {sorted(augment)}")
            augment[name] = _float(value, f"--augment {name}")
    raw["preprocess"]["size"] = args.size
    return parse_params(raw, source=f"{args.params} with the benchmark's options (--size is preprocess.size, "
                                    "--batch train.batch_size, --base-channels/--depth train.*)").train


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise PipelineError(f"{what}: expected a whole number or auto, got {text!r}") from None


def _float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise PipelineError(f"{what}: expected a probability like 0.5, got {text!r}") from None


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def model_factory(args) -> Callable[[], torch.nn.Module]:
    def make() -> torch.nn.Module:
        torch.manual_seed(0)
        return create_model(args.model, in_channels=args.channels, out_channels=args.targets,
                            base_channels=args.base_channels, depth=args.depth)
    return make


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def random_batches(args, device: torch.device, count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A few distinct fp16 image / uint8 mask batches, as the loader delivers them, already on the device."""
    generator = torch.Generator().manual_seed(1)
    shape = (args.batch, args.channels, args.size, args.size)
    return [(torch.randn(shape, generator=generator).half().to(device),
             (torch.rand((args.batch, args.targets, args.size, args.size), generator=generator) > 0.9)
             .to(torch.uint8).to(device))
            for _ in range(count)]


def timed_steps(step: Callable[[int], None], args, device: torch.device) -> dict:
    """Run `warmup` untimed then `steps` timed calls of step(i); images/s over the timed ones."""
    for i in range(args.warmup):
        step(i)
    synchronize(device)
    started = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        step(i)
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "steps": args.steps, "images_per_s": args.steps * args.batch / seconds}


def seed_style_step(model: torch.nn.Module, config: TrainParams, device: torch.device, args) -> Callable[[int], None]:
    """The loop the seed projects wrote: fp32, default layout, plain AdamW, loss.item() each step
    (the same loss as the pipeline's, params.yaml train.loss)."""
    torch.backends.cudnn.benchmark = False
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    loss_fn = make_loss(config)
    batches = [(images.float(), masks.float()) for images, masks in random_batches(args, device)]

    def step(i: int) -> None:
        images, masks = batches[i % len(batches)]
        loss = loss_fn(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()
    return step


def synthetic_step(stepper: Stepper, args, device: torch.device) -> Callable[[int], None]:
    batches = random_batches(args, device)
    stepper.model.train()

    def step(i: int) -> None:
        stepper.forward_backward(*batches[i % len(batches)])
        stepper.update()
    return step


def real_step(stepper: Stepper, data: SliceSet, config: TrainParams, device: torch.device) -> Callable[[int], None]:
    """The training step fed by the pipeline's loader (and device augmentation), epoch after epoch."""
    loader, plan, augmenter = training_batches(data, config, device)
    state = {"epoch": 0, "batch": 0, "iterator": iter(())}
    stepper.model.train()

    def step(_: int) -> None:
        try:
            images, masks = next(state["iterator"])
        except StopIteration:
            state["epoch"] += 1
            plan.set_epoch(state["epoch"])
            state["iterator"], state["batch"] = iter(loader), 0
            images, masks = next(state["iterator"])
        state["batch"] += 1
        stepper.forward_backward(images, masks, augmenter, state["epoch"], state["batch"])
        stepper.update()
    return step


def ddp_stepper(model: torch.nn.Module, config: TrainParams, device: torch.device) -> Stepper:
    """The pipeline's step on a DistributedDataParallel model in a one-process group, placed as train does."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    wrapped = torch.nn.parallel.DistributedDataParallel(
        model.to(device, memory_format=memory_format(config.speed.channels_last, device)),
        device_ids=[device.index or 0] if device.type == "cuda" else None)
    return Stepper(wrapped, config, device)


def profile_steps(step: Callable[[int], None], device: torch.device, path: Path, steps: int = 10) -> None:
    """Where a data-path step's time goes: torch.profiler's table of the most expensive operations."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        for i in range(steps):
            step(i)
        synchronize(device)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    path.write_text(profiler.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=60))
    log.info("profile of %d data-path steps written to %s", steps, path)


def training_flops(model: torch.nn.Module, args, device: torch.device) -> float:
    """Floating-point operations of one training step (forward + backward) on a batch, counted by
    torch.utils.flop_counter (matrix products and convolutions: 2 per multiply-add)."""
    model.to(device).train()
    images, masks = random_batches(args, device, count=1)[0]
    counter = FlopCounterMode(display=False)
    with counter:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images.float()), masks.float())
        loss.backward()
    return float(counter.get_total_flops())


def matmul_tflops(device: torch.device) -> dict:
    """A large matrix product's TFLOP/s: bf16 on CUDA (what tensor cores reach), fp32 on a CPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    repeats, started = 20, time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return {"dtype": str(dtype).removeprefix("torch."), "n": n,
            "tflops": 2 * n**3 * repeats / (time.perf_counter() - started) / 1e12}


def generate_slices(folder: Path, count: int, args) -> SliceSet:
    """`count` fp16 slices and uint8 masks as memory-mapped .npy files (a pool of distinct slices repeated)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    pool = rng.normal(0, 1, (min(count, 64), args.channels, args.size, args.size)).astype(np.float16)
    yy, xx = np.mgrid[0:args.size, 0:args.size]
    disc = ((yy - args.size / 2) ** 2 + (xx - args.size / 3) ** 2 < (args.size / 8) ** 2).astype(np.uint8)
    images = np.lib.format.open_memmap(folder / "images.npy", "w+", np.float16,
                                       (count, args.channels, args.size, args.size))
    masks = np.lib.format.open_memmap(folder / "masks.npy", "w+", np.uint8, (count, args.targets, args.size, args.size))
    for start in range(0, count, len(pool)):
        rows = min(len(pool), count - start)
        images[start:start + rows] = pool[:rows]
        masks[start:start + rows] = disc
    images.flush()
    masks.flush()
    del images, masks
    index = pd.DataFrame({"row": range(count), "case_id": [f"case{i // BRATS_VOLUME:04d}" for i in range(count)],
                          "slice_index": [i % BRATS_VOLUME for i in range(count)], "source_file": "",
                          "tumor_pixels": int(disc.sum())})
    return SliceSet(np.load(folder / "images.npy", mmap_mode="r"), np.load(folder / "masks.npy", mmap_mode="r"),
                    index, {"channels": ["c"] * args.channels, "size": args.size})


def full_epoch(model: torch.nn.Module, config: TrainParams, folder: Path, args, device: torch.device) -> dict:
    """One epoch of `--epoch-slices` generated slices through the pipeline's fit (validation included)."""
    log.info("generating %d slices for one full epoch in %s", args.epoch_slices, folder)
    train = generate_slices(folder / "train", args.epoch_slices, args)
    val = generate_slices(folder / "val", BRATS_VOLUME, args)
    started = time.perf_counter()
    result = fit(model, train, val, config, threshold=0.5, device=device)
    seconds = time.perf_counter() - started
    row = result.history.iloc[0].to_dict()
    return {"slices": args.epoch_slices, "seconds": seconds, "images_per_s": args.epoch_slices / seconds,
            "train_loss": row["train_loss"], "val_case_dice": row["val_case_dice"]}


def inference_volume(stepper: Stepper, args, device: torch.device, repeats: int = 10) -> dict:
    """One volume, preprocessed fp16 on the host, to a binary uint8 mask on the host, in one call."""
    volume = (np.random.default_rng(3).normal(0, 1, (args.volume_slices, args.channels, args.size, args.size))
              .astype(np.float16))
    model, precision = stepper.forward, stepper.precision_setting  # compiled when --compile
    for _ in range(3):
        predict_masks(model, volume, device, 0.5, batch_size=args.volume_slices, precision=precision)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        mask = predict_masks(model, volume, device, 0.5, batch_size=args.volume_slices, precision=precision)
        times.append(time.perf_counter() - started)
    assert mask.shape == (args.volume_slices, args.targets, args.size, args.size) and mask.dtype == np.uint8
    seconds = float(np.median(times))
    return {"slices": args.volume_slices, "seconds": seconds, "slices_per_s": args.volume_slices / seconds}


VARIANT_BASE = "fp32:contiguous"  # the pipeline on a CPU before bf16: the ratios' denominator


def parse_variants(text: str) -> list[tuple[str, str, bool]]:
    """'fp32:contiguous,bf16:channels_last:compile' -> [(precision, layout, compile), ...]."""
    variants = []
    for item in filter(None, text.split(",")):
        precision, layout, *rest = item.split(":") + [""]
        if precision not in ("fp32", "bf16", "auto") or layout not in ("contiguous", "channels_last") \
                or rest[0] not in ("", "compile"):
            raise PipelineError(f"--variants: {item!r} is not precision:layout[:compile] with precision fp32, bf16 "
                                "or auto and layout contiguous or channels_last")
        variants.append((precision, layout, rest[0] == "compile"))
    return variants


def variant_name(variant: tuple[str, str, bool]) -> str:
    return ":".join(variant[:2]) + (":compile" if variant[2] else "")


def compare_variants(variants: list[tuple[str, str, bool]], make: Callable[[], torch.nn.Module],
                     config: TrainParams, args, device: torch.device) -> dict:
    """The seed-style loop and each variant's data-path step and volume prediction, in interleaved
    rounds (so a machine's drift falls on every variant alike); medians and ratios to VARIANT_BASE."""
    volume = (np.random.default_rng(3).normal(0, 1, (args.volume_slices, args.channels, args.size, args.size))
              .astype(np.float16))
    measured: dict[str, dict[str, list[float]]] = {} if args.skip_baseline else {"seed_style_fp32": {}}
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        data = generate_slices(Path(folder) / "train", args.slices or args.batch * (args.warmup + args.steps), args)
        runs = {}
        for variant in variants:
            speed = config.speed.model_copy(update={"precision": variant[0], "compile": variant[2],
                                                    "channels_last": variant[1] == "channels_last"})
            variant_config = config.model_copy(update={"speed": speed})
            stepper = Stepper(make(), variant_config, device)
            step = real_step(stepper, data, variant_config, device)
            started = time.perf_counter()
            step(0)  # the first step alone: where torch.compile compiles
            synchronize(device)
            measured[variant_name(variant)] = {"first_step_s": [time.perf_counter() - started]}
            runs[variant_name(variant)] = (step, stepper, speed)
        seed_style = None if args.skip_baseline else seed_style_step(make(), config, device, args)
        for round_ in range(args.rounds):
            log.info("round %d of %d", round_ + 1, args.rounds)
            if seed_style is not None:
                measured["seed_style_fp32"].setdefault("train", []).append(
                    timed_steps(seed_style, args, device)["images_per_s"])
            for name, (step, stepper, speed) in runs.items():
                entry = measured.setdefault(name, {})
                entry.setdefault("train", []).append(timed_steps(step, args, device)["images_per_s"])
                entry.setdefault("predict", []).append(
                    volume_rate(stepper.forward, volume, device, speed.precision, speed.channels_last))
                stepper.model.train()
    first = {name: entry.pop("first_step_s") for name, entry in measured.items() if "first_step_s" in entry}
    result = {name: {f"{kind}_images_per_s": float(np.median(rates)) for kind, rates in entry.items()}
              | {f"{kind}_rounds": rates for kind, rates in entry.items()}
              | ({"first_step_s": first[name][0]} if name in first else {}) for name, entry in measured.items()}
    base = result.get(VARIANT_BASE)
    for entry in result.values():
        for kind in ("train", "predict"):
            if base is not None and f"{kind}_images_per_s" in entry:
                entry[f"{kind}_over_fp32_contiguous"] = entry[f"{kind}_images_per_s"] / base[f"{kind}_images_per_s"]
    return result


def volume_rate(model: torch.nn.Module, volume: np.ndarray, device: torch.device, precision: str,
                channels_last: bool) -> float:
    """Slices/s of one volume through predict_probabilities with its default batch (bts-predict's path)."""
    predict_probabilities(model, volume[:8], device, precision=precision, channels_last=channels_last)
    synchronize(device)
    started = time.perf_counter()
    predict_probabilities(model, volume, device, precision=precision, channels_last=channels_last)
    synchronize(device)
    return len(volume) / (time.perf_counter() - started)


@contextlib.contextmanager
def competing_process(share: float, own_session: bool = True):
    """A nice-19 process keeping `share` of one core busy (busy 10 ms in every 10 / share), as another
    user's job on a shared machine, in a session of its own (`own_session`) or this one; nothing with
    share 0."""
    if not share:
        yield
        return
    if not 0 < share <= 1:
        raise PipelineError(f"--competitor: {share} is not a share of one core in (0, 1]")
    code = ("import time\nwhile True:\n    t = time.perf_counter()\n    while time.perf_counter() - t < 0.01: pass\n"
            f"    time.sleep({0.01 * (1 / share - 1)!r})")
    process = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", code], start_new_session=own_session)
    log.info("competing process %d: nice 19, %.0f%% of one core", process.pid, 100 * share)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def variants_table(results: dict) -> str:
    lines = [f"{results['device']}, torch {results['torch']}, {results['date']}"
             + (f"; niced competitor at {results['competitor_core_share']:.0%} of a core, "
                f"{results['competitor_session']} session"
                if results["competitor_core_share"] else ""),
             f"{'variant':<34}{'train img/s':>12}{'x':>7}{'predict img/s':>15}{'x':>7}"]
    for name, r in results["variants"].items():
        train, predict = r.get("train_images_per_s"), r.get("predict_images_per_s")
        lines.append(f"{name:<34}{train:>12.1f}{r.get('train_over_fp32_contiguous', float('nan')):>7.2f}"
                     + (f"{predict:>15.1f}{r.get('predict_over_fp32_contiguous', float('nan')):>7.2f}"
                        if predict is not None else f"{'-':>15}{'':>7}"))
    return "\n".join(lines)


def summarise(results: dict) -> None:
    flops = results["flops_per_image"]
    for name in ("seed_style_fp32", "synthetic", "real"):
        if name in results:
            results[name]["tflops"] = results[name]["images_per_s"] * flops / 1e12
            results[name]["share_of_matmul"] = results[name]["tflops"] / results["matmul_tflops"]["tflops"]
    results["real_over_synthetic"] = results["real"]["images_per_s"] / results["synthetic"]["images_per_s"]
    if "seed_style_fp32" in results:
        results["speedup_over_seed_style"] = (results["real"]["images_per_s"]
                                              / results["seed_style_fp32"]["images_per_s"])


def table(results: dict) -> str:
    lines = [f"{results['device']}, torch {results['torch']}, {results['date']}",
             f"{'measurement':<28}{'images/s':>10}{'TFLOP/s':>10}{'of matmul':>11}{'peak GiB':>10}"]
    labels = {"seed_style_fp32": "seed-style fp32 (on device)", "synthetic": "pipeline step (on device)",
              "real": "pipeline step (data path)"}
    for name, label in labels.items():
        if name in results:
            r = results[name]
            peak = r.get("peak_memory_gib")
            lines.append(f"{label:<28}{r['images_per_s']:>10.0f}{r['tflops']:>10.2f}{r['share_of_matmul']:>10.0%}"
                         f"{(f'{peak:.1f}' if peak is not None else '-'):>10}")
    if "ddp_one_process" in results:
        lines.append(f"{'DDP, one process (on device)':<28}{results['ddp_one_process']['images_per_s']:>10.0f}"
                     f"   ({results['ddp_over_plain']:.3f} of the plain step)")
    speedup = results.get("speedup_over_seed_style")
    lines.append(f"data path / on device: {results['real_over_synthetic']:.2f}"
                 + (f"; speed-up over seed-style: {speedup:.2f}x" if speedup is not None else ""))
    m = results["matmul_tflops"]
    lines.append(f"training step: {results['flops_per_image'] / 1e9:.1f} GFLOP per image; "
                 f"{m['dtype']} matmul {m['n']}: {m['tflops']:.1f} TFLOP/s")
    inf = results["inference"]
    lines.append(f"inference, {inf['slices']}-slice volume to mask on the host: {inf['seconds'] * 1000:.1f} ms "
                 f"({inf['slices_per_s']:.0f} slices/s)")
    if "epoch" in results:
        e = results["epoch"]
        lines.append(f"full epoch of {e['slices']} slices (with validation): {e['seconds']:.1f} s, "
                     f"{e['images_per_s']:.0f} images/s")
    return "\n".join(lines)


if __name__ == "__main__":
    run_stage(main)
