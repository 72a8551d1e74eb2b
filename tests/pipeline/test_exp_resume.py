"""`dvc exp run` interrupted, then run again, resumes training from the saved epoch and ends with the
model an uninterrupted experiment gives (DVC puts recorded outs back before a stage runs, so the
checkpoint must not be one of them)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, tiny_params
from tests.pipeline.test_dvc_flow import project_env, sh

pytestmark = pytest.mark.slow

EPOCHS = 14
CHECKPOINT = Path("checkpoints/tumor_coco/unet/checkpoint.pt")


@pytest.fixture
def project(tmp_path) -> Path:
    """The pipeline on the tiny COCO sample, one model, after `dvc repro` and a commit (a clone's state)."""
    root = tmp_path / "project"
    root.mkdir()
    for folder in ("stages", "btseg", "plots"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    params = tiny_params()
    params["data"]["datasets"], params["train"]["models"] = ["tumor_coco"], ["unet"]
    params["train"].update(epochs=2, base_channels=8, batch_size=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q"], ["git", "config", "user.name", "t"], ["git", "config", "user.email", "t@t"],
                    ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "pipeline"], ["dvc", "repro"],
                    ["git", "add", "-A"], ["git", "commit", "-qm", "baseline"]):
        sh(root, *command)
    return root


def _weights(project: Path) -> dict:
    return torch.load(project / "models/tumor_coco/unet/model.pt", weights_only=True)["state_dict"]


def test_an_interrupted_experiment_resumes_and_ends_as_an_uninterrupted_one(project, tmp_path):
    reference = tmp_path / "reference"
    shutil.copytree(project, reference, symlinks=True)
    sh(reference, "dvc", "exp", "run", "-S", f"train.epochs={EPOCHS}")

    # as `timeout -s TERM ... dvc exp run` does: SIGTERM to DVC once some epochs are saved
    command = [sys.executable, "-m", "dvc", "exp", "run", "-S", f"train.epochs={EPOCHS}"]
    process = subprocess.Popen(command, cwd=project, env=project_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        try:
            if torch.load(project / CHECKPOINT, weights_only=True)["epoch"] >= 3:
                break
        except Exception:  # noqa: BLE001 - not written yet, or being replaced
            pass
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    saved = torch.load(project / CHECKPOINT, weights_only=True)["epoch"]
    assert 3 <= saved < EPOCHS, "the experiment finished before it could be interrupted"

    result = sh(project, "dvc", "exp", "run", "-S", f"train.epochs={EPOCHS}", check=False)
    if result.returncode:
        state = sh(project, "git", "status", "--short").stdout + sh(project, "git", "for-each-ref", "refs/exps").stdout
        raise AssertionError(f"{result.stderr[-2000:]}\n{state}")
    output = result.stdout + result.stderr
    assert "training from scratch" not in output
    resumed_at = int(output.split(f"resuming from {CHECKPOINT} after epoch ")[1].split()[0])
    assert resumed_at >= saved  # the interrupted run may have saved another epoch on its way out
    expected, got = _weights(reference), _weights(project)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
