"""benchmarks/gpu_pack.py: the real data packed into shards for the GPU machine comes back, through the
dataset's own reader, as the same FLAIR slices and masks; a shard cut short or missing is named before
anything is unpacked."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from btseg.data import lgg
from btseg.errors import PipelineError
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_pack  # noqa: E402


@pytest.fixture
def archive(tmp_path, realdata_lgg) -> Path:
    """The real LGG excerpt's patient beside five generated ones, in one kaggle_3m tree."""
    root = tmp_path / "archive"
    lgg.write_sample(root, cases=5, slices_per_case=7, size=256, seed=11, duplicate_tree=False)
    real = next(p for p in (realdata_lgg / lgg.TREE).iterdir() if p.is_dir())
    shutil.copytree(real, root / lgg.TREE / real.name)
    return root


def _read_all(root: Path) -> dict:
    options = gpu_pack._lgg_options()
    cases = [lgg.read_case(ref, options) for ref in lgg.list_cases(root, options)]
    return {c.case_id: (c.image, c.regions, tuple(c.slice_index)) for c in cases}


def test_unpacked_shards_read_as_the_source_flair_and_masks(archive, tmp_path):
    manifest = gpu_pack.pack("lgg", archive, tmp_path / "shards", shard_bytes=300_000)
    assert len(manifest["shards"]) >= 3  # several shards, patients dealt in order, none split
    assert sum(len(s["members"]) for s in manifest["shards"]) == manifest["members"] == 6
    assert all(s["bytes"] <= 300_000 or len(s["members"]) == 1 for s in manifest["shards"])
    on_disk = json.loads((tmp_path / "shards/lgg.manifest.json").read_text())
    assert on_disk == manifest
    written = gpu_pack.unpack(tmp_path / "shards/lgg.manifest.json", tmp_path / "shards", tmp_path / "out")
    source, unpacked = _read_all(archive), _read_all(tmp_path / "out")
    assert written == manifest["slices"] == sum(len(v[2]) for v in source.values())
    assert sorted(unpacked) == sorted(source)
    for case_id, (image, regions, slices) in source.items():
        np.testing.assert_array_equal(unpacked[case_id][0], image)  # FLAIR, as the recipe reads it
        np.testing.assert_array_equal(unpacked[case_id][1], regions)
        assert unpacked[case_id][2] == slices
        assert regions.any() or case_id.startswith("TCGA")  # the masks are not all empty


def test_a_cut_or_missing_shard_is_named_and_nothing_is_unpacked(archive, tmp_path):
    manifest = gpu_pack.pack("lgg", archive, tmp_path / "shards", shard_bytes=300_000)
    first, second = (tmp_path / "shards" / s["name"] for s in manifest["shards"][:2])
    first.write_bytes(first.read_bytes()[:1000])
    second.unlink()
    with pytest.raises(PipelineError) as raised:
        gpu_pack.unpack(tmp_path / "shards/lgg.manifest.json", tmp_path / "shards", tmp_path / "out")
    assert str(raised.value) == (
        f"{tmp_path / 'shards'}: missing {second.name}; SHA-256 differs from the manifest for {first.name} "
        f"(1000 bytes, expected {manifest['shards'][0]['bytes']}) (a transfer cut short?): send those shards again")
    assert not (tmp_path / "out").exists()


def test_the_coco_export_travels_at_the_recipes_size_with_its_polygons_scaled(tmp_path, realdata_coco):
    """Shrunk to 320 px before travelling: the same images as shrinking at preprocessing (JPEG quality 95
    costs about a grey level) and masks drawn from the scaled polygons on the shrunk 640 px masks' pixels."""
    import cv2

    from btseg.data import coco

    manifest = gpu_pack.pack("tumor_coco", realdata_coco, tmp_path / "shards", shard_bytes=2**20, size=320)
    gpu_pack.unpack(tmp_path / "shards/tumor_coco.manifest.json", tmp_path / "shards", tmp_path / "out")
    source = [image for split in coco.SPLIT_FOLDERS for image in coco.read_split(realdata_coco, split)]
    packed = [image for split in coco.SPLIT_FOLDERS for image in coco.read_split(tmp_path / "out", split)]
    assert manifest["slices"] == len(packed) == len(source) > 0
    overlaps, grey_errors = [], []
    for original, small in zip(source, packed):
        assert small.path.name == original.path.name and (small.width, small.height) == (320, 320)
        grey, mask = coco.read_image(original)
        small_grey, small_mask = coco.read_image(small)
        expected = cv2.resize(grey[0], (320, 320), interpolation=cv2.INTER_AREA)
        grey_errors.append(float(np.abs(small_grey[0] - expected).mean()))
        shrunk = cv2.resize(mask[0].astype(np.float32), (320, 320), interpolation=cv2.INTER_AREA) > 0.5
        if shrunk.any():
            overlaps.append((shrunk & (small_mask[0] > 0)).sum() / (shrunk | (small_mask[0] > 0)).sum())
    assert max(grey_errors) < 1.5
    assert overlaps and min(overlaps) > 0.9 and np.mean(overlaps) > 0.95
