"""Pack a real dataset into shards small enough to travel to the GPU machine (at most 64 MiB a call,
the repository included), and unpack them there after checking every shard's hash.

    python benchmarks/gpu_pack.py pack lgg /path/to/lgg --out .gpu-data [--shard-mib 40] [--cases N]
    python benchmarks/gpu_pack.py unpack .gpu-data/lgg.manifest.json --shards DIR --out /tmp/archive

LGG: the FLAIR channel and the mask of every slice (what `lgg_cpu` and `lgg_gpu` read, through the
dataset's own reader and its checks), as uint8 arrays, one zlib-compressed .npz per patient, the
patients dealt in order into shards of at most `--shard-mib`. Unpacking writes them back in the
archive's layout (`kaggle_3m/<case>/<case>_<k>.tif` and `_mask.tif`), FLAIR in all three TIFF
channels: the archive's own way of filling a missing sequence, so a FLAIR-only recipe reads exactly
the source's FLAIR and masks (tests/test_gpu_pack.py), and a three-channel one must not be run on it.
The manifest (JSON) names each shard with its SHA-256, size and patients; a shard that is missing or
whose hash differs (a transfer cut short) is named in one line before anything is unpacked.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from btseg.config import parse_params  # noqa: E402
from btseg.data import lgg  # noqa: E402
from btseg.errors import PipelineError, run_stage  # noqa: E402

MANIFEST = "{dataset}.manifest.json"
SHARD = "{dataset}-{index:03d}.tar"


def _lgg_options():
    """data.lgg of the repository's params, FLAIR alone: the channel that travels."""
    import yaml  # noqa: PLC0415

    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["data"]["lgg"]["input_channels"] = ["flair"]
    return parse_params(raw).data.lgg


def lgg_blobs(archive: Path, cases: int | None = None):
    """(case id, .npz bytes, slices) per patient: FLAIR and masks as uint8, with the slice numbers."""
    options = _lgg_options()
    refs = lgg.list_cases(archive, options)
    for ref in refs[:cases]:
        case = lgg.read_case(ref, options)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, flair=case.image[:, 0].astype(np.uint8), mask=case.regions[:, 0].astype(np.uint8),
                            slice_index=case.slice_index)
        yield case.case_id, buffer.getvalue(), len(case.slice_index)


def pack(dataset: str, source: Path, out: Path, shard_bytes: int, cases: int | None = None) -> dict:
    """Write the shards and the manifest into `out`; returns the manifest."""
    if dataset != "lgg":
        raise PipelineError(f"dataset {dataset!r}: only lgg is packed so far")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(SHARD.format(dataset=dataset, index=0).replace("000", "*")):
        old.unlink()
    shards, current, size = [], [], 0

    def close() -> None:
        name = SHARD.format(dataset=dataset, index=len(shards))
        path = out / name
        with tarfile.open(path, "w") as tar:
            for case_id, blob, _ in current:
                info = tarfile.TarInfo(f"{case_id}.npz")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        shards.append({"name": name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                       "bytes": path.stat().st_size, "cases": [c for c, _, _ in current],
                       "slices": sum(n for _, _, n in current)})

    for case_id, blob, slices in lgg_blobs(source, cases):
        if current and size + len(blob) + 1024 > shard_bytes:
            close()
            current, size = [], 0
        current.append((case_id, blob, slices))
        size += len(blob) + 1024  # a tar member's header and padding
    if current:
        close()
    manifest = {"dataset": dataset, "content": "FLAIR channel and mask of every slice, uint8",
                "source": str(source), "cases": sum(len(s["cases"]) for s in shards),
                "slices": sum(s["slices"] for s in shards), "shards": shards}
    (out / MANIFEST.format(dataset=dataset)).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def check_shards(manifest: dict, folder: Path) -> None:
    """Every shard of the manifest in `folder` with its SHA-256; else one line naming the shards at fault."""
    missing, wrong = [], []
    for shard in manifest["shards"]:
        path = folder / shard["name"]
        if not path.is_file():
            missing.append(shard["name"])
        elif hashlib.sha256(path.read_bytes()).hexdigest() != shard["sha256"]:
            wrong.append(f"{shard['name']} ({path.stat().st_size} bytes, expected {shard['bytes']})")
    problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
        [f"SHA-256 differs from the manifest for {', '.join(wrong)} (a transfer cut short?)"] if wrong else [])
    if problems:
        raise PipelineError(f"{folder}: {'; '.join(problems)}: send those shards again")


def unpack(manifest_path: Path, shards: Path, out: Path) -> int:
    """Check every shard, then write the archive layout under `out`; returns the number of slices written."""
    manifest = json.loads(manifest_path.read_text())
    check_shards(manifest, shards)
    tree = out / lgg.TREE
    written = 0

    def write_case(case_id: str, blob: bytes) -> int:
        arrays = np.load(io.BytesIO(blob))
        folder = tree / case_id
        folder.mkdir(parents=True, exist_ok=True)
        for flair, mask, k in zip(arrays["flair"], arrays["mask"], arrays["slice_index"]):
            ok = cv2.imwrite(str(folder / f"{case_id}_{k}.tif"), np.repeat(flair[..., None], 3, axis=-1), lgg.TIFF_RAW)
            ok &= cv2.imwrite(str(folder / f"{case_id}_{k}_mask.tif"), mask * np.uint8(255), lgg.TIFF_RAW)
            if not ok:
                raise PipelineError(f"{folder}: OpenCV could not write slice {k}; check the disk")
        return len(arrays["slice_index"])

    with ThreadPoolExecutor(8) as pool:
        for shard in manifest["shards"]:
            with tarfile.open(shards / shard["name"]) as tar:
                members = [(m.name.removesuffix(".npz"), tar.extractfile(m).read()) for m in tar.getmembers()]
            written += sum(pool.map(lambda item: write_case(*item), members))
    if written != manifest["slices"]:
        raise PipelineError(f"{manifest_path}: {written} slices unpacked, the manifest says {manifest['slices']}")
    return written


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack", help="a dataset's archive -> shards and a manifest")
    p.add_argument("dataset", choices=["lgg"])
    p.add_argument("source", type=Path, help="the unpacked archive (the folder holding kaggle_3m/)")
    p.add_argument("--out", type=Path, default=REPO / ".gpu-data")
    p.add_argument("--shard-mib", type=float, default=40.0,
                   help="largest shard (default 40 MiB: a call carries at most 64 MiB, the repository included)")
    p.add_argument("--cases", type=int, default=None, help="only the first N patients (a rehearsal)")
    u = commands.add_parser("unpack", help="check the shards' hashes, then write the archive's layout")
    u.add_argument("manifest", type=Path)
    u.add_argument("--shards", type=Path, default=None, help="folder of the shards (default: the manifest's)")
    u.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "pack":
        manifest = pack(args.dataset, args.source, args.out, int(args.shard_mib * 2**20), args.cases)
        for shard in manifest["shards"]:
            print(f"{args.out / shard['name']}: {shard['bytes'] / 2**20:.1f} MiB, {len(shard['cases'])} patients, "
                  f"{shard['slices']} slices, sha256 {shard['sha256'][:16]}")
        print(f"{manifest['cases']} patients, {manifest['slices']} slices in {len(manifest['shards'])} shard(s)")
    else:
        slices = unpack(args.manifest, args.shards or args.manifest.parent, args.out)
        print(f"{args.out / lgg.TREE}: {slices} slices unpacked, every shard's SHA-256 as in {args.manifest}")


if __name__ == "__main__":
    run_stage(main)
