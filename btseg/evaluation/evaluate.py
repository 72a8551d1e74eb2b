"""The `evaluate` stage's library: test-split metrics of a model file, and the tables behind them.

The decision threshold and post-processing rule are the model file's: the train stage chose them on
the val split (btseg.decisions) and bts-predict applies the same, so the metrics describe what
prediction does. The val sweeps they were chosen from are recomputed here for the record.
Beside the metrics JSON (headline numbers only), the evaluation folder gets:
- per_slice.csv, per_case.csv: a row per slice or case and target, every metric (btseg.scoring.metrics);
- pr_curve.csv: pooled test precision / recall / Dice per threshold and target;
- threshold_sweep.csv: mean per-case val Dice per candidate threshold (threshold_from=validation);
- postprocess_sweep.csv: mean per-case val Dice per post-processing rule and threshold (postprocess=validation);
- settings.json: the threshold used and how it was chosen, the targets, the conventions;
- case_thresholds.csv: each test case's own threshold (evaluate.per_case_threshold);
- probabilities.npy: float16 (N, K, H, W), test-split order, for the report stage;
- metrics_full.json: every metric (per target, size buckets, other tools' conventions, the rules
  used); the metrics file itself keeps the few numbers people compare (`headline`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from btseg.config import Params
from btseg.decisions.choose import validation_sweeps
from btseg.decisions.postprocess import case_thresholds, segment, thresholds_each_case
from btseg.decisions.thresholds import case_dice_at, precision_recall_curve
from btseg.errors import PipelineError
from btseg.fileio import atomic_dir, write_json
from btseg.models import load_model_file
from btseg.models.prediction import describe_run, pick_device, predict_probabilities, set_threads, what_runs
from btseg.preprocessing.slices import SliceSet, load_split
from btseg.scoring.metrics import AGGREGATION, EMPTY_MASK_CONVENTION, HD95_CONVENTION, evaluate_targets, headline

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
    ran = what_runs(speed.precision, speed.channels_last, device)
    log.info("evaluating %s on %s", model_file, describe_run(ran, speed.precision))

    def predict(images: np.ndarray) -> np.ndarray:  # bf16 on a GPU under auto, as in training's validation
        return predict_probabilities(model, images, device, precision=speed.precision,
                                     channels_last=speed.channels_last, tta=settings.tta)

    # the decisions are the model file's (what bts-predict applies); the sweeps they came from are recorded
    threshold, rule = float(contents["threshold"]), str(contents["postprocess"])
    val_probabilities = predict(data["val"].images) if "val" in data else None
    sweep, rules = validation_sweeps(val_probabilities, data.get("val"), settings,
                                     contents.get("min_component_voxels", list(settings.min_component_voxels)))
    probabilities = predict(test.images)
    predicted = segment(probabilities, test.index, threshold, rule)
    per_slice, per_case, metrics = evaluate_targets(predicted, test.masks, test.index, targets,
                                                    size_buckets=dict(settings.size_buckets))
    pr_curve = pd.concat([precision_recall_curve(probabilities[:, k], test.masks[:, k],
                                                 PR_THRESHOLDS).assign(target=name)
                          for k, name in enumerate(targets)], ignore_index=True)
    chosen = {"threshold": threshold, "threshold_from": settings.threshold_from,
              "val_case_dice": decision_val_dice(sweep, rules, threshold, rule),
              "postprocess": rule, "tta": settings.tta, "ran": ran, "trained_on": contents.get("ran", {})}
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
        if thresholds_each_case(rule):
            case_thresholds(probabilities, test.index).to_csv(partial / "case_thresholds.csv", index=False)
        write_json(partial / "settings.json", {**chosen, "targets": targets,
                                               "size_buckets": dict(settings.size_buckets),
                                               "pr_thresholds": PR_THRESHOLDS.tolist(), **conventions})
        np.save(partial / "probabilities.npy", probabilities.astype(np.float16))
        write_json(partial / "metrics_full.json", metrics)  # every number, for reading rather than comparing
    write_json(metrics_file, headline(metrics))
    log.info("%s test at threshold %.2f: per-case Dice %.4f, HD95 %.2f px; per-slice Dice %.4f; pooled Dice %.4f "
             "(%d cases, %d slices)", model_file, threshold, metrics["per_case"]["dice"],
             metrics["per_case"]["hd95_px"], metrics["per_slice"]["dice"], metrics["pooled"]["dice"],
             metrics["cases"], metrics["slices"])
    return metrics


def decision_val_dice(sweep: pd.DataFrame | None, rules: pd.DataFrame | None, threshold: float,
                      rule: str) -> float | None:
    """The mean per-case val Dice of the decision applied: its row of the post-processing sweep, else
    the threshold's own point of the threshold sweep (no rule chosen on val), else None (fixed)."""
    if rules is not None:  # expected_dice rows have no common threshold (NaN)
        row = rules.case_dice[(rules.rule == rule) & (np.isclose(rules.threshold, threshold) | rules.threshold.isna())]
        if not row.empty:
            return float(row.iloc[0])
    return None if sweep is None or rule != "none" else case_dice_at(sweep, threshold)


def check_trained_on(split: SliceSet, contents: dict, model_file: Path, slices: Path) -> None:
    """Refuse slices prepared otherwise than the model's training data (channels, size, targets, ...)."""
    for key, trained_on in contents["data_meta"].items():
        if key != "source_version" and split.meta[key] != trained_on:
            raise PipelineError(f"{slices / split.meta['split'] / 'meta.json'}: {key} is {split.meta[key]!r} "
                                f"but {model_file} was trained on {trained_on!r}; re-run train")
