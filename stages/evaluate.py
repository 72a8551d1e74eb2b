"""Stage `evaluate`: test-split Dice / IoU / precision / recall into metrics/<dataset>/<model>.json.

Also writes reports/<dataset>/<model>/evaluation/per_slice.csv, per_case.csv (a row per slice or
case and target) and probabilities.npy (float16 (N, K, H, W), test-split order) for the report stage.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stages.cli import PipelineError, run_stage, stage_arguments
from stages.config import load_params
from stages.fileio import atomic_dir, write_json
from stages.metrics import EMPTY_MASK_CONVENTION, evaluate_targets
from stages.models import load_checkpoint
from stages.slices import load_split
from stages.inference import pick_device, predict_probabilities, set_threads

log = logging.getLogger("stages.evaluate")


def main(argv: Sequence[str]) -> None:
    args = stage_arguments(__doc__, model=True).parse_args(argv)
    params = load_params(args.params)
    checkpoint_path = Path("models") / args.dataset / args.model / "model.pt"
    model, checkpoint = load_checkpoint(checkpoint_path)
    test = load_split(Path("data/slices") / args.dataset, "test")
    for key, trained_on in checkpoint["data_meta"].items():
        if key != "source_version" and test.meta[key] != trained_on:
            raise PipelineError(f"data/slices/{args.dataset}/test/meta.json: {key} is {test.meta[key]!r} "
                                f"but {checkpoint_path} was trained on {trained_on!r}; re-run train")
    device = pick_device("cpu" if params.train.device == "cpu" else "auto")
    set_threads(params.train.num_threads)
    probabilities = predict_probabilities(model.to(device), test.images, device)
    threshold = params.evaluate.threshold
    per_slice, per_case, metrics = evaluate_targets(probabilities > threshold, test.masks, test.index, list(test.meta["targets"]))
    metrics.update(threshold=threshold, empty_mask_convention=EMPTY_MASK_CONVENTION)
    with atomic_dir(Path("reports") / args.dataset / args.model / "evaluation") as partial:
        per_slice.to_csv(partial / "per_slice.csv", index=False, float_format="%.6f")
        per_case.to_csv(partial / "per_case.csv", index=False, float_format="%.6f")
        np.save(partial / "probabilities.npy", probabilities.astype(np.float16))
    write_json(Path("metrics") / args.dataset / f"{args.model}.json", metrics)
    log.info("%s/%s test: per-case Dice %.4f, per-slice Dice %.4f, pooled Dice %.4f (%d cases, %d slices)",
             args.dataset, args.model, metrics["per_case"]["dice"], metrics["per_slice"]["dice"],
             metrics["pooled"]["dice"], metrics["cases"], metrics["slices"])


if __name__ == "__main__":
    run_stage(main)
