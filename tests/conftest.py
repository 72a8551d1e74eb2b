"""Shared fixtures: repository paths, the real-data excerpts, tiny params, CUDA skipping."""

from __future__ import annotations

import copy
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from btseg.cli import stage_command

REPO = Path(__file__).resolve().parents[1]


def stage_argv(*args: str) -> list[str]:
    """`stages.<name> --dataset D [--model M] [more options]` as the command line dvc.yaml runs for
    that stage and matrix item (its paths included), with the further options appended."""
    options, items = list(args[1:]), {}
    for key in ("dataset", "model", "fold"):
        if f"--{key}" in options:
            at = options.index(f"--{key}")
            items[key] = options[at + 1]
            del options[at:at + 2]
    return [*stage_command(args[0].removeprefix("stages."), REPO, **items), *options]


def run_in(project: Path, *args: str, timeout: int = 900, env: dict | None = None):
    """Run a stage (`stages.<name> --dataset ...`, as dvc.yaml runs it) or a module (`btseg.inference.predict ...`)
    in `project`, with progress bars off, in this environment or `env`; returns the CompletedProcess.
    The one subprocess helper of the tests."""
    import subprocess
    import sys

    command = stage_argv(*args) if args[0].startswith("stages.") else [sys.executable, "-m", *args]
    return subprocess.run(command, cwd=project, env={**(os.environ if env is None else env), "TQDM_DISABLE": "1"},
                          capture_output=True, text=True, timeout=timeout)


# Real excerpts live beside the checkout (never copied into the repo); override with BTS_REALDATA.
REALDATA = Path(os.environ.get("BTS_REALDATA", REPO.parent / "shared" / "realdata"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is visible")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def restore_rng_state():
    """Every test starts from the same seeds, whatever ran before it (session fixtures draw random
    numbers too, so the order of tests would otherwise change initial weights); and what a test
    draws does not change what later tests see."""
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    torch.set_rng_state(torch_state)


@pytest.fixture
def realdata_coco() -> Path:
    return _realdata("tumor_coco_sample", "COCO")


@pytest.fixture
def realdata_lgg() -> Path:
    return _realdata("lgg_sample", "LGG")


@pytest.fixture(scope="session")
def realdata_brats2018() -> Path:
    """The real BraTS 2018 case's folder (session-wide, so module fixtures can read it once)."""
    return _realdata("brats2018_case", "BraTS 2018") / "Brats18_2013_2_1"


def _realdata(folder: str, name: str) -> Path:
    """A real excerpt beside the checkout, or a skip that says where it was looked for."""
    path = REALDATA / folder
    if not path.is_dir():
        pytest.skip(f"real {name} excerpt not found at {path} (set BTS_REALDATA to the realdata folder)")
    return path


def default_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def tiny_params() -> dict:
    """The repository's params shrunk so a whole pipeline runs in about a minute on 2 CPU cores."""
    params = copy.deepcopy(default_params())
    sample = params["data"]["sample"]
    sample["brats2020"].update(cases=6, slices_per_case=4, size=48)
    sample["tumor_coco"] = {"train": 6, "valid": 3, "test": 3}
    for dataset in ("brats2020_nifti", "lgg", "folder", "nifti"):
        sample[dataset].update(cases=6, slices_per_case=4, size=32)
    params["data"]["datasets"] = ["brats2020", "tumor_coco"]  # the DVC-flow test trains on these two
    params["preprocess"]["size"] = 32
    params["train"].update(epochs=2, base_channels=4, depth=2, batch_size=4)
    params["report"]["worst_k"] = 2
    return params


@pytest.fixture
def params_dict() -> dict:
    return tiny_params()
