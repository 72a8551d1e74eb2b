"""The `train` stage's library: from preprocessed slices to a model file, in named steps.

`train_model` reads top to bottom as the steps of a run: relaunch under torchrun when
train.nproc > 1, join the job, load the slices, pick the device, build the model, open the
dvclive log, fit (resuming a matching checkpoint), choose the decision threshold on validation,
write the model file. The checkpoint (checkpoints/<dataset>/<model>/, outside DVC's outs) is updated
every epoch, so a killed run resumes; it is resumed only for the same settings, training data
(`data_fingerprint`) and training code (`code_files`).
"""

from __future__ import annotations

import atexit
import csv
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

import btseg
from btseg.config import Params, TrainParams
from btseg.decisions.choose import component_sizes, decide_on_validation
from btseg.errors import PipelineError, one_line
from btseg.fileio import atomic_dir, atomic_file, write_csv
from btseg.models import create_model, write_model_file
from btseg.models.prediction import describe_run, memory_format, pick_device, set_threads, what_runs
from btseg.preprocessing.slices import SliceSet, load_split
from btseg.training.checkpoint import fingerprint, matching_checkpoint
from btseg.training.folds import fold_sets
from btseg.training.loop import SINGLE, Distributed, Diverged, fit, follows_load, steps_by_threads, unwrap

log = logging.getLogger(__name__)

LOGGED = ("val_case_dice", "val_case_iou", "learning_rate")  # one dvclive chart each
LOSS_FILE = "loss.csv"  # beside dvclive's plots: train and validation loss in one chart (step, split, loss)
REPO = Path(btseg.__file__).resolve().parent.parent


def train_model(dataset: str, model_name: str, slices: Path, out: Path, live_dir: Path, params: Params,
                relaunch: Sequence[str], fold: int | None = None, checkpoint: Path | None = None) -> None:
    """Train `model_name` on `slices`; write out/model.pt (best validation epoch) and, every epoch,
    `checkpoint` (default out/checkpoint.pt; the stage keeps it outside its DVC outs).

    `relaunch` is the command line that starts this same run again (for torchrun with train.nproc > 1).
    With `fold`, train and validate on that cross-validation fold of the train and val patients
    (btseg.training.folds; params cv.folds, seeded by preprocess.seed).
    """
    config = params.train
    if config.nproc > 1 and "LOCAL_RANK" not in os.environ:
        launch_torchrun(config.nproc, relaunch)
        return
    dist = init_distributed(config)
    train_split, val_split = load_split(slices, "train"), load_split(slices, "val")
    if fold is not None:
        train_split, val_split = fold_sets(train_split, val_split, params.cv.folds, fold, params.preprocess.seed)
    if config.batch_size > len(train_split.images):
        raise PipelineError(f"params.yaml: train.batch_size: {config.batch_size} is larger than the "
                            f"{len(train_split.images)} training slices of {dataset}; lower it")
    device = choose_device(config, dist)
    model, model_args = build_model(model_name, train_split, config, dist, device)
    threshold = params.evaluate.threshold  # validation Dice during training is measured at this threshold
    identity = {"model": model_name, "data": data_meta(train_split), "train_slices": len(train_split.images),
                "threshold": threshold, "tta": params.evaluate.tta, "data_files": data_fingerprint(slices),
                "code": code_hash(),
                **({} if fold is None else {"fold": [fold, params.cv.folds, params.preprocess.seed]})}
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = checkpoint or out / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    resuming = matching_checkpoint(checkpoint, fingerprint(config, identity)) is not None
    live = TrainingLog(live_dir, checkpoint.parent / "dvclive", resuming) if dist.writer else None
    ran = what_runs(config.speed.precision, config.speed.channels_last, device) | {
        "compile": config.speed.compile, "threads_follow_load": follows_load(config, device, dist)}
    log.info("%s on %s: %d train / %d val slices; runs on %s%s", model_name, dataset, len(train_split.images),
             len(val_split.images), describe_run(ran, config.speed.precision),
             ", torch.compile" if config.speed.compile else "")
    try:
        result = fit(model, train_split, val_split, config, threshold=threshold, device=device, checkpoint=checkpoint,
                     identity=identity, on_epoch=live, dist=dist, tta=params.evaluate.tta)
    except Diverged as error:
        raise PipelineError(f"{error}; the last good epoch is kept in {checkpoint}; lower train.learning_rate "
                            "or set train.grad_clip") from None
    finally:
        if live is not None:
            live.end()
    if not dist.writer:
        return  # rank 0 writes the model and publishes the curves
    live.publish()
    model = unwrap(model)
    model.load_state_dict(result.best_state)
    if ran["threads_follow_load"]:
        ran["steps_by_threads"] = steps_by_threads(result.history)
    min_sizes = component_sizes(params.evaluate, train_split)
    decision, rule = decide_on_validation(model, val_split, params.evaluate, min_sizes, device, config)
    save_model_file(out / "model.pt", model_name, model_args, result, decision, rule, min_sizes, params.evaluate.tta,
                    train_split, config, ran)
    log.info("best epoch %d, val case Dice %.4f%s", result.best_epoch, result.best_val_dice,
             " (stopped early)" if result.stopped_early else "")


