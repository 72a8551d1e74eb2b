"""The training loop on tiny synthetic circles, on CPU and (where present) CUDA."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from btseg.config import parse_params
from btseg.models import create_model
from btseg.models.prediction import pick_device, predict_probabilities
from btseg.preprocessing.slices import SliceSet
from btseg.training.loop import case_scores, fit, steps_by_threads
from tests.conftest import default_params


def train_config(**overrides):
    raw = default_params()
    raw["train"].update(overrides)
    return parse_params(raw).train


def circles(count: int, seed: int, size: int = 32) -> SliceSet:
    """Bright discs (the tumor) on a noisy background; one case per slice, a few without a disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((count, 1, size, size), np.float16)
    masks = np.zeros((count, 1, size, size), np.uint8)
    for i in range(count):
        if i % 5:
            cx, cy, r = rng.uniform(8, size - 8, 2).tolist() + [rng.uniform(3, 7)]
            masks[i, 0] = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
        images[i, 0] = masks[i, 0] * 2.0 + rng.normal(0, 0.5, (size, size))
    index = pd.DataFrame({"row": range(count), "case_id": [f"c{i}" for i in range(count)], "slice_index": 0,
                          "source_file": "", "tumor_pixels": masks.reshape(count, -1).sum(1)})
    return SliceSet(images, masks, index, {"channels": ["grey"], "size": size})


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_fit_learns_circles_and_keeps_the_best_epoch(device):
    torch.set_num_threads(2)
    train, val = circles(48, seed=1), circles(16, seed=2)
    # initial weights from a fixed seed, not from whatever earlier tests left in the global generator;
    # ten epochs clear 0.8 for every one of 30 initial seeds tried (lowest 0.979), six did not (lowest 0.69)
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, base_channels=8, depth=2)
    before = case_scores(predict_probabilities(model, val.images, torch.device("cpu")), val, 0.5)[0]
    config = train_config(epochs=10, batch_size=8, learning_rate=0.01, dice_weight=0.5, seed=0)
    result = fit(model, train, val, config, threshold=0.5, device=torch.device(device))
    assert list(result.history.epoch) == list(range(1, 11))
    assert result.best_val_dice == result.history.val_case_dice.max()
    assert result.best_epoch == int(result.history.val_case_dice.idxmax()) + 1
    assert result.best_val_dice > max(0.8, before)
    # the kept weights are the best epoch's: they reproduce its validation Dice
    model.load_state_dict(result.best_state)
    again = case_scores(predict_probabilities(model.to(device), val.images, torch.device(device)), val, 0.5)[0]
    assert again == pytest.approx(result.best_val_dice)


def test_cuda_requested_without_gpu_is_an_error_naming_the_param(monkeypatch):
    from btseg.errors import PipelineError
    from btseg.training.loop import SINGLE
    from btseg.training.run import choose_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="'cuda' asks for a GPU but no CUDA GPU is visible"):
        pick_device("cuda")
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(PipelineError, match="^params.yaml: train.device: 'cuda' asks for a GPU"):
        choose_device(train_config(device="cuda"), SINGLE)


@pytest.mark.slow
def test_early_stopping_stops_after_patience_epochs_without_gain():
    train, val = circles(16, seed=1), circles(8, seed=2)
    model = create_model("unet", in_channels=1, base_channels=4, depth=2)
    for module in model.modules():  # batch-norm running statistics move without any learning rate: hold them
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.0
    # a learning rate too small to move validation Dice: only epoch 1 counts as a gain
    config = train_config(epochs=20, batch_size=8, learning_rate=1e-9, early_stopping_patience=2, optimizer="sgd",
                          momentum=0.0)
    result = fit(model, train, val, config, threshold=0.5, device=torch.device("cpu"))
    assert result.stopped_early and result.best_epoch == 1 and len(result.history) == 3


@pytest.mark.slow
@pytest.mark.parametrize("schedule, warmup, expected", [
    ("constant", 0, [0.01, 0.01, 0.01, 0.01]),
    # cosine after one warm-up epoch: 0.01 * (1/2), then 0.5 * (1 + cos(pi * k / 3)) for k = 0, 1, 2
    ("cosine", 1, [0.005, 0.01, 0.0075, 0.0025]),
])
def test_learning_rate_schedule_per_epoch(schedule, warmup, expected):
    train, val = circles(8, seed=1), circles(4, seed=2)
    model = create_model("unet", in_channels=1, base_channels=4, depth=2)
    config = train_config(epochs=4, batch_size=8, learning_rate=0.01, schedule=schedule, warmup_epochs=warmup)
    result = fit(model, train, val, config, threshold=0.5, device=torch.device("cpu"))
    np.testing.assert_allclose(result.history.learning_rate, expected, rtol=1e-9)


