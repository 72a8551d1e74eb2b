"""Export a trained model as a self-contained torch.export program: `python -m btseg.inference.export MODEL --out FILE.pt2`.

The .pt2 file holds the network's graph and weights; loading it needs PyTorch only, not this
package: `torch.export.load("model.pt2").module()(x)` with x float32 (N, C, H, W) prepared as the
embedded `preprocessing.json` says, returning logits (N, K, H, W). The batch size is dynamic.
An existing --out is replaced only when it is such a program (a re-export); any other file is left alone.
"""  # noqa: E501  (the first line is argparse's description, kept whole)

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch

from btseg.errors import PipelineError, one_line, run_stage
from btseg.fileio import atomic_file
from btseg.inference.model import load_model

log = logging.getLogger("btseg.inference.export")
META_FILE = "preprocessing.json"  # embedded in the program's archive as <name>/extra/preprocessing.json


def export(model_path: Path, out: Path) -> dict:
    """Write the .pt2 program; returns the metadata embedded with it."""
    _check_writable(out)
    model = load_model(model_path)
    # 2.5D models take each sequence with its neighbouring slices (preprocess.neighbours)
    size, channels = model.settings.size, len(model.channels) * (2 * model.settings.neighbours + 1)
    example = torch.zeros(2, channels, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model.network.eval(), (example,), dynamic_shapes=({0: batch},))
    meta = {"input": f"float32 (N, {channels}, {size}, {size}), channels {model.channels}",
            "output": f"logits (N, {len(model.targets)}, {size}, {size}), targets {model.targets}; "
                      f"tumor where sigmoid(logit) > threshold",
            "threshold": model.threshold, "postprocess": model.postprocess, "test_time_flips": model.tta,
            "preprocessing": model.settings.__dict__, "model": model.description}
    try:
        with atomic_file(out) as partial:
            torch.export.save(program, partial, extra_files={META_FILE: json.dumps(meta, default=list)})
    except (OSError, RuntimeError) as error:  # torch's writer reports a full disk or lost folder as RuntimeError
        raise PipelineError(f"--out {out}: cannot write ({one_line(error, 120)})") from None
    return meta


def _check_writable(out: Path) -> None:
    """Fail before the export's work when the output folder cannot take a file, or `out` is something
    other than a program this command wrote (which it must not overwrite)."""
    if out.is_dir():
        raise PipelineError(f"--out {out}: is a folder; give a file name ending in .pt2")
    if out.exists() and not _is_export(out):
        raise PipelineError(f"--out {out}: exists and is not a program bts-export wrote; move it or pick another name")
    folder = out.parent
    if not folder.is_dir():
        raise PipelineError(f"--out {out}: {folder} is not an existing folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise PipelineError(f"--out {out}: cannot write in {folder} ({error.strerror})") from None


def _is_export(path: Path) -> bool:
    """Whether `path` is a torch.export archive carrying this command's metadata file."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(name.endswith(f"/extra/{META_FILE}") for name in names) and any(
        name.endswith("/archive_format") for name in names)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="models/<dataset>/<model>/model.pt")
    parser.add_argument("--out", type=Path, required=True, help="output file, e.g. unet.pt2")
    args = parser.parse_args(argv)
    if args.out.suffix != ".pt2":
        raise PipelineError(f"--out {args.out}: use the .pt2 suffix of torch.export programs")
    export(args.model, args.out)
    log.info("exported %s to %s", args.model, args.out)


def console() -> None:
    """Entry point of the `bts-export` console script."""
    run_stage(main)


if __name__ == "__main__":
    run_stage(main)
