"""Validation Dice per epoch of several runs on one chart, with each run's largest epoch-to-epoch drop:
the figure behind the stability ablation in docs/results.md. With --minutes, against training minutes
(the checkpoint's epoch times) instead: runs that differ in cost, compared at equal time.

    python benchmarks/ablation_curves.py --out docs/figures/lgg_stability.png --epochs 12 \\
        "recipe=/work/lgg-run2" "per-image Dice=/work/abl-image" ...

Each RUN folder is a project folder after the train stage; its dvclive log
(dvclive/<dataset>/<model>/plots/metrics/val_case_dice.tsv) is read. Prints a markdown table.
A label `PANEL: LABEL` draws the run in a panel of its own per PANEL (one per patient split, say),
each LABEL in the same colour in every panel:

    python benchmarks/ablation_curves.py --out docs/figures/lgg_cpu_weight_average.png \
        "split 13: raw weights=RUN_A" "split 13: weight average=RUN_B" "split 17: raw weights=RUN_C" ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from btseg.training.checkpoint import read_checkpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_FOLDER")
    parser.add_argument("--dataset", default="lgg")
    parser.add_argument("--model", default="unet")
    parser.add_argument("--epochs", type=int, default=0, help="first N epochs of each run (0 = all)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="LGG, second split: validation Dice per epoch")
    parser.add_argument("--minutes", action="store_true", help="x axis: training minutes, not epochs")
    args = parser.parse_args()

    runs = [(*panel_and_label(spec.partition("=")[0]), spec.partition("=")[2]) for spec in args.runs]
    panels = list(dict.fromkeys(panel for panel, _, _ in runs))
    colours = {label: f"C{k}" for k, label in enumerate(dict.fromkeys(label for _, label, _ in runs))}
    figure, axes = plt.subplots(1, len(panels), figsize=(8 if len(panels) == 1 else 4.2 * len(panels), 4.2),
                                sharey=True, squeeze=False)
    print("| run | epochs | val Dice (first -> last) | largest drop between two epochs | epochs of that drop |")
    print("|---|---|---|---|---|")
    for panel, label, folder in runs:
        axis = axes[0, panels.index(panel)]
        log = Path(folder) / "dvclive" / args.dataset / args.model / "plots/metrics/val_case_dice.tsv"
        curve = pd.read_csv(log, sep="\t")
        if args.epochs:
            curve = curve[curve.step < args.epochs]
        epochs, dice = curve.step.to_numpy() + 1, curve.val_case_dice.to_numpy()
        drops = dice[:-1] - dice[1:]
        worst = int(drops.argmax())
        x = minutes(Path(folder), args.dataset, args.model)[epochs - 1] if args.minutes else epochs
        axis.plot(x, dice, marker="o", markersize=3, color=colours[label],
                  label=f"{label} (largest drop {drops[worst]:.2f})")
        if panel:
            axis.set_title(panel)
        name = f"{panel}: {label}" if panel else label
        print(f"| {name} | {len(dice)} | {dice[0]:.3f} -> {dice[-1]:.3f} | {drops[worst]:.3f} "
              f"| {epochs[worst]} -> {epochs[worst] + 1} |")
    for axis in axes[0]:
        axis.set(xlabel="training minutes" if args.minutes else "epoch", ylim=(0, 1))
        axis.legend(loc="lower right", fontsize=8)
        axis.grid(alpha=0.3)
    axes[0, 0].set_ylabel("validation per-case Dice")
    if panels == [""]:
        axes[0, 0].set_title(args.title)
    else:
        figure.suptitle(args.title)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"figure: {args.out}")


def panel_and_label(text: str) -> tuple[str, str]:
    """`PANEL: LABEL` -> (PANEL, LABEL); a label without a panel -> ("", label)."""
    panel, colon, label = text.partition(": ")
    return (panel, label) if colon else ("", text)


def minutes(run: Path, dataset: str, model: str):
    """Training minutes at the end of each epoch, from the epoch times the checkpoint keeps."""
    checkpoint = read_checkpoint(run / "checkpoints" / dataset / model / "checkpoint.pt")
    return pd.DataFrame(checkpoint["history"]).seconds.cumsum().to_numpy() / 60


if __name__ == "__main__":
    main()