MODEL_OPTIONS = ("norm", "dropout", "deep_supervision")  # read when the model is built, the rest by fit


def _train_with(**overrides) -> pd.DataFrame:
    """Two epochs on circles from the same initial weights and seed; the history."""
    train, val = circles(16, seed=1), circles(8, seed=2)
    config = train_config(epochs=2, batch_size=8, learning_rate=0.01, seed=0, **overrides)
    torch.manual_seed(0)
    model = create_model("resunet", in_channels=1, base_channels=4, depth=2,
                         **{k: getattr(config, k) for k in MODEL_OPTIONS})
    return fit(model, train, val, config, threshold=0.5, device=torch.device("cpu")).history


@pytest.fixture(scope="module")
def default_history() -> pd.DataFrame:
    return _train_with()


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    {"optimizer": "adamw", "weight_decay": 0.5}, {"optimizer": "sgd"}, {"grad_clip": 1e-3},
    {"schedule": "onecycle"}, {"schedule": "cosine", "warmup_epochs": 1},
    {"loss": "bce"}, {"loss": "dice"}, {"loss": "focal"}, {"loss": "tversky"}, {"loss": "focal_tversky"},
    {"dice_reduction": "batch"}, {"dice_weight": 0.9}, {"norm": "group"}, {"norm": "instance"}, {"dropout": 0.3},
    {"deep_supervision": True},
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_training_option_changes_what_training_does(overrides, default_history):
    # one option at a time against the defaults, from the same weights and batches: an option the
    # loop ignored would give the very same losses
    history = _train_with(**overrides)
    assert len(history) == 2 and np.isfinite(history.train_loss).all()
    assert not np.allclose(history.train_loss, default_history.train_loss, rtol=0, atol=1e-7)


def test_with_threads_following_the_load_every_epoch_says_how_many_steps_ran_at_each_thread_count():
    train, val = circles(24, seed=1), circles(8, seed=2)  # 3 steps of 8 an epoch
    raw = default_params()
    raw["train"].update(epochs=2, batch_size=8, learning_rate=0.01, seed=0)
    raw["train"]["speed"]["threads_follow_load"] = True
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, base_channels=4, depth=2)
    threads = torch.get_num_threads()
    history = fit(model, train, val, parse_params(raw).train, threshold=0.5, device=torch.device("cpu")).history
    # seconds of training are too few for a trial: every step ran at the count it started with
    assert list(history.steps_by_threads) == [{threads: 3}, {threads: 3}]
    assert steps_by_threads(history) == {str(threads): 6}
    # the tuner off: no column, nothing to sum; a run resumed from epochs logged before the column: those count 0
    assert steps_by_threads(pd.DataFrame([{"epoch": 1, "train_loss": 0.5}])) == {}
    mixed = pd.DataFrame([{"epoch": 1}, {"epoch": 2, "steps_by_threads": {2: 5, 1: 7}},
                          {"epoch": 3, "steps_by_threads": {1: 4}}])
    assert steps_by_threads(mixed) == {"1": 11, "2": 5}


def test_loss_log_has_one_row_per_split_and_epoch_and_a_redone_epoch_replaces_its_rows(tmp_path):
    import csv

    from btseg.training.run import log_losses

    path = tmp_path / "loss.csv"
    for step, train, val in ((0, 0.9, 0.8), (1, 0.7, 0.6), (2, 0.5, 0.55)):
        log_losses(path, step, train, val)
    log_losses(path, 2, 0.45, 0.5)  # epoch 3 again after a resume from the epoch-2 checkpoint
    log_losses(path, 1, 0.65, 0.58)  # or from an older one: later rows go too
    with path.open() as handle:
        rows = [(int(r["step"]), r["split"], float(r["loss"])) for r in csv.DictReader(handle)]
    assert rows == [(0, "train", 0.9), (0, "validation", 0.8), (1, "train", 0.65), (1, "validation", 0.58)]
    assert not list(tmp_path.glob("*partial*"))


