"""The `cv_summary` stage's library: each cross-validation fold's model and the ensemble of all
folds, scored on the fixed test split, with the mean and spread over folds.

Each fold model predicts as its model file says (threshold, post-processing and test-time flips
chosen on its own fold's validation patients). The ensemble averages the folds' probabilities and
uses the mean of their thresholds and the post-processing rule most folds chose (`none` on a tie);
it is written as one model file, so `bts-predict` predicts with all folds at once.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from btseg.config import Params
from btseg.decisions.postprocess import NONE, segment
from btseg.errors import PipelineError
from btseg.fileio import write_json
from btseg.models import load_model_file, write_ensemble
from btseg.models.prediction import pick_device, predict_probabilities, set_threads
from btseg.preprocessing.slices import SliceSet, load_split
from btseg.scoring.metrics import evaluate_targets

log = logging.getLogger(__name__)


def summarize_folds(folds_dir: Path, slices: Path, metrics_file: Path, ensemble_file: Path, params: Params) -> dict:
    """Score the fold models under `folds_dir` (fold<k>/model.pt for every k of cv.runs) and their
    ensemble on the test split of `slices`; write `metrics_file` and the ensemble model file."""
    files = [folds_dir / f"fold{k}" / "model.pt" for k in params.cv.runs]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise PipelineError(f"{missing[0]}: missing; run the cv_train stages first "
                            f"({len(missing)} fold model(s) missing)")
    test = load_split(slices, "test")
    device = pick_device("cpu" if params.train.device == "cpu" else "auto")
    set_threads(params.train.num_threads)
    speed = params.train.speed
    folds, probabilities, contents = {}, [], []
    for k, path in zip(params.cv.runs, files):
        network, content = load_model_file(path)
        p = predict_probabilities(network.to(device), test.images, device, precision=speed.precision,
                                  channels_last=speed.channels_last, tta=bool(content.get("tta", False)))
        folds[str(k)] = score(p, test, content["threshold"], content.get("postprocess", NONE))
        probabilities.append(p)
        contents.append(content)
        log.info("fold %d: test per-case Dice %.4f", k, folds[str(k)]["dice"])
    threshold = float(np.mean([c["threshold"] for c in contents]))
    rule = majority_rule([c.get("postprocess", NONE) for c in contents])
    ensemble = score(np.mean(probabilities, axis=0), test, threshold, rule)
    dice = np.array([f["dice"] for f in folds.values()])
    metrics = {"folds": folds, "fold_mean_dice": float(dice.mean()),
               "fold_sd_dice": float(dice.std(ddof=1)) if len(dice) > 1 else 0.0,
               "ensemble": {**ensemble, "threshold": threshold, "postprocess": rule},
               "cases": int(test.index.case_id.nunique()), "folds_of": params.cv.folds}
    write_ensemble(ensemble_file, contents, threshold, rule)
    write_json(metrics_file, metrics)
    log.info("%d folds: test per-case Dice %.4f +- %.4f (mean +- sd); ensemble %.4f (95%% CI %.4f-%.4f)", len(dice),
             metrics["fold_mean_dice"], metrics["fold_sd_dice"], ensemble["dice"], ensemble["dice_ci95_low"],
             ensemble["dice_ci95_high"])
    return metrics


def score(probabilities: np.ndarray, test: SliceSet, threshold: float, rule: str) -> dict:
    """Per-case Dice (with its interval), per-slice and pooled Dice of thresholded, post-processed predictions."""
    masks = segment(probabilities, test.index, threshold, rule)
    _, _, metrics = evaluate_targets(masks, test.masks, test.index, list(test.meta["targets"]))
    per_case = metrics["per_case"]
    return {"dice": per_case["dice"], "dice_ci95_low": per_case["dice_ci95_low"],
            "dice_ci95_high": per_case["dice_ci95_high"], "per_slice_dice": metrics["per_slice"]["dice"],
            "pooled_dice": metrics["pooled"]["dice"]}


def majority_rule(rules: list[str]) -> str:
    """The post-processing rule most folds chose; `none` when no rule has a majority of the votes cast."""
    (rule, votes), *rest = Counter(rules).most_common()
    return rule if not rest or votes > rest[0][1] else NONE
