"""Stage `report`: reports/<dataset>/<model>/worst_cases.png, the worst test slices with overlays."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from stages.cli import PipelineError, run_stage, stage_arguments
from stages.config import load_params
from stages.fileio import atomic_file
from stages.plotting import failure_figure, worst_slices
from stages.slices import load_split

log = logging.getLogger("stages.report")


def main(argv: Sequence[str]) -> None:
    args = stage_arguments(__doc__, model=True).parse_args(argv)
    params = load_params(args.params)
    evaluation = Path("reports") / args.dataset / args.model / "evaluation"
    try:
        per_slice = pd.read_csv(evaluation / "per_slice.csv", dtype={"case_id": str})
        probabilities = np.load(evaluation / "probabilities.npy", mmap_mode="r")
    except FileNotFoundError as error:
        raise PipelineError(f"{error.filename}: missing; run the evaluate stage first") from None
    test = load_split(Path("data/slices") / args.dataset, "test")
    target = next(iter(test.meta["targets"]))  # the first target (whole tumor / WT) is the one plotted
    per_slice = per_slice[per_slice.target == target].reset_index(drop=True)
    if len(per_slice) != len(test.images) or len(probabilities) != len(test.images):
        raise PipelineError(f"{evaluation}: {len(per_slice)} rows for {len(test.images)} test slices; re-run evaluate")
    channels = test.meta["channels"]
    wanted = params.report.display_channel
    channel = channels.index(wanted) if wanted in channels else 0
    worst = worst_slices(per_slice, params.report.worst_k)
    rows = worst.index.to_numpy()
    titles = [f"case {r.case_id} slice {r.slice_index}\nDice {r.dice:.2f}, tumor {r.truth_pixels} px" for r in worst.itertuples()]
    figure = failure_figure(test.images[rows, channel].astype(np.float32), test.masks[rows, 0],
                            probabilities[rows, 0] > params.evaluate.threshold, titles,
                            f"{args.dataset} / {args.model}: worst test slices, {target} ({channels[channel]})")
    with atomic_file(Path("reports") / args.dataset / args.model / "worst_cases.png") as partial:
        figure.savefig(partial, dpi=110, format="png")
    plt.close(figure)
    log.info("%s/%s: worst %d test slices plotted", args.dataset, args.model, len(rows))


if __name__ == "__main__":
    run_stage(main)