def test_the_published_curves_change_only_when_a_run_has_finished(tmp_path):
    from btseg.training.run import TrainingLog

    published, working = tmp_path / "dvclive", tmp_path / "checkpoints" / "dvclive"
    (published / "plots/metrics").mkdir(parents=True)
    (published / "plots/metrics/val_case_dice.tsv").write_text("step\tval_case_dice\n0\t0.5\n")
    log = TrainingLog(published, working, resuming=False)
    log({"epoch": 1, "val_case_dice": 0.25, "val_case_iou": 0.2, "learning_rate": 0.01, "train_loss": 1.0,
         "val_loss": 0.9})
    log.end()
    # an interruption here (after epochs, before the end) leaves the last run's curves as they were
    assert (published / "plots/metrics/val_case_dice.tsv").read_text().endswith("0\t0.5\n")
    assert (working / "plots/metrics/val_case_dice.tsv").read_text().splitlines()[1].startswith("0\t0.25")
    log.publish()
    rows = (published / "plots/metrics/val_case_dice.tsv").read_text().splitlines()
    assert rows[0] == "step\tval_case_dice" and len(rows) == 2 and rows[1].startswith("0\t0.25")
    assert (published / "loss.csv").is_file()


def test_without_an_importable_dvc_the_curves_are_the_same_files(tmp_path, monkeypatch, caplog):
    """The GPU machine's image has dvclive's few DVC modules but not DVC's repository code: training there
    writes the curves as anywhere outside a DVC repository, and says so."""
    import sys
    from pathlib import Path

    from btseg.training.run import TrainingLog
    from dvclive import Live

    def curves(folder: Path) -> dict[str, str]:
        log = TrainingLog(folder / "published", folder / "working", resuming=False)
        for epoch, dice in ((1, 0.25), (2, 0.5)):
            log({"epoch": epoch, "val_case_dice": dice, "val_case_iou": dice / 2, "learning_rate": 0.01,
                 "train_loss": 1.0 / epoch, "val_loss": 0.9 / epoch})
        log.end()
        log.publish()
        return {str(p.relative_to(folder / "published")): "\n".join(line.split("\t")[0] + line.split("\t")[-1]
                                                                     for line in p.read_text().splitlines())
                for p in sorted((folder / "published").rglob("*.tsv"))}  # the timestamp column left out

    with_dvc = curves(tmp_path / "with")
    monkeypatch.setattr(Live, "_init_dvc", Live._init_dvc)  # restored after the test
    monkeypatch.setitem(sys.modules, "dvc.repo", None)  # `import dvc.repo` now raises ImportError
    without = curves(tmp_path / "without")
    assert "DVC cannot be imported here" in caplog.text
    assert without == with_dvc and "plots/metrics/val_case_dice.tsv" in without
    assert without["plots/metrics/val_case_dice.tsv"].splitlines()[1:] == ["00.25", "10.5"]


def test_the_data_fingerprint_follows_content_not_modification_times(tmp_path):
    from btseg.training.run import data_fingerprint

    slices = tmp_path / "slices"
    for split in ("train", "val"):
        (slices / split).mkdir(parents=True)
        np.save(slices / split / "images.npy", np.arange(5000, dtype=np.float32))
        (slices / split / "index.csv").write_text("row,case_id\n0,a\n")
    first = data_fingerprint(slices)
    copy = tmp_path / "copy"
    shutil.copytree(slices, copy)  # new files, new modification times, same bytes
    os.utime(copy / "train" / "images.npy", (0, 0))
    assert data_fingerprint(copy) == first
    (copy / "val" / "index.csv").write_text("row,case_id\n0,b\n")
    assert data_fingerprint(copy) != first
    # an array larger than the sampled chunks is fingerprinted by its size and chunks spread over it
    np.save(copy / "val" / "images.npy", np.arange(5000, dtype=np.float32))
    sampled = data_fingerprint(copy, sample_chunks=4, chunk_bytes=64)
    values = np.arange(5000, dtype=np.float32)
    values[-1] = -1  # inside the last chunk
    np.save(copy / "val" / "images.npy", values)
    assert data_fingerprint(copy, sample_chunks=4, chunk_bytes=64) != sampled


