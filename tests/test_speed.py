"""train.speed: the training step in bf16 / channels_last / compiled, prediction in bf16, the
CUDA data path. CPU tests run everywhere; `cuda` tests skip without a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from btseg.config import parse_params
from btseg.models import create_model, prediction
from btseg.models.prediction import (
    autocast_dtype,
    describe_run,
    memory_format,
    predict_masks,
    predict_probabilities,
    what_runs,
)
from btseg.training.device_augment import DeviceAugmenter
from btseg.training.loop import Diverged, Stepper, _check_finite, fit, training_batches
from tests.conftest import default_params
from tests.test_training import circles


def config(speed=None, augment=None, **train):
    raw = default_params()
    raw["train"].update(train)
    raw["train"]["speed"].update(speed or {})
    raw["train"]["augment"].update(augment or {})
    return parse_params(raw).train


@pytest.mark.parametrize(("precision", "device", "bf16_units", "expected"), [
    ("auto", "cpu", False, None), ("auto", "cpu", True, torch.bfloat16), ("auto", "cuda", False, torch.bfloat16),
    ("bf16", "cpu", False, torch.bfloat16), ("fp32", "cpu", True, None), ("fp32", "cuda", True, None)])
def test_precision_setting_resolves_per_device(monkeypatch, precision, device, bf16_units, expected):
    """auto: bf16 on CUDA and on CPUs with bf16 units, fp32 on other CPUs; fp32 and bf16 mean what they say."""
    monkeypatch.setattr(prediction, "cpu_runs_bf16", lambda: bf16_units)
    assert autocast_dtype(precision, torch.device(device)) == expected


@pytest.mark.parametrize(("setting", "device", "expected"), [
    (True, "cpu", torch.channels_last), (True, "cuda", torch.channels_last), (False, "cpu", torch.contiguous_format),
    (True, "mps", torch.contiguous_format)])
def test_channels_last_resolves_per_device(setting, device, expected):
    assert memory_format(setting, torch.device(device)) == expected


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the Linux kernel's CPU flags")
def test_bf16_units_are_read_as_the_kernel_reports_them():
    """torch's CPU checks against the flags the kernel lists for this processor (an independent source)."""
    flags = set(Path("/proc/cpuinfo").read_text(encoding="utf-8").split())
    prediction.cpu_runs_bf16.cache_clear()
    assert prediction.cpu_runs_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_what_runs_names_the_resolved_settings(monkeypatch):
    monkeypatch.setattr(prediction, "cpu_runs_bf16", lambda: True)
    ran = what_runs("auto", True, torch.device("cpu"))
    assert (ran["device"], ran["precision"], ran["layout"], ran["threads"]) == ("cpu", "bf16", "channels_last",
                                                                                  torch.get_num_threads())
    assert ran["cpu"].endswith("bf16 units: yes")
    monkeypatch.setattr(prediction, "cpu_runs_bf16", lambda: False)
    assert what_runs("auto", False, torch.device("cpu"))["precision"] == "fp32"
    assert what_runs("auto", False, torch.device("cpu"))["layout"] == "contiguous"
    assert "bf16 autocast (precision auto), channels_last" in describe_run(what_runs("bf16", True, torch.device("cpu")),
                                                                          "auto")


def test_bf16_channels_last_prediction_agrees_with_fp32():
    """The fast CPU path predicts what fp32 in the default layout predicts: probabilities within bf16's
    rounding, and the same mask for all but the pixels next to the threshold."""
    data = circles(12, seed=3)
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, base_channels=8, depth=3)
    cpu = torch.device("cpu")
    fp32 = predict_probabilities(model, data.images, cpu, precision="fp32", channels_last=False)
    fast = predict_probabilities(model, data.images, cpu, precision="bf16", channels_last=True)
    assert not np.array_equal(fp32, fast)  # bf16 did run
    assert np.abs(fp32 - fast).max() < 0.02
    assert np.mean((fp32 > 0.5) != (fast > 0.5)) < 0.005


@pytest.mark.slow
def test_bf16_step_on_the_cpu_learns_like_fp32():
    """The same few steps in bf16 autocast and in fp32 end with close losses (bf16 keeps 8 bits of mantissa)."""
    data = circles(16, seed=1)
    images, masks = torch.from_numpy(data.images[:16]), torch.from_numpy(data.masks[:16])
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = create_model("unet", in_channels=1, base_channels=4, depth=2)
        stepper = Stepper(model, config({"precision": precision}, learning_rate=0.01), torch.device("cpu"))
        for _ in range(5):
            loss = stepper.forward_backward(images, masks)
            stepper.update()
        losses[precision] = float(loss)
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