def launch_torchrun(nproc: int, command: Sequence[str]) -> None:
    """Run the stage again under torchrun with `nproc` processes on this machine (train.nproc).

    For several machines, start `torchrun --nnodes ... --rdzv-endpoint ... stages/train.py ...` on
    each instead (README): the stage then sees torchrun's environment and does not launch again.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *command]
    log.info("launching %d processes: %s", nproc, " ".join(command))
    code = subprocess.run(command).returncode
    if code:
        raise PipelineError(f"distributed training (train.nproc={nproc}) failed with exit code {code}; "
                            "see the errors above")


def init_distributed(config: TrainParams) -> Distributed:
    """Join the torchrun job this process was started in (gloo on CPU, NCCL on GPUs), if any."""
    if "LOCAL_RANK" not in os.environ:
        return SINGLE
    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    atexit.register(torch.distributed.destroy_process_group)
    dist = Distributed(torch.distributed.get_rank(), torch.distributed.get_world_size())
    if config.batch_size % dist.world:
        raise PipelineError(f"params.yaml: train.batch_size: {config.batch_size} must divide evenly over the "
                            f"{dist.world} processes of this torchrun job")
    return dist


def choose_device(config: TrainParams, dist: Distributed) -> torch.device:
    """train.device, this process's GPU under torchrun, and the CPU threads it may use."""
    try:
        device = pick_device(config.device)
    except RuntimeError as error:
        raise PipelineError(f"params.yaml: train.device: {error}") from None
    if device.type == "cuda" and dist.world > 1:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    # the cores are shared among the processes of one machine
    set_threads(config.num_threads or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    return device


def build_model(name: str, train_split: SliceSet, config: TrainParams, dist: Distributed,
                device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The seeded model (the same params give the same initial weights) and its constructor arguments;
    under torchrun, placed on its device and wrapped in DistributedDataParallel."""
    # input channels as stored: the sequences, times 2 * preprocess.neighbours + 1 for 2.5D input
    model_args = {"in_channels": train_split.images.shape[1], "out_channels": len(train_split.meta["targets"]),
                  "base_channels": config.base_channels, "depth": config.depth, "norm": config.norm,
                  "dropout": config.dropout, "deep_supervision": config.deep_supervision}
    torch.manual_seed(config.seed)
    try:
        model = create_model(name, **model_args, encoder_weights=config.encoder_weights or None)
    except ValueError as error:
        key = ("train.encoder_weights" if config.encoder_weights and "state dict" in str(error)
               else f"train.models ({name})")
        raise PipelineError(f"params.yaml: {key}: {error}") from None
    if dist.world > 1:
        if config.sync_batchnorm:
            if device.type != "cuda":
                raise PipelineError("params.yaml: train.sync_batchnorm: needs CUDA GPUs (PyTorch's SyncBatchNorm); "
                                    "set it to false on CPU")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        placed = model.to(device, memory_format=memory_format(config.speed.channels_last, device))
        model = torch.nn.parallel.DistributedDataParallel(placed,
                                                          device_ids=[device.index] if device.type == "cuda" else None)
    return model, model_args


def data_meta(split: SliceSet) -> dict:
    """What the model was trained on; evaluate refuses slices that differ in any of it."""
    keys = ("dataset", "source_version", "channels", "size", "normalization", "targets", "layout")
    return {k: split.meta[k] for k in keys if k in split.meta}  # layout: volume datasets only


def data_fingerprint(slices: Path, sample_chunks: int = 64, chunk_bytes: int = 1 << 20) -> dict[str, str]:
    """A digest of each training and validation file's content: a checkpoint of other data is never
    resumed, and data that was only re-linked or copied (new modification times) still is.

    Files up to `sample_chunks` x `chunk_bytes` are hashed whole; larger arrays (BraTS slices run to
    tens of GB) by their size and `sample_chunks` evenly spaced chunks, which any re-run of preprocess
    with other settings changes (and the split's index.csv and meta.json, hashed whole, do too)."""
    digests = {}
    for split in ("train", "val"):
        for path in sorted(p for p in (slices / split).iterdir() if p.suffix in (".npy", ".csv", ".json")):
            size, digest = path.stat().st_size, hashlib.sha256()
            with path.open("rb") as handle:
                if size <= sample_chunks * chunk_bytes:
                    digest.update(handle.read())
                else:
                    digest.update(str(size).encode())
                    for k in range(sample_chunks):
                        handle.seek((size - chunk_bytes) * k // (sample_chunks - 1))
                        digest.update(handle.read(chunk_bytes))
            digests[str(path.relative_to(slices))] = digest.hexdigest()[:16]
    return digests


def code_files(dvc_yaml: Path = REPO / "dvc.yaml") -> list[Path]:
    """The Python files the train stage depends on: exactly its code deps in dvc.yaml (files, and the
    .py files in listed folders), so DVC reruns training and the checkpoint stops matching together.
    Without a dvc.yaml (an installed package, no repository), the whole package."""
    if not dvc_yaml.is_file():
        return sorted(Path(btseg.__file__).parent.rglob("*.py"))
    deps = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]["train"]["deps"]
    files: list[Path] = []
    for dep in deps:
        path = dvc_yaml.parent / dep
        if "$" not in dep:  # ${item.dataset}: data, not code
            files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def code_hash() -> str:
    """Hash of the training code (`code_files`): changed code never resumes an old checkpoint."""
    digest = hashlib.sha256()
    for path in code_files():
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class TrainingLog:
    """The per-epoch callback that logs `LOGGED` to dvclive and the two losses to `LOSS_FILE`.

    The log is written beside the checkpoint (`working`, untracked, outside DVC's outs) while the run
    lasts, and copied to `published` (the git-tracked dvclive/<dataset>/<model>/ that dvc.yaml's plots
    name) when training has finished: an interrupted run leaves the last run's curves and no tracked
    file changed, so `dvc exp run` again finds a clean workspace, and a resumed run continues its own
    log. dvclive is opened at the first epoch of this run."""

    def __init__(self, published: Path, working: Path, resuming: bool):
        self.published, self.working, self.resuming, self.live = published, working, resuming, None
        _check_git_for_dvclive()

    def __call__(self, row: dict) -> None:
        if self.live is None:
            self.live = open_live(self.working, self.resuming)
        live = self.live
        live.step = row["epoch"] - 1  # step = epoch - 1 also after a resume
        for name in LOGGED:
            live.log_metric(name, row[name])
        log_losses(Path(live.dir) / LOSS_FILE, live.step, row["train_loss"], row["val_loss"])
        live.next_step()

    def end(self) -> None:
        if self.live is not None:
            self.live.end()

    def publish(self) -> None:
        """Replace the published curves with this run's whole log (a run resumed after its last epoch
        has nothing new to log, and publishes the log it kept)."""
        if self.working.is_dir():
            with atomic_dir(self.published) as partial:
                shutil.rmtree(partial)
                shutil.copytree(self.working, partial)


def log_losses(path: Path, step: int, train_loss: float, val_loss: float) -> None:
    """Append one epoch's losses in long form (one row per split), so one chart colours the two curves.

    Rows of this step or later (an epoch logged before a kill, redone after the resume) are replaced;
    the file is rewritten whole under a temporary name, so a kill never leaves half a row."""
    rows = []
    if path.exists():
        with path.open(newline="", encoding="utf-8") as handle:
            rows = [(int(r["step"]), r["split"], r["loss"]) for r in csv.DictReader(handle) if int(r["step"]) < step]
    rows += [(step, "train", repr(float(train_loss))), (step, "validation", repr(float(val_loss)))]
    with atomic_file(path) as partial:
        write_csv(partial, ("step", "split", "loss"), rows)


def open_live(folder: Path, resuming: bool):
    """dvclive logger; continues the existing log when the checkpoint is resumed, else starts clean."""
    from dvclive import Live  # noqa: PLC0415 - dvclive imports git and DVC: only training needs it

    if not resuming and folder.exists():
        shutil.rmtree(folder)
    try:
        import dvc.repo  # noqa: F401, PLC0415 - what dvclive looks for a DVC repository with
    except ImportError as error:  # an install without all of DVC (the GPU machine's image): log as outside a repo
        log.warning("DVC cannot be imported here (%s): dvclive logs to %s as it does outside a DVC repository",
                    one_line(error, 80), folder)
        Live._init_dvc = _init_outside_dvc
    # dvcyaml=None: the plots are declared in our dvc.yaml; save_dvc_exp=False: DVC runs us, not the reverse
    return Live(dir=str(folder), resume=resuming, dvcyaml=None, save_dvc_exp=False, report=None)


def _init_outside_dvc(live) -> None:
    """What dvclive's Live._init_dvc leaves when it finds no DVC repository (dvclive 3.x), without importing
    DVC for the search: an experiment name (only DVC experiments and Studio read it; neither exists
    without DVC) and dvc.yaml's path (unused with dvcyaml=None)."""
    live._exp_name = live._exp_name or "btseg-train"
    live._dvc_file = live._init_dvc_file()


def _check_git_for_dvclive() -> None:
    """dvclive reads the git revision, and fails in a repository without commits: say so before training."""
    try:
        inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True)
        if inside.stdout.strip() == "true" and subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"],
                                                              capture_output=True).returncode:
            raise PipelineError("dvclive needs a git repository with at least one commit; run `git commit` first")
    except FileNotFoundError:  # no git: dvclive works without one
        pass


def save_model_file(path: Path, model_name: str, model_args: dict, result, threshold: float, postprocess: str,
                    min_sizes: list[int], tta: bool, train_split: SliceSet, config: TrainParams, ran: dict) -> None:
    """model.pt: everything prediction needs (architecture, weights, threshold, how images were prepared)."""
    write_model_file(path, model=model_name, model_args=model_args, state_dict=result.best_state, threshold=threshold,
                     postprocess=postprocess, min_component_voxels=min_sizes, tta=tta, best_epoch=result.best_epoch,
                     val_case_dice=result.best_val_dice, stopped_early=result.stopped_early,
                     train_params=config.model_dump(), data_meta=data_meta(train_split),
                     inference_meta={k: train_split.meta[k] for k in ("geometry", "source_channels")}, ran=ran)
