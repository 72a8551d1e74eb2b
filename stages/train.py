"""Stage `train`: models/<dataset>/<model>/ (model.pt with the best validation weights, history.csv)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from stages.cli import PipelineError, run_stage, stage_arguments
from stages.config import load_params
from stages.fileio import atomic_dir
from stages.models import create_model
from stages.slices import load_split
from stages.inference import pick_device, set_threads
from stages.training import fit

log = logging.getLogger("stages.train")


def main(argv: Sequence[str]) -> None:
    args = stage_arguments(__doc__, model=True).parse_args(argv)
    params = load_params(args.params)
    config = params.train
    slices = Path("data/slices") / args.dataset
    train_split, val_split = load_split(slices, "train"), load_split(slices, "val")
    try:
        device = pick_device(config.device)
    except RuntimeError as error:
        raise PipelineError(f"params.yaml: {error}") from None
    set_threads(config.num_threads)
    model_args = {"in_channels": len(train_split.meta["channels"]), "out_channels": len(train_split.meta["targets"]),
                  "base_channels": config.base_channels, "depth": config.depth}
    torch.manual_seed(config.seed)  # initial weights too: the same params give the same model
    model = create_model(args.model, **model_args)
    log.info("%s on %s: %d train / %d val slices, device %s", args.model, args.dataset,
             len(train_split.images), len(val_split.images), device)
    result = fit(model, train_split, val_split, epochs=config.epochs, batch_size=config.batch_size,
                 learning_rate=config.learning_rate, dice_weight=config.dice_weight,
                 threshold=params.evaluate.threshold, seed=config.seed, device=device)
    with atomic_dir(Path("models") / args.dataset / args.model) as partial:
        torch.save({
            "model": args.model,
            "model_args": model_args,
            "state_dict": result.best_state,
            "best_epoch": result.best_epoch,
            "val_case_dice": result.best_val_dice,
            "train_params": config.model_dump(),
            "data_meta": {k: train_split.meta[k] for k in ("dataset", "source_version", "channels", "size", "normalization", "targets")},
        }, partial / "model.pt")
        result.history.to_csv(partial / "history.csv", index=False)
    log.info("best epoch %d, val case Dice %.4f", result.best_epoch, result.best_val_dice)


if __name__ == "__main__":
    run_stage(main)