def test_diverged_names_the_first_bad_batch_of_a_deferred_window():
    losses = [torch.tensor(0.5)] * 40 + [torch.tensor(float("nan"))] + [torch.tensor(0.4)] * 23
    _check_finite(losses[:32], epoch=2, batch=32, window=32)  # all finite: nothing happens
    with pytest.raises(Diverged, match="loss became nan at epoch 2, batch 41"):
        _check_finite(losses, epoch=2, batch=64, window=32)


@pytest.mark.slow
def test_fit_with_device_augmentation_on_the_cpu_learns_circles():
    """augment_on=device runs the torch augmenter in the training process: the same loop as on a GPU."""
    train, val = circles(48, seed=1), circles(16, seed=2)
    model = create_model("unet", in_channels=1, base_channels=8, depth=2)
    cfg = config({"augment_on": "device"}, {"hflip": 0.5, "affine": 0.5}, epochs=6, batch_size=8, learning_rate=0.01)
    loader, plan, augmenter = training_batches(train, cfg, torch.device("cpu"))
    assert isinstance(augmenter, DeviceAugmenter)
    result = fit(model, train, val, cfg, threshold=0.5, device=torch.device("cpu"))
    assert result.best_val_dice > 0.75


def test_predicted_masks_are_the_thresholded_probabilities():
    data = circles(12, seed=3)
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, base_channels=4, depth=2)
    cpu = torch.device("cpu")
    probabilities = predict_probabilities(model, data.images, cpu, batch_size=5)
    for threshold in (0.3, 0.5, 0.7):
        masks = predict_masks(model, data.images, cpu, threshold, batch_size=5)
        assert masks.dtype == np.uint8
        near = np.abs(probabilities - threshold) < 1e-6  # rounding at the cut itself may go either way
        np.testing.assert_array_equal(masks[~near], (probabilities > threshold)[~near])


@pytest.mark.slow
def test_compiled_step_trains_the_model_it_was_given():
    """torch.compile wraps the model: the steps must update the model that is saved (CPU inductor, slow)."""
    data = circles(8, seed=1)
    images, masks = torch.from_numpy(data.images), torch.from_numpy(data.masks)
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, base_channels=4, depth=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stepper = Stepper(model, config({"compile": True}, learning_rate=0.01), torch.device("cpu"))
    assert stepper.forward is not model
    for _ in range(2):
        loss = stepper.forward_backward(images, masks)
        stepper.update()
    assert torch.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.cuda
def test_cuda_step_runs_bf16_channels_last_with_a_fused_optimizer():
    device = torch.device("cuda")
    data = circles(32, seed=1)
    model = create_model("unet", in_channels=1, base_channels=8, depth=2)
    cfg = config(learning_rate=0.01, optimizer="adamw")
    stepper = Stepper(model, cfg, device)
    assert stepper.precision == torch.bfloat16 and stepper.optimizer.defaults["fused"]
    weight = next(p for p in model.parameters() if p.dim() == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    images, masks = torch.from_numpy(data.images).pin_memory(), torch.from_numpy(data.masks).pin_memory()
    first = stepper.forward_backward(images, masks)
    stepper.update()
    for _ in range(20):
        loss = stepper.forward_backward(images, masks)
        stepper.update()
    assert torch.isfinite(loss) and loss < first


@pytest.mark.cuda
def test_cuda_loader_pins_batches_and_device_augmentation_keeps_masks_aligned():
    device = torch.device("cuda")
    data = circles(32, seed=1)
    cfg = config({"loader_workers": 2}, {"hflip": 0.5, "affine": 1.0, "elastic": 0.5}, batch_size=8)
    loader, plan, augmenter = training_batches(data, cfg, device)
    assert isinstance(augmenter, DeviceAugmenter)
    plan.set_epoch(1)
    images, masks = next(iter(loader))
    assert images.is_pinned() and images.dtype == torch.float16 and masks.dtype == torch.uint8
    images, masks = images.to(device).float(), masks.to(device).float()
    out_images, out_masks = augmenter(images, masks, 1, 1)
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
    again = augmenter(images, masks, 1, 1)
    assert torch.equal(out_images, again[0])  # seeded on the GPU too


@pytest.mark.cuda
def test_bf16_masks_on_cuda_agree_with_fp32_on_the_cpu():
    data = circles(64, seed=4)
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, base_channels=8, depth=2)
    cpu = predict_masks(model, data.images, torch.device("cpu"), 0.5)
    gpu = predict_masks(model.to("cuda"), data.images, torch.device("cuda"), 0.5)
    assert (cpu == gpu).mean() > 0.99


def test_resume_fingerprint_ignores_speed_only_settings_but_not_precision():
    from btseg.training.checkpoint import fingerprint
    base = fingerprint(config(), {})
    assert fingerprint(config({"loader_workers": 6, "prefetch_batches": 2, "compile": True,
                              "threads_follow_load": True}), {}) == base
    assert fingerprint(config({"precision": "bf16"}), {}) != base
    assert fingerprint(config({"augment_on": "device"}), {}) != base  # other draws, other interpolation