def test_the_weight_average_follows_the_hand_computed_recurrence():
    from btseg.training.loop import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    weight, batches = model[0].weight, model[1].num_batches_tracked
    with torch.no_grad():
        weight.fill_(0.0)
    average = WeightAverage(model, decay=0.5)
    kept = average.model[0].weight
    # d = min(0.5, (1 + n) / (10 + n)): 2/11 after the first step, 3/12 after the second, 0.5 from the ninth
    for value, expected, steps in ((11.0, 9.0, 3), (21.0, 0.25 * 9.0 + 0.75 * 21.0, 7)):
        with torch.no_grad():
            weight.fill_(value)
            batches.fill_(steps)
        average.update()
        assert kept.item() == pytest.approx(expected)
        assert int(average.model[1].num_batches_tracked) == steps  # integer state is copied, not averaged
    for _ in range(6):
        average.update()  # n = 3 .. 8: the weight stays at 21, the average closes in on it
    assert weight.item() == 21.0 and 18.0 < kept.item() < 21.0
    before = kept.item()
    average.update()  # n = 9: (1 + 9) / (10 + 9) > 0.5, so the decay is 0.5
    assert kept.item() == pytest.approx(0.5 * before + 0.5 * 21.0)
    # the model itself is untouched, and the copy takes no gradients
    assert weight.item() == 21.0 and not kept.requires_grad
    # what a checkpoint keeps brings the same average back
    again = WeightAverage(model, decay=0.5)
    again.restore(average.state())
    assert again.updates == 9 and again.model[0].weight.item() == kept.item()


@pytest.mark.slow
def test_with_a_weight_average_training_follows_the_same_path_and_keeps_the_average():
    train, val = circles(16, seed=1), circles(8, seed=2)

    def run(decay: float):
        torch.manual_seed(0)
        model = create_model("unet", in_channels=1, base_channels=4, depth=2)
        config = train_config(epochs=3, batch_size=8, learning_rate=0.01, seed=0, ema_decay=decay)
        return model, fit(model, train, val, config, threshold=0.5, device=torch.device("cpu"))

    raw_model, raw = run(0.0)
    averaged_model, averaged = run(0.9)
    # the optimiser's path does not read the average: the same training losses, the same last weights
    np.testing.assert_array_equal(averaged.history.train_loss, raw.history.train_loss)
    for name, tensor in raw_model.state_dict().items():
        assert torch.equal(tensor, averaged_model.state_dict()[name]), name
    # what was validated and kept is the average: other validation losses, weights unlike the last step's
    assert not np.allclose(averaged.history.val_loss, raw.history.val_loss, rtol=0, atol=1e-7)
    conv = next(name for name in averaged.best_state if name.endswith("weight"))
    assert not torch.equal(averaged.best_state[conv], averaged_model.state_dict()[conv])
    # and the kept weights reproduce the validation Dice they were chosen by
    averaged_model.load_state_dict(averaged.best_state)
    again = case_scores(predict_probabilities(averaged_model, val.images, torch.device("cpu")), val, 0.5)[0]
    assert again == pytest.approx(averaged.best_val_dice)


@pytest.mark.parametrize("name", ["unet", "resunet"])
def test_the_weight_average_keeps_following_after_prediction_moves_its_copy(name):
    # prediction puts the model in channels_last; ResU-Net's 1-channel 1x1 shortcut (16, 1, 1, 1) gets
    # new storage there, and an average that kept the old tensor froze that weight at the first validation
    from btseg.training.loop import Stepper

    raw = default_params()
    raw["train"].update(ema_decay=1e-9, learning_rate=0.01)  # a decay of ~0: the average is the last step
    raw["train"]["speed"]["channels_last"] = True
    config = parse_params(raw).train
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, base_channels=16, depth=2)
    stepper = Stepper(model, config, torch.device("cpu"))
    images, masks = torch.randn(4, 1, 32, 32), (torch.rand(4, 1, 32, 32) > 0.8).float()
    for _ in range(2):
        predict_probabilities(stepper.kept, images.numpy(), torch.device("cpu"), channels_last=True)
        for _ in range(2):
            stepper.forward_backward(images, masks)
            stepper.update()
    average, current = stepper.kept.state_dict(), model.state_dict()
    moved = [key for key in current if not torch.allclose(average[key].float(), current[key].float(), atol=1e-6)]
    assert not moved
