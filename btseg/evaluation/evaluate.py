"""The `evaluate` stage's library: test-split metrics of a model file, and the tables behind them.

The decision threshold is either chosen on the val split (evaluate.threshold_from=validation: the
evaluate.threshold_grid value with the best mean per-case Dice) or fixed (evaluate.threshold); the
train stage makes that choice (and the post-processing one) with the same function and stores it in
the model file, and the metrics use the model file's, as bts-predict does; the sweeps beside them
are recomputed here.
Beside the metrics JSON (headline numbers only), the evaluation folder gets:
- per_slice.csv, per_case.csv: a row per slice or case and target, every metric (btseg.evaluation.metrics);
- pr_curve.csv: pooled test precision / recall / Dice per threshold and target;
- threshold_sweep.csv: mean per-case val Dice per candidate threshold (threshold_from=validation);
- postprocess_sweep.csv: mean per-case val Dice per post-processing rule (postprocess=validation);
- settings.json: the threshold used and how it was chosen, the targets, the conventions;
- probabilities.npy: float16 (N, K, H, W), test-split order, for the report stage;
- metrics_full.json: every metric (per target, size buckets, other tools' conventions, the rules
  used); the metrics file itself keeps the few numbers people compare (`headline`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from btseg.config import EvaluateParams, Params
from btseg.errors import PipelineError
from btseg.evaluation.metrics import AGGREGATION, EMPTY_MASK_CONVENTION, HD95_CONVENTION, evaluate_targets, headline
from btseg.evaluation.postprocess import NONE, apply_rule, choose_postprocess
from btseg.evaluation.thresholds import choose_threshold, precision_recall_curve
from btseg.fileio import atomic_dir, write_json
from btseg.inference.batched import pick_device, predict_probabilities, set_threads
from btseg.models import load_model_file
from btseg.preprocessing.slices import SliceSet, load_split

log = logging.getLogger(__name__)

PR_THRESHOLDS = np.round(np.arange(1, 100) / 100, 2)  # 0.01 .. 0.99: the precision-recall curve's points


def evaluate_model(model_file: Path, slices: Path, metrics_file: Path, evaluation: Path, params: Params) -> dict:
    """Score `model_file` on the test split of `slices`; write `metrics_file` and the `evaluation` folder."""
    settings, speed = params.evaluate, params.train.speed
    model, contents = load_model_file(model_file)
    uses_val = settings.threshold_from == "validation" or settings.postprocess == "validation"
    splits = ("val", "test") if uses_val else ("test",)
    data = {name: load_split(slices, name) for name in splits}
    for split in data.values():
        check_trained_on(split, contents, model_file, slices)
    test, targets = data["test"], list(data["test"].meta["targets"])
    device = pick_device("cpu" if params.train.device == "cpu" else "auto")
    set_threads(params.train.num_threads)
    model = model.to(device)

    def predict(images: np.ndarray) -> np.ndarray:  # bf16 on a GPU under auto, as in training's validation
        return predict_probabilities(model, images, device, precision=speed.precision, channels_last=speed.channels_last,
                                     tta=settings.tta)

    val_probabilities = predict(data["val"].images) if "val" in data else None
    threshold, sweep, rule, rules = decide(val_probabilities, data.get("val"), settings,
                                           contents.get("min_component_voxels", settings.min_component_voxels))
    threshold, rule = from_model_file(contents, model_file, threshold, rule)
    probabilities = predict(test.images)
    predicted = apply_rule(probabilities > threshold, test.index, rule)
    per_slice, per_case, metrics = evaluate_targets(predicted, test.masks, test.index, targets,
                                                    size_buckets=dict(settings.size_buckets))
    pr_curve = pd.concat([precision_recall_curve(probabilities[:, k], test.masks[:, k], PR_THRESHOLDS).assign(target=name)
                          for k, name in enumerate(targets)], ignore_index=True)
    chosen = {"threshold": threshold, "threshold_from": settings.threshold_from,
              "val_case_dice": None if sweep is None else float(sweep.case_dice.max()),
              "postprocess": rule, "tta": settings.tta}
    conventions = {"aggregation": AGGREGATION, "empty_mask_convention": EMPTY_MASK_CONVENTION,
                   "hd95_convention": HD95_CONVENTION, "hd95_unit": "px"}
    metrics = {**metrics, **chosen, **conventions}

    with atomic_dir(evaluation) as partial:
        per_slice.to_csv(partial / "per_slice.csv", index=False, float_format="%.6f")
        per_case.to_csv(partial / "per_case.csv", index=False, float_format="%.6f")
        pr_curve.to_csv(partial / "pr_curve.csv", index=False, float_format="%.6f")
        if sweep is not None:
            sweep.to_csv(partial / "threshold_sweep.csv", index=False, float_format="%.6f")
        if rules is not None:
            rules.to_csv(partial / "postprocess_sweep.csv", index=False, float_format="%.6f")
        write_json(partial / "settings.json", {**chosen, "targets": targets, "size_buckets": dict(settings.size_buckets),
                                               "pr_thresholds": PR_THRESHOLDS.tolist(), **conventions})
        np.save(partial / "probabilities.npy", probabilities.astype(np.float16))
        write_json(partial / "metrics_full.json", metrics)  # every number, for reading rather than comparing
    write_json(metrics_file, headline(metrics))
    log.info("%s test at threshold %.2f: per-case Dice %.4f, HD95 %.2f px; per-slice Dice %.4f; pooled Dice %.4f "
             "(%d cases, %d slices)", model_file, threshold, metrics["per_case"]["dice"],
             metrics["per_case"]["hd95_px"], metrics["per_slice"]["dice"], metrics["pooled"]["dice"],
             metrics["cases"], metrics["slices"])
    return metrics


def decide(val_probabilities: np.ndarray | None, val: SliceSet | None, settings: EvaluateParams,
           min_sizes: list[int]) -> tuple[float, pd.DataFrame | None, str, pd.DataFrame | None]:
    """The decision threshold and the post-processing rule, as train stores them and evaluate uses
    them: the threshold from the val split (or evaluate.threshold), then, at that threshold, the
    connected-component rule that raises val Dice (or none), remove_small trying `min_sizes` (the
    model file's: evaluate.min_component_voxels up to the smallest training tumor). Also their
    sweeps (None when fixed)."""
    sweep, threshold = None, settings.threshold
    if settings.threshold_from == "validation":
        threshold, sweep = choose_threshold(val_probabilities, val.masks, val.index, settings.threshold_grid,
                                            settings.threshold_smoothing)
        log.info("threshold %.2f chosen on val (mean per-case Dice %.4f)", threshold, sweep.case_dice.max())
    rule, rules = "none", None
    if settings.postprocess == "validation":
        rule, rules = choose_postprocess(val_probabilities > threshold, val.masks, val.index, list(min_sizes))
        log.info("post-processing %s chosen on val (mean per-case Dice %.4f, none %.4f)", rule,
                 rules.case_dice.max(), rules.case_dice.iloc[0])
    return threshold, sweep, rule, rules


def from_model_file(contents: dict, model_file: Path, threshold: float, rule: str) -> tuple[float, str]:
    """The threshold and post-processing rule the model file carries, which bts-predict applies: the
    metrics describe what prediction does. Train chose them on the same val split with the same
    evaluate params (dvc.yaml lists them for train), so they differ from this run's choice only on a
    near tie, where recomputed probabilities round differently; that is logged."""
    stored_threshold = float(contents.get("threshold", threshold))
    stored_rule = str(contents.get("postprocess", NONE))
    if (stored_threshold, stored_rule) != (threshold, rule):
        log.info("threshold %.2f and post-processing %s from %s (chosen by train on the same val split; "
                 "recomputed here: %.2f, %s, a near tie)", stored_threshold, stored_rule, model_file, threshold, rule)
    return stored_threshold, stored_rule


def check_trained_on(split: SliceSet, contents: dict, model_file: Path, slices: Path) -> None:
    """Refuse slices prepared otherwise than the model's training data (channels, size, targets, ...)."""
    for key, trained_on in contents["data_meta"].items():
        if key != "source_version" and split.meta[key] != trained_on:
            raise PipelineError(f"{slices / split.meta['split'] / 'meta.json'}: {key} is {split.meta[key]!r} "
                                f"but {model_file} was trained on {trained_on!r}; re-run train")
