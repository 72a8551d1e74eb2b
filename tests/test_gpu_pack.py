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
    assert sum(len(s["cases"]) for s in manifest["shards"]) == manifest["cases"] == 6
    assert all(s["bytes"] <= 300_000 or len(s["cases"]) == 1 for s in manifest["shards"])
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
