"""Stage `train`: models/<dataset>/<model>/model.pt (best validation weights) and the training log.

models/<dataset>/<model>/checkpoint.pt (persistent) is updated after every epoch: a killed run
resumes from it with `dvc repro` / `dvc exp run`. The per-epoch log (train/val loss, Dice, IoU,
learning rate) goes through dvclive to dvclive/<dataset>/<model>/, drawn by `dvc plots show`.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from stages.cli import PipelineError, run_stage, stage_arguments
from stages.config import load_params
from stages.fileio import atomic_file
from stages.inference import pick_device, predict_probabilities, set_threads
from stages.metrics import choose_threshold
from stages.models import MODEL_FORMAT, create_model
from stages.slices import load_split
from stages.training import SINGLE, Diverged, Distributed, fingerprint, fit, matching_checkpoint, unwrap

log = logging.getLogger("stages.train")

LOGGED = ("train_loss", "val_loss", "val_case_dice", "val_case_iou", "learning_rate")


def main(argv: Sequence[str]) -> None:
    args = stage_arguments(__doc__, model=True).parse_args(argv)
    params = load_params(args.params)
    config = params.train
    if config.nproc > 1 and "LOCAL_RANK" not in os.environ:
        _launch_torchrun(config.nproc, argv)
        return
    dist = _init_distributed()
    if config.batch_size % dist.world:
        raise PipelineError(f"params.yaml: train.batch_size: {config.batch_size} must divide evenly over the "
                            f"{dist.world} processes of this torchrun job")
    slices = Path("data/slices") / args.dataset
    train_split, val_split = load_split(slices, "train"), load_split(slices, "val")
    if config.batch_size > len(train_split.images):
        raise PipelineError(f"params.yaml: train.batch_size: {config.batch_size} is larger than the "
                            f"{len(train_split.images)} training slices of {args.dataset}; lower it")
    try:
        device = pick_device(config.device)
    except RuntimeError as error:
        raise PipelineError(f"params.yaml: {error}") from None
    if device.type == "cuda" and dist.world > 1:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    # the cores are shared among the processes of one machine
    set_threads(config.num_threads or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))

    model_args = {"in_channels": len(train_split.meta["channels"]), "out_channels": len(train_split.meta["targets"]),
                  "base_channels": config.base_channels, "depth": config.depth, "norm": config.norm,
                  "dropout": config.dropout, "deep_supervision": config.deep_supervision}
    torch.manual_seed(config.seed)  # initial weights too: the same params give the same model
    try:
        model = create_model(args.model, **model_args, encoder_weights=config.encoder_weights or None)
    except ValueError as error:
        key = "train.encoder_weights" if config.encoder_weights and "state dict" in str(error) else f"train.models ({args.model})"
        raise PipelineError(f"params.yaml: {key}: {error}") from None
    if config.sync_batchnorm and dist.world > 1:
        if device.type != "cuda":
            raise PipelineError("params.yaml: train.sync_batchnorm: needs CUDA GPUs (PyTorch's SyncBatchNorm); set it to false on CPU")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    data_meta = {k: train_split.meta[k] for k in ("dataset", "source_version", "channels", "size", "normalization", "targets")}
    # what prediction needs besides: how images were prepared and the files' channel order
    inference_meta = {k: train_split.meta[k] for k in ("geometry", "source_channels")}
    # validation Dice is measured at the evaluation threshold when it is fixed, else at 0.5
    threshold = params.evaluate.threshold if isinstance(params.evaluate.threshold, float) else 0.5
    identity = {"model": args.model, "data": data_meta, "train_slices": len(train_split.images), "threshold": threshold,
                "data_files": _file_stamps(slices), "code": _code_hash()}

    folder = Path("models") / args.dataset / args.model
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "checkpoint.pt"
    live = _open_live(Path("dvclive") / args.dataset / args.model, checkpoint, fingerprint(config, identity)) \
        if dist.writer else None
    if dist.world > 1:
        layout = torch.channels_last if device.type == "cuda" and config.speed.channels_last else torch.contiguous_format
        model = torch.nn.parallel.DistributedDataParallel(model.to(device, memory_format=layout),
                                                          device_ids=[device.index] if device.type == "cuda" else None)
    log.info("%s on %s: %d train / %d val slices, device %s", args.model, args.dataset,
             len(train_split.images), len(val_split.images), device)

    def on_epoch(row: dict) -> None:
        live.step = row["epoch"] - 1  # step = epoch - 1 also after a resume
        for name in LOGGED:
            live.log_metric(name, row[name])
        live.next_step()

    try:
        result = fit(model, train_split, val_split, config, threshold=threshold, device=device,
                     checkpoint=checkpoint, identity=identity, on_epoch=on_epoch, dist=dist)
    except Diverged as error:
        raise PipelineError(f"{error}; the last good epoch is kept in {checkpoint}; lower train.learning_rate "
                            "or set train.grad_clip") from None
    finally:
        if live is not None:
            live.end()
    if not dist.writer:
        return  # rank 0 writes the model
    model = unwrap(model)
    model.load_state_dict(result.best_state)
    decision = _decision_threshold(model, val_split, params.evaluate, device, config.speed.precision)
    with atomic_file(folder / "model.pt") as partial:
        torch.save({
            "format_version": MODEL_FORMAT,
            "threshold": decision,
            "model": args.model,
            "model_args": model_args,
            "state_dict": result.best_state,
            "best_epoch": result.best_epoch,
            "val_case_dice": result.best_val_dice,
            "stopped_early": result.stopped_early,
            "train_params": config.model_dump(),
            "data_meta": data_meta,
            "inference_meta": inference_meta,
        }, partial)
    log.info("best epoch %d, val case Dice %.4f%s", result.best_epoch, result.best_val_dice,
             " (stopped early)" if result.stopped_early else "")


def _launch_torchrun(nproc: int, argv: Sequence[str]) -> None:
    """Run this stage again under torchrun with `nproc` processes on this machine (train.nproc).

    For several machines, start `torchrun --nnodes ... --rdzv-endpoint ... -m stages.train` on each
    instead (README): the stage then sees torchrun's environment and does not launch again.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "stages.train", *argv]
    log.info("launching %d processes: %s", nproc, " ".join(command))
    code = subprocess.run(command).returncode
    if code:
        raise PipelineError(f"distributed training (train.nproc={nproc}) failed with exit code {code}; see the errors above")


