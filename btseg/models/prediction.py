"""Device choice, precision and batched prediction, shared by training (validation), evaluation,
prediction and the benchmark."""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn


def pick_device(requested: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; `cuda` without a GPU is an error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("'cuda' asks for a GPU but no CUDA GPU is visible; use auto or cpu")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def set_threads(num_threads: int) -> None:
    torch.set_num_threads(num_threads or os.cpu_count() or 1)


@functools.cache
def cpu_runs_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX-512 BF16 or AMX tiles), where oneDNN's bf16
    convolutions run at about twice the fp32 rate. Without them bf16 is emulated and only costs."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(checks):
        return any(check() for check in checks if check is not None)
    try:  # an older torch without the checks: the kernel's CPU flags (Linux)
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """train.speed.precision -> the autocast dtype (None: plain fp32). auto: bf16 where the device runs
    it natively (CUDA tensor cores; CPUs with AVX-512 BF16 or AMX), fp32 elsewhere."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and (device.type == "cuda" or (device.type == "cpu" and cpu_runs_bf16())):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for the forward pass, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def memory_format(channels_last: bool, device: torch.device) -> torch.memory_format:
    """train.speed.channels_last: NHWC on CUDA (cuDNN's fastest convolutions want it) and on the CPU
    (oneDNN's: 1.4x in fp32, 1.4-1.9x in bf16 on the project's CPU, docs/benchmarks.md); the default
    layout on other devices. The one place this is decided, for training and prediction alike."""
    return torch.channels_last if channels_last and device.type in ("cuda", "cpu") else torch.contiguous_format


def what_runs(precision: str, channels_last: bool, device: torch.device) -> dict:
    """What train.speed's precision and channels_last mean on `device`: logged by every stage that
    runs the model and stored in the model file (the 'ran' entry)."""
    dtype = autocast_dtype(precision, device)
    ran = {"device": device.type, "precision": "bf16" if dtype == torch.bfloat16 else "fp32",
           "layout": "channels_last" if memory_format(channels_last, device) == torch.channels_last else "contiguous",
           "threads": torch.get_num_threads()}
    if device.type == "cpu":
        ran["cpu"] = f"{torch.backends.cpu.get_cpu_capability()}, bf16 units: {'yes' if cpu_runs_bf16() else 'no'}"
    return ran


def describe_run(ran: dict, precision: str) -> str:
    """One log line's worth of what_runs: 'cpu, bf16 autocast (precision auto), channels_last, 2 threads (...)'."""
    text = f"{ran['device']}, {ran['precision']}{' autocast' if ran['precision'] != 'fp32' else ''} " \
           f"(precision {precision}), {ran['layout']}, {ran['threads']} threads"
    return text + (f" ({ran['cpu']})" if "cpu" in ran else "")


def default_batch(device: torch.device) -> int:
    """Slices per forward pass in prediction: a whole BraTS volume (155) in one call on a GPU."""
    return 256 if device.type == "cuda" else 32


def _to_device(images: np.ndarray, device: torch.device, layout: torch.memory_format) -> torch.Tensor:
    if device.type == "cpu":
        return torch.from_numpy(np.array(images, dtype=np.float32))
    # fp16 slices cross the bus as they are stored (half the bytes of fp32), widened on the device;
    # a read-only memmap is only read here, so torch's warning about non-writable arrays does not apply
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(np.ascontiguousarray(images))
    tensor = tensor.to(device).float()
    return tensor.contiguous(memory_format=layout)


FLIPS = ((), (-1,), (-2,), (-2, -1))  # test-time augmentation: as is, left-right, up-down, both


@torch.no_grad()
def _predict(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int | None,
             precision: str, channels_last: bool, tta: bool, finish_logits, finish_probabilities) -> list[np.ndarray]:
    model.eval()
    dtype = autocast_dtype(precision, device)
    layout = memory_format(channels_last, device)
    model.to(memory_format=layout)
    batch_size = batch_size or default_batch(device)

    def logits_of(batch: torch.Tensor) -> torch.Tensor:
        with autocast(device, dtype):
            return model(batch).float()

    parts = []
    for start in range(0, len(images), batch_size):
        batch = _to_device(images[start:start + batch_size], device, layout)
        if not tta:
            parts.append(finish_logits(logits_of(batch)).cpu().numpy())
            continue
        # each flip's probabilities flipped back (a flip is its own inverse), then averaged
        flipped = [torch.sigmoid(logits_of(batch.flip(dims))).flip(dims) if dims else torch.sigmoid(logits_of(batch))
                   for dims in FLIPS]
        parts.append(finish_probabilities(torch.stack(flipped).mean(dim=0)).cpu().numpy())
    return parts


def predict_probabilities(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int | None = None,
                          precision: str = "auto", channels_last: bool = True, tta: bool = False) -> np.ndarray:
    """Probability per pixel and target, float32 (N, K, H, W), for images (N, C, H, W).

    `precision` and `channels_last` as train.speed (btseg.models.prediction.autocast_dtype, memory_format);
    `tta` (evaluate.tta): the mean of the probabilities of the image and its three flips."""
    parts = _predict(model, images, device, batch_size, precision, channels_last, tta, torch.sigmoid, lambda p: p)
    return np.concatenate(parts) if parts else np.empty((0, 1, *images.shape[2:]), np.float32)


def predict_masks(model: nn.Module, images: np.ndarray, device: torch.device, threshold: float,
                  batch_size: int | None = None, precision: str = "auto", channels_last: bool = True,
                  tta: bool = False) -> np.ndarray:
    """Binary masks uint8 (N, K, H, W): thresholded on the device, so only a quarter of the bytes of
    the probabilities come back. sigmoid(x) > t  <=>  x > logit(t)."""
    cut = float(np.log(threshold / (1 - threshold)))
    parts = _predict(model, images, device, batch_size, precision, channels_last, tta,
                     lambda logits: (logits > cut).to(torch.uint8), lambda p: (p > threshold).to(torch.uint8))
    return np.concatenate(parts) if parts else np.empty((0, 1, *images.shape[2:]), np.uint8)
