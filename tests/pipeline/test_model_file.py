"""The model file contract: what the train stage saves is what evaluate, bts-predict and bts-export load,
with the decisions train made on validation, read by every reader the same way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from btseg.config import load_params
from btseg.decisions.choose import component_sizes, decide_on_validation
from btseg.models import MODEL_FORMAT, load_model_file
from btseg.preprocessing.slices import load_split
from tests.conftest import run_in, tiny_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model_file")
    params = tiny_params()
    params["data"]["datasets"] = ["tumor_coco"]
    params["train"]["epochs"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("download", "preprocess"):
        assert run_in(root, f"stages.{stage}", "--dataset", "tumor_coco").returncode == 0
    for stage in ("train", "evaluate"):
        result = run_in(root, f"stages.{stage}", "--dataset", "tumor_coco", "--model", "unet")
        assert result.returncode == 0, result.stderr
    return root


def test_every_reader_gets_the_same_network_and_decisions(project, tmp_path):
    from btseg.inference.model import load_model

    model_file = project / "models/tumor_coco/unet/model.pt"
    network, contents = load_model_file(model_file)  # evaluate's, cv_summary's and the benchmarks' reader
    assert contents["format_version"] == MODEL_FORMAT
    predictor = load_model(model_file)  # bts-predict's and bts-export's
    val = load_split(project / "data/slices/tumor_coco", "val")
    x = torch.from_numpy(np.asarray(val.images, dtype=np.float32))
    with torch.no_grad():
        logits = network(x)
        torch.testing.assert_close(predictor.network(x), logits, rtol=0, atol=0)
    # the decisions stored are the ones btseg.decisions makes on the val split with these weights
    params = load_params(project / "params.yaml")
    sizes = component_sizes(params.evaluate, load_split(project / "data/slices/tumor_coco", "train"))
    threshold, rule = decide_on_validation(network, val, params.evaluate, sizes, torch.device("cpu"), params.train)
    assert (contents["threshold"], contents["postprocess"], contents["min_component_voxels"]) \
        == (threshold, rule, sizes)
    assert (predictor.threshold, predictor.postprocess) == (threshold, rule)
    # evaluate scores at the model file's decisions, and says so
    settings = json.loads((project / "reports/tumor_coco/unet/evaluation/settings.json").read_text())
    assert (settings["threshold"], settings["postprocess"]) == (threshold, rule)
    # what training ran on, as the CPU's flags say train.speed resolves here, recorded for every reader
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    speed = params.train.speed
    bf16 = speed.precision == "bf16" or (speed.precision == "auto" and bool(flags & {"avx512_bf16", "amx_bf16"}))
    expected = {"device": "cpu", "precision": "bf16" if bf16 else "fp32",
                "layout": "channels_last" if speed.channels_last else "contiguous", "compile": speed.compile,
                "threads_follow_load": speed.threads_follow_load}
    assert {k: contents["ran"][k] for k in expected} == expected
    assert ("steps_by_threads" in contents["ran"]) == speed.threads_follow_load
    assert settings["trained_on"] == contents["ran"] and settings["ran"]["precision"] == expected["precision"]
    # bts-export writes the same network as a program that needs only PyTorch
    result = run_in(project, "btseg.inference.export", str(model_file), "--out", str(tmp_path / "unet.pt2"))
    assert result.returncode == 0, result.stderr
    program = torch.export.load(str(tmp_path / "unet.pt2")).module()
    with torch.no_grad():
        torch.testing.assert_close(program(x), logits, rtol=1e-5, atol=1e-5)
