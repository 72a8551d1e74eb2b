"""Stage entry points as DVC runs them: one-line errors, and nothing half-written on failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.datasets import brats_h5


def run(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def project(tmp_path, params_dict) -> Path:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict, sort_keys=False))
    return tmp_path


def test_corrupt_h5_stops_preprocess_naming_the_file_and_leaves_no_slices(project):
    assert run(project, "stages.download", "--dataset", "brats2020").returncode == 0
    broken = brats_h5.list_slices(project / "data" / "raw" / "brats2020")[5].path
    broken.write_bytes(broken.read_bytes()[:500])
    result = run(project, "stages.preprocess", "--dataset", "brats2020")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {broken.relative_to(project)}: unreadable HDF5"), result.stderr
    slices = project / "data" / "slices"
    assert not (slices / "brats2020").exists() and not list(slices.glob("*.partial-*"))


def test_bad_param_stops_a_stage_with_one_line_naming_the_key(project, params_dict):
    params_dict["train"]["learning_rate"] = "fast"
    (project / "params.yaml").write_text(yaml.safe_dump(params_dict, sort_keys=False))
    result = run(project, "stages.download", "--dataset", "tumor_coco")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: train.learning_rate: input should be a valid number (got 'fast')"]
    assert not (project / "data").exists()


def test_train_without_preprocessed_slices_says_what_to_run(project):
    result = run(project, "stages.train", "--dataset", "tumor_coco", "--model", "unet")
    assert result.returncode == 1
    assert "data/slices/tumor_coco/train/meta.json: missing; run `dvc repro`" in result.stderr


def test_train_twice_with_the_same_params_gives_the_same_weights(project):
    import torch

    for stage in ("stages.download", "stages.preprocess"):
        assert run(project, stage, "--dataset", "tumor_coco").returncode == 0
    weights = []
    for _ in range(2):
        result = run(project, "stages.train", "--dataset", "tumor_coco", "--model", "resunet")
        assert result.returncode == 0, result.stderr
        checkpoint = torch.load(project / "models/tumor_coco/resunet/model.pt", weights_only=True)
        weights.append(checkpoint["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
