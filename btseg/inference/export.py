"""Export a trained model for deployment: `python -m btseg.inference.export MODEL --out FILE.pt2` (or `--format onnx --out FILE.onnx`).

- pt2 (default): a torch.export program, graph and weights; loading it needs PyTorch only, not this
  package: `torch.export.load("model.pt2").module()(x)`; the metadata is embedded as `preprocessing.json`.
- onnx: an ONNX model (opset 18, one file) for onnxruntime, TensorRT or OpenVINO: input `image`,
  output `logits`; the same metadata as JSON in the model's metadata_props (`btseg`). The export is
  checked with onnxruntime on the CPU against the PyTorch model (fp32) and refused beyond 1e-4.
Either takes x float32 (N, C, H, W) prepared as the metadata says and returns logits (N, K, H, W);
the batch size is dynamic. An existing --out is replaced only when it is such a file this command
wrote (a re-export); any other file is left alone.
"""  # noqa: E501  (the first line is argparse's description, kept whole)

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from btseg.errors import PipelineError, one_line, run_stage
from btseg.fileio import atomic_file
from btseg.inference.model import load_model

log = logging.getLogger("btseg.inference.export")
META_FILE = "preprocessing.json"  # embedded in the program's archive as <name>/extra/preprocessing.json
ONNX_META_KEY = "btseg"  # the ONNX model's metadata_props entry holding the same JSON
ONNX_TOLERANCE = 1e-4  # largest |logit difference| against PyTorch accepted on the CPU
FORMATS = {"pt2": ".pt2", "onnx": ".onnx"}


def export(model_path: Path, out: Path, file_format: str = "pt2") -> dict:
    """Write the .pt2 program or the .onnx model; returns the metadata embedded with it."""
    _check_writable(out)
    model = load_model(model_path)
    # 2.5D models take each sequence with its neighbouring slices (preprocess.neighbours)
    size, channels = model.settings.size, len(model.channels) * (2 * model.settings.neighbours + 1)
    example = torch.zeros(2, channels, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    network = model.network.eval()
    program = torch.export.export(network, (example,), dynamic_shapes=({0: batch},))
    meta = {"input": f"float32 (N, {channels}, {size}, {size}), channels {model.channels}",
            "output": f"logits (N, {len(model.targets)}, {size}, {size}), targets {model.targets}; "
                      f"tumor where sigmoid(logit) > threshold (postprocess expected_dice: each scan at its own "
                      f"threshold, btseg.decisions.postprocess.expected_dice_threshold)",
            "threshold": model.threshold, "postprocess": model.postprocess, "test_time_flips": model.tta,
            "preprocessing": model.settings.__dict__, "model": model.description}
    try:
        with atomic_file(out) as partial:
            if file_format == "onnx":
                _write_onnx(program, meta, partial)
                difference = onnx_difference(partial, network, (3, channels, size, size))
                if difference > ONNX_TOLERANCE:
                    raise PipelineError(f"--out {out}: onnxruntime's logits differ from PyTorch's by {difference:.2e} "
                                        f"(more than {ONNX_TOLERANCE:g}); the export is not kept")
                log.info("onnxruntime matches PyTorch within %.1e (largest logit difference, 3 random images)",
                         difference)
            else:
                torch.export.save(program, partial, extra_files={META_FILE: json.dumps(meta, default=list)})
    except (OSError, RuntimeError) as error:  # torch's writer reports a full disk or lost folder as RuntimeError
        raise PipelineError(f"--out {out}: cannot write ({one_line(error, 120)})") from None
    return meta


def _write_onnx(program: torch.export.ExportedProgram, meta: dict, path: Path) -> None:
    """The program as one ONNX file (weights inside, opset 18) with the metadata in metadata_props."""
    onnx_program = torch.onnx.export(program, f=None, input_names=["image"], output_names=["logits"],
                                     opset_version=18, dynamo=True, optimize=True, verbose=False)
    proto = onnx_program.model_proto
    proto.metadata_props.add(key=ONNX_META_KEY, value=json.dumps(meta, default=list))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def onnx_difference(path: Path, network: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """Largest |logit difference| between onnxruntime (CPU) and the PyTorch model in fp32, on seeded
    random images of `shape` (a batch other than the export's example: the batch is dynamic)."""
    images = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = network.float()(images).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"image": images.numpy()})
    return float(np.abs(logits - expected).max())


def _check_writable(out: Path) -> None:
    """Fail before the export's work when the output folder cannot take a file, or `out` is something
    other than a program this command wrote (which it must not overwrite)."""
    if out.is_dir():
        raise PipelineError(f"--out {out}: is a folder; give a file name ending in .pt2 or .onnx")
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
    """Whether `path` is a torch.export archive or an ONNX model carrying this command's metadata."""
    if path.suffix == FORMATS["onnx"]:
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception:  # noqa: BLE001 - onnx raises protobuf's DecodeError and others on a foreign file
            return False
        return any(prop.key == ONNX_META_KEY for prop in proto.metadata_props)
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
    parser.add_argument("--out", type=Path, required=True, help="output file, e.g. unet.pt2 or unet.onnx")
    parser.add_argument("--format", choices=list(FORMATS), default="pt2",
                        help="pt2 (default): a torch.export program; onnx: an ONNX model checked with onnxruntime")
    args = parser.parse_args(argv)
    if args.out.suffix != FORMATS[args.format]:
        raise PipelineError(f"--out {args.out}: use the {FORMATS[args.format]} suffix for --format {args.format}")
    export(args.model, args.out, args.format)
    log.info("exported %s to %s", args.model, args.out)


def console() -> None:
    """Entry point of the `bts-export` console script."""
    run_stage(main)


if __name__ == "__main__":
    run_stage(main)
