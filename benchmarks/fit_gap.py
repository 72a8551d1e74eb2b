"""How well a trained model fits its own training split beside val and test: tells a model that cannot
fit (train Dice low too: capacity, input size, labels) from one that does not generalise (a gap).

    python benchmarks/fit_gap.py RUN_FOLDER --dataset tumor_coco --model unet

RUN_FOLDER is a project folder after the train stage (its model file and data/slices). Every split
is scored as evaluate scores test: the model file's threshold, post-processing rule and test-time
flips, per-case 3D Dice, precision and recall, and the cases predicted empty though they have tumor.
The training split holds only the slices preprocessing selected for training (all of them on a 2D
image set; on volumes, preprocess.tumor_free_fraction of the tumor-free ones).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from btseg.decisions.postprocess import segment
from btseg.models import load_model_file
from btseg.models.prediction import pick_device, predict_probabilities
from btseg.preprocessing.slices import load_split
from btseg.scoring.metrics import confusion_counts, per_case_table, per_slice_table

SPLITS = ("train", "val", "test")


def split_scores(predicted: np.ndarray, truth: np.ndarray, index) -> dict[str, float]:
    """Mean per-case Dice, precision and recall (first target), and the count of cases with tumor
    that got no predicted voxel."""
    cases = per_case_table(per_slice_table(confusion_counts(predicted[:, 0], truth[:, 0]), index))
    missed = ((cases.tp + cases.fn > 0) & (cases.tp + cases.fp == 0)).sum()
    return {"cases": len(cases), "dice": cases.dice.mean(), "precision": cases.precision.mean(),
            "recall": cases.recall.mean(), "empty": int(missed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", default="unet")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    model, contents = load_model_file(args.run / "models" / args.dataset / args.model / "model.pt")
    threshold, rule, tta = float(contents["threshold"]), str(contents["postprocess"]), bool(contents.get("tta", False))
    print(f"{args.run}: threshold {threshold:.2f}, post-processing {rule}, flips {tta}")
    print("| split | cases | per-case Dice | precision | recall | predicted empty |\n|---|---|---|---|---|---|")
    for name in SPLITS:
        split = load_split(args.run / "data" / "slices" / args.dataset, name)
        probabilities = predict_probabilities(model, split.images, pick_device(args.device), tta=tta)
        predicted = segment(probabilities, split.index, threshold, rule)
        s = split_scores(predicted, np.asarray(split.masks), split.index)
        print(f"| {name} | {s['cases']} | {s['dice']:.3f} | {s['precision']:.3f} | {s['recall']:.3f} | {s['empty']} |")


if __name__ == "__main__":
    main()
