"""Pack a real dataset into shards small enough to travel to the GPU machine (at most 64 MiB a call,
the repository included), and unpack them there after checking every shard's hash.

    python benchmarks/gpu_pack.py pack lgg /path/to/lgg --out .gpu-data [--shard-mib 50] [--cases N]
    python benchmarks/gpu_pack.py pack tumor_coco /path/to/export --size 320 --out .gpu-data
    python benchmarks/gpu_pack.py unpack .gpu-data/lgg.manifest.json --shards DIR --out /tmp/archive

LGG: the FLAIR channel and the mask of every slice (what `lgg_gpu` reads, through the
dataset's own reader and its checks), as uint8 arrays, one zlib-compressed .npz per patient, the
patients dealt in order into shards of at most `--shard-mib`. Unpacking writes them back in the
archive's layout (`kaggle_3m/<case>/<case>_<k>.tif` and `_mask.tif`), FLAIR in all three TIFF
channels: the archive's own way of filling a missing sequence, so a FLAIR-only recipe reads exactly
the source's FLAIR and masks (tests/test_gpu_pack.py), and a three-channel one must not be run on it.
COCO export (`tumor_coco`): every image shrunk to fit `--size` (the recipe's: 320 px for coco_gpu;
OpenCV's area interpolation, as preprocessing shrinks) and stored as a grey JPEG of quality 95, each
split's `_annotations.coco.json` with its polygons, boxes and areas scaled alike: 94 MB of 640 px
colour JPEGs become 70 MiB (two shards). Preprocessing at that size then resizes nothing; what differs from
shrinking the 640 px files at preprocessing is the JPEG re-encoding and masks drawn from the scaled
polygons instead of shrunk (tests/test_gpu_pack.py says by how much).
The manifest (JSON) names each shard with its SHA-256, size and members (patients, files); a shard that is missing or
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
from btseg.data import coco, lgg  # noqa: E402
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


def coco_blobs(export: Path, size: int):
    """(member path, bytes, images) of the export at `size` px: JPEGs shrunk and re-encoded, then each
    split's annotations scaled to them (polygons, boxes, areas)."""
    for folder in coco.SPLIT_FOLDERS.values():
        json_path = export / folder / coco.ANNOTATIONS
        if not json_path.is_file():
            raise PipelineError(f"{json_path}: missing; is {export} the COCO export (train/ valid/ test/)?")
        payload = json.loads(json_path.read_text(encoding="utf-8-sig"))
        scales = {}
        for image in payload["images"]:
            path = export / folder / image["file_name"]
            grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if grey is None:
                raise PipelineError(f"{path}: not a readable image")
            height, width = grey.shape
            factor = min(1.0, size / max(height, width))
            if factor < 1.0:
                grey = cv2.resize(grey, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_AREA)
            scales[image["id"]] = (grey.shape[1] / width, grey.shape[0] / height)
            image["height"], image["width"] = grey.shape
            ok, jpeg = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 95])
            yield f"{folder}/{image['file_name']}", jpeg.tobytes(), 1
        for annotation in payload["annotations"]:
            sx, sy = scales[annotation["image_id"]]
            annotation["segmentation"] = [[v * (sx if i % 2 == 0 else sy) for i, v in enumerate(polygon)]
                                          for polygon in annotation["segmentation"]]
            if "bbox" in annotation:
                x, y, w, h = annotation["bbox"]
                annotation["bbox"] = [x * sx, y * sy, w * sx, h * sy]
            if "area" in annotation:
                annotation["area"] = annotation["area"] * sx * sy
        yield f"{folder}/{coco.ANNOTATIONS}", json.dumps(payload).encode(), 0


def pack(dataset: str, source: Path, out: Path, shard_bytes: int, cases: int | None = None, size: int = 320) -> dict:
    """Write the shards and the manifest into `out`; returns the manifest."""
    if dataset not in ("lgg", "tumor_coco"):
        raise PipelineError(f"dataset {dataset!r}: lgg and tumor_coco are packed")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(SHARD.format(dataset=dataset, index=0).replace("000", "*")):
        old.unlink()
    shards, current, filled = [], [], 0

    def close() -> None:
        name = SHARD.format(dataset=dataset, index=len(shards))
        path = out / name
        with tarfile.open(path, "w") as tar:
            for member, blob, _ in current:
                info = tarfile.TarInfo(member)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        shards.append({"name": name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                       "bytes": path.stat().st_size, "members": [m for m, _, _ in current],
                       "slices": sum(n for _, _, n in current)})

    blobs = (((f"{case}.npz", blob, n) for case, blob, n in lgg_blobs(source, cases)) if dataset == "lgg"
             else coco_blobs(source, size))
    for member, blob, slices in blobs:
        if current and filled + len(blob) + 1024 > shard_bytes:
            close()
            current, filled = [], 0
        current.append((member, blob, slices))
        filled += len(blob) + 1024  # a tar member's header and padding
    if current:
        close()
    content = ("FLAIR channel and mask of every slice, uint8" if dataset == "lgg" else
               f"the export's files, images shrunk to fit {size} px (grey JPEG, quality 95), annotations scaled")
    manifest = {"dataset": dataset, "content": content,
                "source": str(source), "members": sum(len(s["members"]) for s in shards),
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
    if manifest["dataset"] == "tumor_coco":
        for shard in manifest["shards"]:
            with tarfile.open(shards / shard["name"]) as tar:
                tar.extractall(out, filter="data")
        return manifest["slices"]
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
    p.add_argument("dataset", choices=["lgg", "tumor_coco"])
    p.add_argument("source", type=Path, help="the unpacked archive (lgg: the folder holding kaggle_3m/; "
                                              "tumor_coco: the folder holding train/ valid/ test/)")
    p.add_argument("--size", type=int, default=320, help="tumor_coco: the recipe's preprocess.size (default 320)")
    p.add_argument("--out", type=Path, default=REPO / ".gpu-data")
    p.add_argument("--shard-mib", type=float, default=50.0,
                   help="largest shard (default 50 MiB: a call carries at most 64 MiB, the repository included)")
    p.add_argument("--cases", type=int, default=None, help="only the first N patients (a rehearsal)")
    u = commands.add_parser("unpack", help="check the shards' hashes, then write the archive's layout")
    u.add_argument("manifest", type=Path)
    u.add_argument("--shards", type=Path, default=None, help="folder of the shards (default: the manifest's)")
    u.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "pack":
        manifest = pack(args.dataset, args.source, args.out, int(args.shard_mib * 2**20), args.cases, args.size)
        for shard in manifest["shards"]:
            print(f"{args.out / shard['name']}: {shard['bytes'] / 2**20:.1f} MiB, {len(shard['members'])} members, "
                  f"{shard['slices']} slices, sha256 {shard['sha256'][:16]}")
        print(f"{manifest['members']} members, {manifest['slices']} slices or images, "
              f"{len(manifest['shards'])} shard(s)")
    else:
        slices = unpack(args.manifest, args.shards or args.manifest.parent, args.out)
        print(f"{args.out}: {slices} slices/images unpacked, every shard's SHA-256 as in {args.manifest}")


if __name__ == "__main__":
    run_stage(main)
