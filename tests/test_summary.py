"""The summary stage: one Dice per dataset x model, read from the evaluate stages' metrics files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from btseg.errors import PipelineError
from btseg.evaluation.summary import dice_table
from tests.conftest import REPO, default_params


def metrics_file(root: Path, dataset: str, model: str, payload) -> None:
    path = root / dataset / f"{model}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))


def evaluated(dice: float) -> dict:
    return {"per_case": {"dice": dice, "iou": dice / (2 - dice)}, "per_slice": {"dice": 0.1}, "threshold": 0.5}


def test_table_holds_each_pairs_per_case_dice_in_params_order(tmp_path):
    for (dataset, model), dice in {("lgg", "unet"): 0.81, ("lgg", "resunet"): 0.79, ("tumor_coco", "unet"): 0.7,
                                   ("tumor_coco", "resunet"): 0.72, ("folder", "unet"): 0.1}.items():
        metrics_file(tmp_path, dataset, model, evaluated(dice))
    table = dice_table(tmp_path, ["tumor_coco", "lgg"], ["unet", "resunet"])
    # per-case Dice, not per-slice; a dataset no longer in params (folder) is left out
    assert table == {"tumor_coco": {"unet": 0.7, "resunet": 0.72}, "lgg": {"unet": 0.81, "resunet": 0.79}}
    assert list(table) == ["tumor_coco", "lgg"] and list(table["lgg"]) == ["unet", "resunet"]


@pytest.mark.parametrize("payload, message", [
    (None, "missing; the evaluate stage writes it"),
    ("{not json", "no per_case.dice in it"),
    ({"per_slice": {"dice": 0.5}}, "no per_case.dice in it"),
    ({"per_case": {"dice": "0.5"}}, "per_case.dice is '0.5', not a number"),
    ('{"per_case": {"dice": NaN}}', "per_case.dice is nan, not a number"),
])
def test_a_missing_or_damaged_metrics_file_is_one_line_naming_it(tmp_path, payload, message):
    metrics_file(tmp_path, "lgg", "unet", evaluated(0.8))
    if payload is not None:
        metrics_file(tmp_path, "lgg", "resunet", payload)
    with pytest.raises(PipelineError) as raised:
        dice_table(tmp_path, ["lgg"], ["unet", "resunet"])
    assert str(raised.value).startswith(f"{tmp_path / 'lgg' / 'resunet.json'}: {message}")
    assert "\n" not in str(raised.value)


def run_stage(cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "stages" / "summary.py"), "--metrics", "metrics", "--out", "dice.json"]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_stage_writes_dice_json_for_the_params_pairs(tmp_path):
    params = default_params()
    params["data"]["datasets"], params["train"]["models"] = ["lgg"], ["resunet", "unet"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    metrics_file(tmp_path / "metrics", "lgg", "unet", evaluated(0.6))
    metrics_file(tmp_path / "metrics", "lgg", "resunet", evaluated(0.65))
    result = run_stage(tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "dice.json").read_text()) == {"lgg": {"resunet": 0.65, "unet": 0.6}}
    (tmp_path / "metrics" / "lgg" / "unet.json").unlink()
    result = run_stage(tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: metrics/lgg/unet.json: missing; the evaluate stage writes it (dvc repro)"
