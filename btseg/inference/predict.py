"""Predict tumor masks on new scans with a trained model: `python -m btseg.inference.predict MODEL INPUT... --out DIR`.

INPUT is a BraTS case folder or NIfTI files (one per sequence), DICOM series (a folder of them: one
case per series, or per study for a multi-sequence model, each sequence's series found by its
SeriesDescription), BraTS .h5 slices (a folder of them is grouped by volume), or PNG/JPG/TIF images;
folders are searched recursively. Each input gets its mask(s) in its own geometry (NIfTI with the
input's affine and header; for DICOM also a DICOM SEG referencing the series; PNG mask + overlay for
slices and images), an overview picture of volumes and a JSON summary. A bad input is reported in one
line; the others are still processed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from btseg.errors import PipelineError, run_stage
from btseg.inference.dicom import SEQUENCE_RULES, parse_rules
from btseg.inference.inputs import find_scans, output_folders, read_scan
from btseg.inference.model import load_model, predict_scan
from btseg.inference.outputs import SAMPLE_WARNING, write_outputs
from btseg.models.prediction import describe_run, pick_device, what_runs

log = logging.getLogger("btseg.inference.predict")


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path,
                        help="a model file written by the train stage (models/<dataset>/<model>/model.pt)")
    parser.add_argument("inputs", type=Path, nargs="+",
                        help="case folders, NIfTI/.h5 files, images, or folders of them")
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output folder (default: predictions)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto (default): bf16 on GPUs and on CPUs with bf16 units (AVX-512 BF16, AMX), "
                             "fp32 elsewhere; fp32: the same bits as an fp32 run elsewhere")
    parser.add_argument("--sequence-rule", action="append", default=[], metavar="NAME=REGEX",
                        help="DICOM: the SeriesDescription rule (regular expression, any case) of sequence NAME, "
                             "tried before the built-in ones (" + ", ".join(f"{k}: {v}" for k, v in
                                                                            SEQUENCE_RULES.items()) + ")")
    args = parser.parse_args(argv)
    rules = parse_rules(args.sequence_rule)
    try:
        device = pick_device(args.device)
    except RuntimeError as error:
        raise PipelineError(f"--device: {error}") from None
    if args.out.exists() and not args.out.is_dir():
        raise PipelineError(f"--out {args.out}: is a file; give a folder (it is created if missing)")
    model = load_model(args.model)
    if model.trained_on_sample:
        log.warning("%s: %s", args.model, SAMPLE_WARNING)
    groups, problems = find_scans(args.inputs, model, args.out, rules)
    log.info("predicting on %s", describe_run(what_runs(args.precision, True, device), args.precision))
    done = 0
    for group, folder in zip(groups, output_folders(groups)):
        try:
            scan = read_scan(group, model)
            scan.folder = folder
            summary = write_outputs(scan, predict_scan(scan.image, model, device, args.precision), model, args.out)
        except PipelineError as error:
            problems.append(str(error))
            continue
        done += 1
        log.info("%s: tumor %s", scan.name, "found" if summary["tumor_present"] else "not found")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not groups and not problems:
        raise PipelineError(f"no inputs found in {[str(p) for p in args.inputs]} (NIfTI, DICOM, .h5, PNG/JPG/TIF)")
    log.info("%d input(s) predicted into %s, %d failed", done, args.out, len(problems))
    if problems:
        sys.exit(1)


def console() -> None:
    """Entry point of the `bts-predict` console script."""
    run_stage(main)


if __name__ == "__main__":
    run_stage(main)
