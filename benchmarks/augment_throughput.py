"""Augmentation throughput per CPU core: albumentations per slice (train.speed.augment_on: cpu)
against the torch-batched augmenter (augment_on: device), here run on the CPU.

    python benchmarks/augment_throughput.py [--size 240] [--channels 4] [--batch 32]

Slices/s for each set of transforms, one thread, float32 slices as training sees them. On a GPU the
batched augmenter runs on the device instead (benchmarks/bench.py measures it inside the training step).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from btseg.config import load_params, parse_params  # noqa: E402
from btseg.training.augment import Augmenter  # noqa: E402
from btseg.training.device_augment import DeviceAugmenter  # noqa: E402

SETS = {
    "flip": {"hflip": 0.5},
    "flip+affine": {"hflip": 0.5, "affine": 0.5},
    "flip+affine+brightness/contrast": {"hflip": 0.5, "affine": 0.5, "brightness_contrast": 0.5},
    "flip+affine+elastic": {"hflip": 0.5, "affine": 0.5, "elastic": 0.5},
    "all seven": {"hflip": 0.5, "vflip": 0.5, "affine": 0.5, "brightness_contrast": 0.5, "gamma": 0.5,
                  "noise": 0.5, "elastic": 0.5},
}


def augment_params(chosen: dict):
    raw = load_params(Path(__file__).resolve().parents[1] / "params.yaml").model_dump()
    names = ("hflip", "vflip", "affine", "brightness_contrast", "gamma", "noise", "elastic")
    raw["train"]["augment"].update({**dict.fromkeys(names, 0.0), **chosen})
    return parse_params(raw).train.augment


def rate(run, slices: int, seconds: float = 2.0) -> float:
    run()  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        done += slices
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=240)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import cv2
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (args.batch, args.channels, args.size, args.size)).astype(np.float32)
    masks = (rng.random((args.batch, 1, args.size, args.size)) > 0.9).astype(np.uint8)
    timages, tmasks = torch.from_numpy(images), torch.from_numpy(masks).float()
    print(f"{args.batch} slices of {args.channels} x {args.size} x {args.size} float32, one thread; slices/s")
    print(f"{'transforms (p=0.5 each)':<34}{'albumentations':>16}{'torch batched':>15}")
    for name, chosen in SETS.items():
        params = augment_params(chosen)
        cpu, batched = Augmenter(params, 0), DeviceAugmenter(params, 0)
        counter = iter(range(10**9))
        a = rate(lambda: cpu(images, masks, 1, next(counter)), args.batch)
        b = rate(lambda: batched(timages, tmasks, 1, next(counter)), args.batch)
        print(f"{name:<34}{a:>16.0f}{b:>15.0f}")


if __name__ == "__main__":
    main()
