"""Cross-validation: fold models from the cv_train stage, their summary and ensemble from cv_summary,
and bts-predict with the ensemble file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from btseg.models import Ensemble, load_model_file
from btseg.preprocessing.slices import load_split
from tests.conftest import run_in, tiny_params

pytestmark = pytest.mark.slow  # trains or runs stages in subprocesses

run = run_in


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cv")
    params = tiny_params()
    params["data"]["datasets"] = ["tumor_coco"]
    params["train"].update(epochs=2, models=["unet"])
    params["cv"] = {"datasets": ["tumor_coco"], "folds": 3, "runs": [0, 1, 2]}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("stages.download", "stages.preprocess"):
        assert run(root, stage, "--dataset", "tumor_coco").returncode == 0
    for fold in ("0", "1", "2"):
        result = run(root, "stages.cv_train", "--dataset", "tumor_coco", "--model", "unet", "--fold", fold)
        assert result.returncode == 0, result.stderr
    result = run(root, "stages.cv_summary", "--dataset", "tumor_coco", "--model", "unet")
    assert result.returncode == 0, result.stderr
    return root


def test_every_fold_trains_and_the_summary_holds_their_mean_and_spread(project):
    folds = project / "models/tumor_coco/unet/cv"
    weights = [load_model_file(folds / f"fold{k}" / "model.pt")[1]["state_dict"] for k in range(3)]
    first = next(iter(weights[0]))
    assert not torch.equal(weights[0][first], weights[1][first])  # other patients, other weights
    metrics = json.loads((project / "metrics/cv/tumor_coco/unet.json").read_text())
    dice = [metrics["folds"][str(k)]["dice"] for k in range(3)]
    assert metrics["fold_mean_dice"] == pytest.approx(np.mean(dice))
    assert metrics["fold_sd_dice"] == pytest.approx(np.std(dice, ddof=1))
    test = load_split(project / "data/slices/tumor_coco", "test")
    assert metrics["cases"] == test.index.case_id.nunique()
    e = metrics["ensemble"]
    assert e["dice_ci95_low"] <= e["dice"] <= e["dice_ci95_high"]


def test_the_ensemble_file_averages_the_fold_probabilities(project):
    ensemble, content = load_model_file(project / "models/tumor_coco/unet/ensemble.pt")
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 3
    images = torch.from_numpy(load_split(project / "data/slices/tumor_coco", "test").images[:4].astype(np.float32))
    with torch.no_grad():
        members = [load_model_file(project / f"models/tumor_coco/unet/cv/fold{k}/model.pt")[0] for k in range(3)]
        expected = torch.stack([torch.sigmoid(m(images)) for m in members]).mean(dim=0)
        assert torch.allclose(torch.sigmoid(ensemble(images)), expected, atol=1e-5)
    thresholds = [load_model_file(project / f"models/tumor_coco/unet/cv/fold{k}/model.pt")[1]["threshold"]
                  for k in range(3)]
    assert content["threshold"] == pytest.approx(np.mean(thresholds))


def test_bts_predict_uses_the_ensemble(project, tmp_path):
    image = sorted((project / "data/raw/tumor_coco/test").glob("*.jpg"))[0]
    result = run(project, "btseg.inference.predict", "models/tumor_coco/unet/ensemble.pt", str(image), "--out",
                 str(tmp_path))
    assert result.returncode == 0, result.stderr
    summary = json.loads(next(tmp_path.rglob("*_summary.json")).read_text())
    assert summary["model"]["best_epoch"] == [
        load_model_file(project / f"models/tumor_coco/unet/cv/fold{k}/model.pt")[1]["best_epoch"] for k in range(3)]
