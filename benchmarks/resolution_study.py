"""What a higher training resolution buys per minute: runs of one recipe at two or more sizes on the
same patient splits, scored and timed side by side (docs/results.md, "What resolution buys").

    python benchmarks/resolution_study.py --dataset lgg --name lgg_cpu_resolution \
        --run 128 13 runs/s13_128 --run 160 13 runs/s13_160 --run 128 19 runs/s19_128 ...

Each --run SIZE SPLIT FOLDER is a project folder after the train and evaluate stages (download ..
report, as dvc.yaml or benchmarks/run_recipe.py runs them) of preprocess.size SIZE and
preprocess.seed SPLIT; every model trained there (--models) is read. For each split, model and size:
the test per-case Dice with its interval, the minutes of training and to the best validation epoch
(epochs x the median epoch's time in the checkpoint's history, which a run paused for other work
leaves as it was alone); for each split and model, every
larger size paired against the smallest on the same patients (bts-compare's paired difference) and
the Dice it gains per extra minute of training. Prints a markdown table and draws
docs/figures/<name>.png (per-case Dice with its interval against training minutes, a line per split).

Each size is scored against its own test masks (the archive's 256 px masks resized to the size),
as evaluate scores every run: the sizes' ground truths differ by the resizing's rounding at the edges.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from btseg.evaluation.compare import compare, read_per_case  # noqa: E402
from btseg.training.checkpoint import read_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def read_run(folder: Path, dataset: str, model: str, size: int, split: int) -> dict | None:
    """One model's scores and minutes in a run folder; None when that model was not trained there."""
    evaluation = folder / "reports" / dataset / model / "evaluation"
    checkpoint = folder / "checkpoints" / dataset / model / "checkpoint.pt"
    if not (evaluation / "per_case.csv").exists() or not checkpoint.exists():
        return None
    params = yaml.safe_load((folder / "params.yaml").read_text())
    found = (params["preprocess"]["size"], params["preprocess"]["seed"])
    if found != (size, split):
        raise SystemExit(f"{folder}/params.yaml: preprocess.size/seed are {found}, not the --run's ({size}, {split})")
    history = pd.DataFrame(read_checkpoint(checkpoint)["history"])
    epoch_s = float(history.seconds.median())  # a run paused for other work has a few long epochs: not its pace
    best = int(history.val_case_dice.idxmax())
    metrics = json.loads((evaluation / "metrics_full.json").read_text())
    case = metrics["per_case"]
    return {"split": split, "model": model, "size": size, "cases": metrics["cases"], "dice": case["dice"],
            "low": case["dice_ci95_low"], "high": case["dice_ci95_high"], "recall": case["recall"],
            "precision": case["precision"], "minutes": len(history) * epoch_s / 60,
            "best_epoch": int(history.epoch[best]), "minutes_to_best": int(history.epoch[best]) * epoch_s / 60,
            "epoch_s": epoch_s, "per_case": evaluation / "per_case.csv"}


def pairs(runs: pd.DataFrame) -> pd.DataFrame:
    """Every size against the smallest of its split and model, on the same patients."""
    rows = []
    for (split, model), group in runs.groupby(["split", "model"]):
        group = group.sort_values("size")
        base = group.iloc[0]
        for _, new in group.iloc[1:].iterrows():
            result = compare(read_per_case(str(base.per_case)), read_per_case(str(new.per_case)), "dice", None,
                             (str(base.per_case), str(new.per_case)))
            extra = new.minutes - base.minutes
            rows.append({"split": split, "model": model, "sizes": f"{base['size']} -> {new['size']}",
                         "difference": result["mean_difference"], "low": result["ci_low"],
                         "high": result["ci_high"], "better": result["better"], "worse": result["worse"],
                         "extra_minutes": extra, "dice_per_10_min": 10 * result["mean_difference"] / extra})
    return pd.DataFrame(rows)


def draw(runs: pd.DataFrame, out: Path, title: str) -> None:
    figure, axis = plt.subplots(figsize=(7.5, 4.5), constrained_layout=True)
    markers = {"unet": "o", "resunet": "s"}
    for (split, model), group in runs.groupby(["split", "model"]):
        group = group.sort_values("size")
        errors = [group.dice - group.low, group.high - group.dice]
        line = axis.errorbar(group.minutes, group.dice, yerr=errors, marker=markers.get(model, "^"), capsize=3,
                             label=f"split {split}, {model}")
        for _, row in group.iterrows():
            axis.annotate(f"{row['size']} px", (row.minutes, row.dice), textcoords="offset points", xytext=(6, -4),
                          fontsize=8, color=line.lines[0].get_color())
    for model, group in runs.groupby("model"):
        if group.split.nunique() > 1:  # the mean over splits, the figure the recipe is chosen by
            mean = group.groupby("size")[["minutes", "dice"]].mean()
            axis.plot(mean.minutes, mean.dice, "k--", marker=markers.get(model, "^"),
                      label=f"{model}, mean of {group.split.nunique()} splits")
    axis.set(xlabel="training minutes (2 cores)", ylabel="test per-case Dice (95% CI over patients)", title=title)
    axis.legend(fontsize=8, loc="lower right")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs=3, action="append", required=True, metavar=("SIZE", "SPLIT", "FOLDER"))
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--models", default="unet,resunet")
    parser.add_argument("--name", required=True, help="the figure's file name, docs/figures/<name>.png")
    args = parser.parse_args()
    found = [read_run(Path(folder), args.dataset, model, int(size), int(split))
             for size, split, folder in args.run for model in args.models.split(",")]
    runs = pd.DataFrame([run for run in found if run is not None])
    if runs.empty:
        raise SystemExit(f"no trained and evaluated {args.models} in any --run folder")
    print("| split | model | size | test patients | per-case Dice (95% CI) | precision | recall "
          "| training | epoch | best val epoch |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for _, r in runs.sort_values(["split", "model", "size"]).iterrows():
        print(f"| {r.split} | {r.model} | {r['size']} px | {r.cases} | {r.dice:.3f} ({r.low:.3f}-{r.high:.3f}) "
              f"| {r.precision:.3f} | {r.recall:.3f} | {r.minutes:.1f} min | {r.epoch_s:.0f} s "
              f"| {r.best_epoch} ({r.minutes_to_best:.1f} min) |")
    paired = pairs(runs)
    if not paired.empty:
        print("\n| split | model | sizes | paired difference (95% CI) | better / worse | extra training "
              "| Dice per 10 extra minutes |")
        print("|---|---|---|---|---|---|---|")
        for _, p in paired.iterrows():
            print(f"| {p.split} | {p.model} | {p.sizes} | {p.difference:+.3f} ({p.low:+.3f} to {p.high:+.3f}) "
                  f"| {p.better} / {p.worse} | {p.extra_minutes:+.1f} min | {p.dice_per_10_min:+.3f} |")
    for (model, size), group in runs.groupby(["model", "size"]):
        print(f"{model} at {size} px: mean over splits {sorted(group.split)} {group.dice.mean():.3f}, "
              f"{group.minutes.mean():.1f} training minutes a split")
    out = REPO / "docs" / "figures" / f"{args.name}.png"
    draw(runs, out, f"{args.dataset}: what resolution buys per minute")
    print(f"figure: {out}")


if __name__ == "__main__":
    main()
