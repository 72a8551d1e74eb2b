"""Recipes: every shipped recipe validates against params.yaml; bad recipes fail in one line."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from btseg.config import load_raw_params, parse_params
from btseg.errors import PipelineError
from btseg.recipes import apply, available, command
from tests.conftest import REPO

RECIPES = REPO / "recipes"


def test_every_shipped_recipe_is_valid_and_covers_each_real_dataset_on_cpu_and_gpu():
    names = available(RECIPES)
    assert {f"{d}_{kind}" for d in ("lgg", "coco", "brats") for kind in ("cpu", "gpu")} <= set(names)
    raw = load_raw_params(REPO / "params.yaml")
    for name in names:
        recipe = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
        params = parse_params(apply(raw, {"recipe": name, **recipe["set"]}, name))
        assert params.recipe == name and params.data.source == "kaggle"


def test_command_turns_each_setting_into_a_set_param(tmp_path):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"description": "d", "set": {
        "train.epochs": 3, "data.datasets": ["lgg"], "evaluate.tta": True,
        "train.learning_rate": 0.0005}}, sort_keys=False))
    dvc = command("r", REPO / "params.yaml", tmp_path, extra=["--queue"])
    assert dvc == ["dvc", "exp", "run", "-S", "recipe=r", "-S", "train.epochs=3", "-S", "data.datasets=[lgg]",
                   "-S", "evaluate.tta=true", "-S", "train.learning_rate=0.0005", "--queue"]


@pytest.mark.parametrize("settings, message", [
    ({"train.epochz": 3}, "train.epochz: no such key in params.yaml"),
    ({"trian.epochs": 3}, "trian.epochs: no such section in params.yaml"),
    ({"train.epochs": 0}, "train.epochs: input should be greater than or equal to 1"),
])
def test_a_bad_recipe_names_its_file_and_key(tmp_path, settings, message):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"description": "d", "set": settings}))
    with pytest.raises(PipelineError, match=message) as error:
        command("bad", REPO / "params.yaml", tmp_path)
    assert str(tmp_path / "bad.yaml") in str(error.value) and "\n" not in str(error.value)


def test_an_unknown_recipe_lists_the_available_ones(tmp_path: Path):
    (tmp_path / "one.yaml").write_text(yaml.safe_dump({"description": "d", "set": {}}))
    with pytest.raises(PipelineError, match=r"recipe 'two': no .*two.yaml; available: \['one'\]"):
        command("two", REPO / "params.yaml", tmp_path)


def test_a_closed_stdout_ends_the_listing_quietly():
    """`bts-recipe --list | head -0`: the reader went away, which is not an error worth a traceback."""
    listing = subprocess.Popen([sys.executable, "-m", "btseg.recipes", "--list"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    listing.stdout.close()  # before the listing writes a byte
    stderr = listing.stderr.read()
    assert listing.wait(timeout=120) in (0, 141) and stderr == ""


@pytest.mark.parametrize("override, message", [
    ("data.datasets=tumor_coco", "data.datasets: must be a list (dvc.yaml runs a stage per item), e.g. [tumor_coco]"),
    ("train.epochz=3", "train.epochz: no such key in params.yaml"),
])
def test_a_further_set_param_is_checked_before_dvc_starts(override, message):
    result = subprocess.run([sys.executable, "-m", "btseg.recipes", "lgg_cpu", "-S", override, "--dry-run"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and override.partition("=")[0] in lines[0], lines


def test_further_set_params_follow_the_recipe_and_win(tmp_path):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"description": "d", "set": {"train.epochs": 3}}))
    dvc = command("r", REPO / "params.yaml", tmp_path, overrides=["train.epochs=5", "train.learning_rate=1e-3"])
    assert dvc[-4:] == ["-S", "train.epochs=5", "-S", "train.learning_rate=1e-3"]


def _workspace(tmp_path: Path) -> Path:
    """A workspace with params.yaml, recipes/ and DVC's tmp folder, as bts-recipe runs in."""
    (tmp_path / ".dvc/tmp").mkdir(parents=True)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    return tmp_path


def _recipe(workspace: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "btseg.recipes", "lgg_cpu"], cwd=workspace, capture_output=True,
                          text=True, timeout=120)


def test_a_running_experiment_stops_a_second_one_before_params_change(tmp_path):
    workspace = _workspace(tmp_path)
    params = (workspace / "params.yaml").read_text()
    # a stage of another `dvc exp run` holds its lock (this process stands in for it: alive)
    (workspace / ".dvc/tmp/rwlock").write_text(json.dumps(
        {"write": {str(workspace / "models"): {"pid": os.getpid(), "cmd": "dvc exp run -S train.epochs=30"}}}))
    result = _recipe(workspace)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: another experiment is running in this workspace (PID {os.getpid()}: dvc exp run -S train.epochs=30); "
        "use --queue, or wait for it to end")
    assert (workspace / "params.yaml").read_text() == params


def test_dvc_holding_its_repository_lock_also_counts_as_running(tmp_path):
    workspace = _workspace(tmp_path)
    with (workspace / ".dvc/tmp/lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as DVC's zc.lockfile holds it
        result = _recipe(workspace)
    assert result.returncode == 1 and "DVC holds its repository lock" in result.stderr


def test_locks_left_by_a_dead_process_do_not_block(tmp_path):
    from btseg.recipes import check_workspace_free

    workspace = _workspace(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (workspace / ".dvc/tmp/rwlock").write_text(json.dumps({"read": {"x": [{"pid": dead.pid, "cmd": "dvc repro"}]}}))
    (workspace / ".dvc/tmp/lock").write_text("")
    check_workspace_free(workspace)  # no error
