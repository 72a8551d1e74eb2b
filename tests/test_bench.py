"""The benchmark command: FLOP counts against a hand count, and a tiny end-to-end run on the CPU."""

from __future__ import annotations

import json
import os
import time
from argparse import Namespace

import pytest
import torch
from torch import nn

from benchmarks.bench import competing_process, main, parse_variants, training_flops
from btseg.errors import PipelineError
from btseg.models import create_model
from btseg.models.prediction import cpu_runs_bf16


def hand_counted_training_flops(model: nn.Module, images: torch.Tensor) -> int:
    """Forward FLOPs of every convolution from its shapes (2 per multiply-add), seen through hooks;
    a training step is forward + weight gradients + input gradients, except that the first
    layer's input (the images) needs no gradient: 3x forward, minus the first layer's once."""
    forward: list[int] = []

    def hook(module, inputs, output):
        if isinstance(module, nn.ConvTranspose2d):  # every input pixel spreads over a k x k patch
            b, c_in, h, w = inputs[0].shape
            forward.append(2 * b * h * w * c_in * module.out_channels * module.kernel_size[0] * module.kernel_size[1])
        elif isinstance(module, nn.Conv2d):
            b, c_out, h, w = output.shape
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            forward.append(2 * b * h * w * c_out * k)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return 3 * sum(forward) - forward[0]


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["two_convs", "unet"])
def test_training_flops_match_a_hand_count_from_layer_shapes(model_name):
    args = Namespace(batch=2, channels=3, size=32, targets=1)
    torch.manual_seed(0)
    model = (nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 1, 1)) if model_name == "two_convs"
             else create_model("unet", in_channels=3, out_channels=1, base_channels=4, depth=2))
    expected = hand_counted_training_flops(model, torch.zeros(2, 3, 32, 32))
    if model_name == "two_convs":  # and by hand: 2*B*H*W*(5*3*9) twice, 2*B*H*W*(1*5) three times
        assert expected == 2 * (2 * 2 * 32 * 32 * 135) + 3 * (2 * 2 * 32 * 32 * 5)
    assert training_flops(model, args, torch.device("cpu")) == expected


@pytest.mark.slow
def test_tiny_benchmark_on_the_cpu_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(["--size", "32", "--base-channels", "4", "--depth", "2", "--batch", "4", "--steps", "3", "--warmup", "1",
          "--volume-slices", "6", "--epoch-slices", "12", "--augment", "hflip=0.5,affine=0.5",
          "--workdir", str(tmp_path), "--json", str(out)])
    results = json.loads(out.read_text())
    for name in ("seed_style_fp32", "synthetic", "real"):
        assert results[name]["images_per_s"] > 0 and results[name]["steps"] == 3
    assert results["train_speed"]["precision"] == "auto" and results["device"].startswith("CPU")
    autocast = "bfloat16" if cpu_runs_bf16() else "fp32 (off)"  # precision auto: bf16 where the CPU has bf16 units
    assert results["resolved"] == {"loader_workers": 0, "augment_on": "cpu", "autocast": autocast}
    assert results["inference"]["slices"] == 6 and results["inference"]["seconds"] > 0
    assert results["epoch"]["slices"] == 12 and 0 <= results["epoch"]["val_case_dice"] <= 1
    model = create_model("unet", in_channels=4, out_channels=1, base_channels=4, depth=2)
    per_image = hand_counted_training_flops(model, torch.zeros(4, 4, 32, 32)) / 4
    assert results["flops_per_image"] == pytest.approx(per_image)
    assert results["real"]["tflops"] == pytest.approx(results["real"]["images_per_s"] * per_image / 1e12)
    printed = capsys.readouterr().out
    assert "pipeline step (data path)" in printed and "inference, 6-slice volume" in printed
    assert list(tmp_path.iterdir()) == [out]  # the generated slice arrays are gone


@pytest.mark.parametrize(("flag", "message"), [
    (["--augment", "flop=0.5"], "--augment: unknown transform 'flop'"),
    (["--augment", "hflip=often"], "--augment hflip: expected a probability"),
    (["--workers", "many"], "--workers: expected a whole number"),
    (["--batch", "0"], "train.batch_size"),
    (["--model", "resnet34_unet"], "resnet34_unet needs preprocess.size divisible by 32"),
    (["--variants", "fp16:channels_last"], "--variants: 'fp16:channels_last' is not precision:layout"),
    (["--variants", "bf16:nhwc"], "--variants: 'bf16:nhwc' is not precision:layout"),
    (["--variants", "bf16:channels_last:fast"], "--variants: 'bf16:channels_last:fast'"),
    (["--variants", "bf16:channels_last", "--competitor", "1.5"], "--competitor: 1.5 is not a share of one core"),
])
def test_bad_benchmark_options_name_the_option(tmp_path, flag, message):
    with pytest.raises(PipelineError, match=message):
        main([*flag, "--json", str(tmp_path / "x.json")])


def test_variants_parse_into_precision_layout_and_compile():
    assert parse_variants("fp32:contiguous,bf16:channels_last:compile,") == [
        ("fp32", "contiguous", False), ("bf16", "channels_last", True)]


@pytest.mark.slow
def test_variants_are_measured_side_by_side_with_ratios_to_fp32_contiguous(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(["--size", "32", "--channels", "1", "--base-channels", "4", "--depth", "2", "--batch", "4", "--steps", "2",
          "--warmup", "1", "--volume-slices", "5", "--rounds", "2", "--competitor", "0.5",
          "--variants", "fp32:contiguous,bf16:channels_last", "--workdir", str(tmp_path), "--json", str(out)])
    results = json.loads(out.read_text())
    variants = results["variants"]
    assert list(variants) == ["seed_style_fp32", "fp32:contiguous", "bf16:channels_last"]
    base, fast = variants["fp32:contiguous"], variants["bf16:channels_last"]
    for entry in (base, fast):
        assert len(entry["train_rounds"]) == len(entry["predict_rounds"]) == 2
        assert entry["train_images_per_s"] == pytest.approx(sorted(entry["train_rounds"])[0] / 2
                                                            + sorted(entry["train_rounds"])[1] / 2)
    assert base["train_over_fp32_contiguous"] == base["predict_over_fp32_contiguous"] == 1.0
    assert fast["predict_over_fp32_contiguous"] == pytest.approx(fast["predict_images_per_s"]
                                                                 / base["predict_images_per_s"])
    assert results["competitor_core_share"] == 0.5
    assert "bf16:channels_last" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == [out]


def test_the_competing_process_is_niced_and_gone_afterwards():
    own = os.getpriority(os.PRIO_PROCESS, 0)
    with competing_process(0.25) as process:
        for _ in range(100):  # `nice` sets the niceness, then becomes the busy loop
            if os.getpriority(os.PRIO_PROCESS, process.pid) != own:
                break
            time.sleep(0.01)
        assert process.poll() is None and os.getpriority(os.PRIO_PROCESS, process.pid) == min(19, own + 19)
    assert process.poll() is not None