def _init_distributed() -> Distributed:
    """Join the torchrun job this process was started in (gloo on CPU, NCCL on GPUs), if any."""
    if "LOCAL_RANK" not in os.environ:
        return SINGLE
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend)
    atexit.register(torch.distributed.destroy_process_group)
    return Distributed(torch.distributed.get_rank(), torch.distributed.get_world_size())


def _file_stamps(slices: Path) -> dict[str, list[int]]:
    """Size and modification time of the training arrays: a re-run of preprocess changes them, so a
    checkpoint of other data is never resumed (cheaper than hashing gigabytes at every start)."""
    return {str(p.relative_to(slices)): [p.stat().st_size, p.stat().st_mtime_ns]
            for split in ("train", "val") for p in sorted((slices / split).glob("*.npy"))}


def _code_hash() -> str:
    """Hash of the training code (this stage's library): changed code never resumes an old checkpoint."""
    root = Path(__file__).parent
    files = [root / "train.py", root / "training.py", root / "losses.py", root / "augment.py", root / "inference.py",
             root / "loader.py", root / "device_augment.py",
             *sorted((root / "models").glob("*.py"))]
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]


def _decision_threshold(model, val_split, evaluate, device, precision: str) -> float:
    """The probability threshold stored with the model: fixed, or the one with the best mean
    per-case validation Dice over evaluate.threshold_grid (the evaluate stage picks the same)."""
    if evaluate.threshold_from != "validation":
        return evaluate.threshold
    threshold, _ = choose_threshold(predict_probabilities(model, val_split.images, device, precision=precision), val_split.masks,
                                    val_split.index, evaluate.threshold_grid)
    return threshold


def _open_live(folder: Path, checkpoint: Path, key: str):
    """dvclive logger; continues the existing log when the checkpoint will be resumed, else starts clean."""
    from dvclive import Live

    resuming = matching_checkpoint(checkpoint, key) is not None
    if not resuming and folder.exists():
        shutil.rmtree(folder)
    # dvcyaml=None: the plots are declared in our dvc.yaml; save_dvc_exp=False: DVC runs us, not the reverse
    try:
        return Live(dir=str(folder), resume=resuming, dvcyaml=None, save_dvc_exp=False, report=None)
    except Exception as error:  # dvclive reads the git revision; a repository without commits has none
        if "empty git repo" in str(error).lower():
            raise PipelineError("dvclive needs a git repository with at least one commit; run `git commit` first") from None
        raise


if __name__ == "__main__":
    run_stage(main)
