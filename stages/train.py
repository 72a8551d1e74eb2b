"""Stage `train`: preprocessed slices -> a model file (best validation epoch) and its training log.

    python stages/train.py --dataset brats2020 --model unet --slices data/slices/brats2020 \
        --out models/brats2020/unet --live dvclive/brats2020/unet \
        --checkpoint checkpoints/brats2020/unet/checkpoint.pt

Writes OUT/model.pt, and CHECKPOINT every epoch: a killed run resumes from it with `dvc repro` or
`dvc exp run` (it lies outside the stage's outs, so DVC never replaces it); the per-epoch log
(train/val loss, Dice, IoU, learning rate) goes through dvclive to LIVE, drawn by `dvc plots show`.
The steps are btseg.training.run.train_model's.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from btseg.cli import run_stage, stage_arguments
from btseg.config import load_params
from btseg.training.run import train_model


def main(argv: Sequence[str]) -> None:
    parser = stage_arguments(__doc__, model=True)
    parser.add_argument("--slices", type=Path, required=True, help="the dataset's preprocessed slices (train, val)")
    parser.add_argument("--out", type=Path, required=True, help="folder for model.pt")
    parser.add_argument("--checkpoint", type=Path, required=True, help="the resumable checkpoint, updated every epoch")
    parser.add_argument("--live", type=Path, required=True, help="folder of the dvclive training log")
    parser.add_argument("--fold", type=int, help="cross-validation fold of the train and val patients (cv_train)")
    args = parser.parse_args(argv)
    train_model(args.dataset, args.model, args.slices, args.out, args.live, load_params(args.params),
                relaunch=[__file__, *argv], fold=args.fold, checkpoint=args.checkpoint)


if __name__ == "__main__":
    run_stage(main, sys.argv[1:])
