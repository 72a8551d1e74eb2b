"""The decisions a model file carries, made on the val split: the decision threshold, then the
post-processing rule at that threshold. The train stage makes them once and stores them
(btseg.models.model_file); evaluate and bts-predict apply the stored ones.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from btseg.config import EvaluateParams, TrainParams
from btseg.decisions.postprocess import (
    EXPECTED_DICE,
    NONE,
    choose_peak,
    choose_postprocess,
    per_case_masks,
    sizes_within_tumors,
)
from btseg.decisions.thresholds import case_dice_at, choose_threshold
from btseg.models.prediction import predict_probabilities
from btseg.preprocessing.slices import SliceSet

log = logging.getLogger(__name__)


def decide(val_probabilities: np.ndarray | None, val: SliceSet | None, settings: EvaluateParams,
           min_sizes: list[int]) -> tuple[float, str]:
    """The decision threshold and the post-processing rule: the threshold from the val split (or
    evaluate.threshold), then, at that threshold, the connected-component rule that raises val Dice
    (or none), remove_small trying `min_sizes` (evaluate.min_component_voxels up to the smallest
    training tumor: `component_sizes`); then a peak rule with a threshold at or below it where that
    scores clearly higher (btseg.decisions.postprocess.choose_peak)."""
    threshold = settings.threshold
    if settings.threshold_from == "validation":
        threshold, sweep = choose_threshold(val_probabilities, val.masks, val.index, settings.threshold_grid,
                                            settings.threshold_smoothing)
        log.info("threshold %.2f chosen on val (mean per-case Dice %.4f there, best of the grid %.4f)", threshold,
                 case_dice_at(sweep, threshold), sweep.case_dice.max())
    rule = "none"
    if settings.per_case_threshold:
        rule = expected_dice_rule(val_probabilities, val, settings, min_sizes)[0]
        log.info("each case at its own expected-Dice threshold, post-processing %s", rule)
    elif settings.postprocess == "validation":
        threshold, rule, rules = choose_rules(val_probabilities, val, settings, threshold, min_sizes)
        chosen = rules.case_dice[(rules.rule == rule) & np.isclose(rules.threshold, threshold)].iloc[0]
        log.info("post-processing %s at threshold %.2f chosen on val (mean per-case Dice %.4f; none at the "
                 "threshold above %.4f)", rule, threshold, chosen, rules.case_dice.iloc[0])
    return threshold, rule


def choose_rules(val_probabilities: np.ndarray, val: SliceSet, settings: EvaluateParams, threshold: float,
                 min_sizes: list[int]) -> tuple[float, str, pd.DataFrame]:
    """The post-processing rule at `threshold` (choose_postprocess), then a peak rule where it beats it
    (choose_peak: peaks from evaluate.threshold_grid, over the grid's thresholds at or below
    `threshold`, or `threshold` alone under threshold_from=fixed). Returns the threshold, the rule
    and every candidate's val Dice (columns threshold, rule, case_dice)."""
    rule, rules = choose_postprocess(val_probabilities > threshold, val.masks, val.index, list(min_sizes))
    grid = list(settings.threshold_grid)
    lows = [t for t in grid if t <= threshold] if settings.threshold_from == "validation" else [threshold]
    return choose_peak(val_probabilities, val.masks, val.index, threshold, rule, rules, lows, grid)


def expected_dice_rule(val_probabilities: np.ndarray | None, val: SliceSet | None, settings: EvaluateParams,
                       min_sizes: list[int]) -> tuple[str, pd.DataFrame | None]:
    """evaluate.per_case_threshold's rule: `expected_dice`, then the component rule chosen on val under
    it (postprocess=validation; no peak rules: they need a common threshold), and the table of the
    candidates (None when the rule is not chosen on val)."""
    if settings.postprocess != "validation":
        return EXPECTED_DICE, None
    rule, rules = choose_postprocess(per_case_masks(val_probabilities, val.index), val.masks, val.index,
                                     list(min_sizes))
    rules = rules.assign(rule=[EXPECTED_DICE if r == NONE else f"{EXPECTED_DICE}+{r}" for r in rules.rule],
                         threshold=np.nan)[["threshold", "rule", "case_dice"]]
    return (EXPECTED_DICE if rule == NONE else f"{EXPECTED_DICE}+{rule}"), rules


def validation_sweeps(val_probabilities: np.ndarray | None, val: SliceSet | None, settings: EvaluateParams,
                      min_sizes: list[int]) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """What the decisions were chosen from, for the record, made again as `decide` makes them: mean
    per-case val Dice per candidate threshold (threshold_from=validation) and per post-processing
    rule and threshold (postprocess=validation); None for a decision that was fixed."""
    sweep = rules = None
    threshold = settings.threshold
    if settings.threshold_from == "validation":
        threshold, sweep = choose_threshold(val_probabilities, val.masks, val.index, settings.threshold_grid,
                                            settings.threshold_smoothing)
    if settings.per_case_threshold:
        rules = expected_dice_rule(val_probabilities, val, settings, min_sizes)[1]
    elif settings.postprocess == "validation":
        _, _, rules = choose_rules(val_probabilities, val, settings, threshold, min_sizes)
    return sweep, rules


def component_sizes(evaluate: EvaluateParams, train_split: SliceSet) -> list[int]:
    """evaluate.min_component_voxels without the sizes above the training split's smallest tumor
    (btseg.decisions.postprocess.sizes_within_tumors); what was left out is logged."""
    sizes = sizes_within_tumors(list(evaluate.min_component_voxels), train_split.masks, train_split.index)
    if evaluate.postprocess == "validation" and len(sizes) < len(evaluate.min_component_voxels):
        log.info("post-processing: remove_small sizes %s left out, larger than the smallest training tumor",
                 sorted(set(evaluate.min_component_voxels) - set(sizes)))
    return sizes


def decide_on_validation(model: torch.nn.Module, val_split: SliceSet, evaluate: EvaluateParams, min_sizes: list[int],
                         device: torch.device, config: TrainParams) -> tuple[float, str]:
    """The decision threshold and post-processing rule of a trained model, from its predictions on
    the val split (`decide`)."""
    probabilities = predict_probabilities(model, val_split.images, device, precision=config.speed.precision,
                                          channels_last=config.speed.channels_last, tta=evaluate.tta)
    return decide(probabilities, val_split, evaluate, min_sizes)
