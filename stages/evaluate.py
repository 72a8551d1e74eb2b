"""Stage `evaluate`: test-split metrics into metrics/<dataset>/<model>.json (headline numbers only).

The decision threshold is either chosen on the val split (evaluate.threshold_from=validation: the
evaluate.threshold_grid value with the best mean per-case Dice) or fixed (evaluate.threshold).
Beside the metrics, reports/<dataset>/<model>/evaluation/ gets:
- per_slice.csv, per_case.csv: a row per slice or case and target, every metric (stages.metrics);
- pr_curve.csv: pooled test precision / recall / Dice per threshold and target;
- threshold_sweep.csv: mean per-case val Dice per candidate threshold (threshold_from=validation);
- settings.json: the threshold used and how it was chosen, the targets, the conventions;
- probabilities.npy: float16 (N, K, H, W), test-split order, for the report stage.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from stages.cli import PipelineError, run_stage, stage_arguments
from stages.config import load_params
from stages.fileio import atomic_dir, write_json
from stages.inference import pick_device, predict_probabilities, set_threads
from stages.metrics import (AGGREGATION, EMPTY_MASK_CONVENTION, HD95_CONVENTION, choose_threshold, evaluate_targets,
                            precision_recall_curve)
from stages.models import load_checkpoint
from stages.slices import SliceSet, load_split

log = logging.getLogger("stages.evaluate")

PR_THRESHOLDS = np.round(np.arange(1, 100) / 100, 2)  # 0.01 .. 0.99: the precision-recall curve's points


def _check_trained_on(split: SliceSet, checkpoint: dict, checkpoint_path: Path, dataset: str) -> None:
    for key, trained_on in checkpoint["data_meta"].items():
        if key != "source_version" and split.meta[key] != trained_on:
            raise PipelineError(f"data/slices/{dataset}/{split.meta['split']}/meta.json: {key} is {split.meta[key]!r} "
                                f"but {checkpoint_path} was trained on {trained_on!r}; re-run train")


def main(argv: Sequence[str]) -> None:
    args = stage_arguments(__doc__, model=True).parse_args(argv)
    params = load_params(args.params)
    settings = params.evaluate
    checkpoint_path = Path("models") / args.dataset / args.model / "model.pt"
    model, checkpoint = load_checkpoint(checkpoint_path)
    splits = ("val", "test") if settings.threshold_from == "validation" else ("test",)
    data = {name: load_split(Path("data/slices") / args.dataset, name) for name in splits}
    for split in data.values():
        _check_trained_on(split, checkpoint, checkpoint_path, args.dataset)
    test, targets = data["test"], list(data["test"].meta["targets"])
    device = pick_device("cpu" if params.train.device == "cpu" else "auto")
    set_threads(params.train.num_threads)
    model = model.to(device)
    precision = params.train.speed.precision  # bf16 on a GPU under auto, as in training's validation

    sweep = None
    threshold = settings.threshold
    if settings.threshold_from == "validation":
        val = data["val"]
        threshold, sweep = choose_threshold(predict_probabilities(model, val.images, device, precision=precision), val.masks, val.index,
                                            settings.threshold_grid)
        log.info("threshold %.2f chosen on val (mean per-case Dice %.4f)", threshold, sweep.case_dice.max())
    probabilities = predict_probabilities(model, test.images, device, precision=precision)
    per_slice, per_case, metrics = evaluate_targets(probabilities > threshold, test.masks, test.index, targets,
                                                    size_buckets=dict(settings.size_buckets))
    pr_curve = pd.concat([precision_recall_curve(probabilities[:, k], test.masks[:, k], PR_THRESHOLDS).assign(target=name)
                          for k, name in enumerate(targets)], ignore_index=True)
    chosen = {"threshold": threshold, "threshold_from": settings.threshold_from,
              "val_case_dice": None if sweep is None else float(sweep.case_dice.max())}
    conventions = {"aggregation": AGGREGATION, "empty_mask_convention": EMPTY_MASK_CONVENTION,
                   "hd95_convention": HD95_CONVENTION, "hd95_unit": "px"}
    metrics = {**metrics, **chosen, **conventions}

    with atomic_dir(Path("reports") / args.dataset / args.model / "evaluation") as partial:
        per_slice.to_csv(partial / "per_slice.csv", index=False, float_format="%.6f")
        per_case.to_csv(partial / "per_case.csv", index=False, float_format="%.6f")
        pr_curve.to_csv(partial / "pr_curve.csv", index=False, float_format="%.6f")
        if sweep is not None:
            sweep.to_csv(partial / "threshold_sweep.csv", index=False, float_format="%.6f")
        write_json(partial / "settings.json", {**chosen, "targets": targets, "size_buckets": dict(settings.size_buckets),
                                               "pr_thresholds": PR_THRESHOLDS.tolist(), **conventions})
        np.save(partial / "probabilities.npy", probabilities.astype(np.float16))
    write_json(Path("metrics") / args.dataset / f"{args.model}.json", metrics)
    log.info("%s/%s test at threshold %.2f: per-case Dice %.4f, HD95 %.2f px; per-slice Dice %.4f; pooled Dice %.4f "
             "(%d cases, %d slices)", args.dataset, args.model, threshold, metrics["per_case"]["dice"],
             metrics["per_case"]["hd95_px"], metrics["per_slice"]["dice"], metrics["pooled"]["dice"],
             metrics["cases"], metrics["slices"])


if __name__ == "__main__":
    run_stage(main)
