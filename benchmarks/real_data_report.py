"""Summarise a real-data run for docs/results.md: the headline numbers with their intervals and a
figure of validation Dice against training minutes (the time-to-quality curve).

    python benchmarks/real_data_report.py RUN_FOLDER --dataset lgg --model unet --name lgg_cpu

RUN_FOLDER is a project folder after the download, preprocess, train, evaluate (and report)
stages. Writes docs/figures/<name>_curve.png and prints a markdown table row.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from btseg.training.checkpoint import read_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", default="unet")
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    contents = read_checkpoint(args.run / "checkpoints" / args.dataset / args.model / "checkpoint.pt")
    history = pd.DataFrame(contents["history"])
    history["minutes"] = history.seconds.cumsum() / 60
    metrics = json.loads((args.run / "reports" / args.dataset / args.model / "evaluation/metrics_full.json")
                         .read_text())
    best = history.loc[history.val_case_dice.idxmax()]

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    left.plot(history.minutes, history.val_case_dice, marker="o", ms=3, label="validation per-case Dice")
    left.axvline(best.minutes, color="grey", ls=":", label=f"best epoch {int(best.epoch)} ({best.minutes:.0f} min)")
    left.set(xlabel="training minutes", ylabel="per-case Dice (val, threshold 0.5)", ylim=(0, 1),
             title=f"{args.name}: validation Dice against time")
    left.legend(loc="lower right")
    right.plot(history.epoch, history.train_loss, label="train loss")
    right.plot(history.epoch, history.val_loss, label="val loss")
    right.set(xlabel="epoch", ylabel="loss (bce + dice)", title=f"{args.name}: losses")
    right.legend()
    out = REPO / "docs" / "figures" / f"{args.name}_curve.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    pc = metrics["per_case"]
    print(f"| {args.name} | {metrics['cases']} "
          f"| {pc['dice']:.3f} ({pc['dice_ci95_low']:.3f}-{pc['dice_ci95_high']:.3f}) "
          f"| {metrics['per_slice']['dice']:.3f} | {metrics['pooled']['dice']:.3f} "
          f"| {pc['precision']:.3f} | {pc['recall']:.3f} "
          f"| {metrics['threshold']:.2f} | {metrics.get('postprocess')} | {history.minutes.iloc[-1]:.0f} "
          f"| {int(best.epoch)} ({best.minutes:.0f} min) |")
    print(f"figure: {out}")


if __name__ == "__main__":
    main()
