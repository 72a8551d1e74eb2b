"""Predict and export, end to end on CPU: tiny models trained on the samples, new inputs predicted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import onnx
import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import run_in

pytestmark = pytest.mark.slow
run = run_in


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    from tests.conftest import tiny_params

    root = tmp_path_factory.mktemp("predict")
    params = tiny_params()
    params["data"]["datasets"] = ["brats2020", "brats2020_nifti", "tumor_coco"]
    params["train"]["epochs"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for dataset in params["data"]["datasets"]:
        for stage in ("download", "preprocess"):
            result = run(root, f"stages.{stage}", "--dataset", dataset)
            assert result.returncode == 0, result.stderr
        result = run(root, "stages.train", "--dataset", dataset, "--model", "unet")
        assert result.returncode == 0, result.stderr
    result = run(root, "stages.evaluate", "--dataset", "brats2020", "--model", "unet")
    assert result.returncode == 0, result.stderr
    return root


def test_nifti_case_gets_a_mask_with_the_input_geometry(project, tmp_path):
    case = sorted((project / "data/raw/brats2020_nifti").rglob("BraTS20_Training_001"))[0]
    result = run(project, "btseg.inference.predict", "models/brats2020_nifti/unet/model.pt", str(case), "--out",
                 str(tmp_path))
    assert result.returncode == 0, result.stderr
    flair = nib.load(str(next(case.glob("*_flair.nii*"))))
    mask = nib.load(str(tmp_path / "BraTS20_Training_001_mask.nii.gz"))
    assert mask.shape == flair.shape
    np.testing.assert_array_equal(mask.affine, flair.affine)
    data = np.asarray(mask.dataobj)
    assert set(np.unique(data)) <= {0, 1}
    summary = json.loads((tmp_path / "BraTS20_Training_001_summary.json").read_text())
    voxel_ml = float(np.prod(flair.header.get_zooms())) / 1000
    assert summary["tumor_volume_ml"]["whole_tumor"] == pytest.approx(data.sum() * voxel_ml, abs=1e-3)
    assert summary["tumor_present"] == bool(data.any())
    # and a picture of it: the overview PNG, listed among the outputs
    overview = tmp_path / "BraTS20_Training_001_overview.png"
    assert str(overview) in summary["outputs"]
    picture = cv2.imread(str(overview))
    assert picture is not None and picture.shape[2] == 3 and picture.shape[1] > 600
    assert summary["model"]["architecture"] == "unet" and summary["model"]["dataset"] == "brats2020_nifti"


def test_precision_fp32_and_auto_give_the_same_mask_and_say_what_ran(project, tmp_path):
    """--precision fp32 is the fp32 path whatever the CPU; auto is bf16 on CPUs with bf16 units: the masks
    differ at most on a few voxels next to the threshold."""
    from btseg.models.prediction import cpu_runs_bf16

    case = sorted((project / "data/raw/brats2020_nifti").rglob("BraTS20_Training_001"))[0]
    masks, logs = {}, {}
    for precision in ("auto", "fp32"):
        result = run(project, "btseg.inference.predict", "models/brats2020_nifti/unet/model.pt", str(case), "--out",
                     str(tmp_path / precision), "--precision", precision)
        assert result.returncode == 0, result.stderr
        masks[precision] = np.asarray(nib.load(str(tmp_path / precision / "BraTS20_Training_001_mask.nii.gz")).dataobj)
        logs[precision] = result.stderr
    auto = "bf16 autocast (precision auto)" if cpu_runs_bf16() else "fp32 (precision auto)"
    assert f"predicting on cpu, {auto}, channels_last" in logs["auto"]
    assert "predicting on cpu, fp32 (precision fp32), channels_last" in logs["fp32"]
    assert np.mean(masks["auto"] != masks["fp32"]) < 1e-3


def test_h5_volume_prediction_agrees_with_the_evaluate_stage(project):
    from btseg.inference.inputs import read_scan
    from btseg.inference.model import load_model
    from btseg.models.prediction import predict_probabilities
    from btseg.preprocessing.image import prepare_image

    index = pd.read_csv(project / "data/slices/brats2020/test/index.csv", dtype={"case_id": str})
    case = index.case_id.iloc[0]
    rows = index[index.case_id == case]
    files = sorted((project / "data/raw/brats2020").rglob(f"{case}_slice_*.h5"),
                   key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    model = load_model(project / "models/brats2020/unet/model.pt")
    scan = read_scan(files, model)
    inputs, _, _ = prepare_image(scan.image, model.settings)
    ours = predict_probabilities(model.network, inputs, torch.device("cpu"))
    evaluated = np.load(project / "reports/brats2020/unet/evaluation/probabilities.npy")
    numbers = [int(p.stem.rsplit("_", 1)[1]) for p in files]
    for row, slice_index in zip(rows.row, rows.slice_index):
        np.testing.assert_allclose(ours[numbers.index(slice_index)], evaluated[row].astype(np.float32), atol=2e-3)
    settings = json.loads((project / "reports/brats2020/unet/evaluation/settings.json").read_text())
    assert model.threshold == settings["threshold"]  # the model file carries the threshold evaluate used


def test_prediction_with_a_per_case_threshold_cuts_each_target_where_its_probabilities_expect_most(project,
                                                                                                   tmp_path):
    """A model file with evaluate.per_case_threshold's rule: bts-predict's masks are each target's
    probabilities above the scan's own threshold, found one grid value at a time here, and the
    summary says which."""
    import dataclasses

    from btseg.inference.inputs import read_scan
    from btseg.inference.model import load_model, predict_scan
    from btseg.inference.outputs import write_outputs
    from tests.test_postprocess import brute_expected_dice_threshold

    index = pd.read_csv(project / "data/slices/brats2020/test/index.csv", dtype={"case_id": str})
    files = sorted((project / "data/raw/brats2020").rglob(f"{index.case_id.iloc[0]}_slice_*.h5"),
                   key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    model = dataclasses.replace(load_model(project / "models/brats2020/unet/model.pt"), postprocess="expected_dice")
    scan = read_scan(files, model)
    probabilities = predict_scan(scan.image, model, torch.device("cpu"))  # on the scan's own geometry
    summary = write_outputs(scan, probabilities, model, tmp_path)
    assert set(summary["case_threshold"]) == set(model.targets)
    for k, name in enumerate(model.targets):
        t = brute_expected_dice_threshold(probabilities[:, k])
        assert summary["case_threshold"][name] == pytest.approx(t)
        assert summary["tumor_pixels"][name] == int((probabilities[:, k] > t).sum())


def test_evaluate_scores_with_the_threshold_and_rule_the_model_file_carries(project, tmp_path):
    """bts-predict applies the model file's threshold and post-processing; the metrics must describe
    the same (evaluate used to choose again on the val split, and a near tie could differ)."""
    from tests.conftest import REPO, tiny_params

    contents = torch.load(project / "models/brats2020/unet/model.pt", map_location="cpu", weights_only=True)
    chosen = json.loads((project / "reports/brats2020/unet/evaluation/settings.json").read_text())
    assert chosen["threshold"] == contents["threshold"] and chosen["postprocess"] == contents["postprocess"]
    other = next(t for t in reversed(tiny_params()["evaluate"]["threshold_grid"]) if t != contents["threshold"])
    rule = "keep_largest" if contents["postprocess"] != "keep_largest" else "none"
    contents.update(threshold=other, postprocess=rule, min_component_voxels=[3])
    torch.save(contents, tmp_path / "model.pt")
    result = subprocess.run([sys.executable, str(REPO / "stages" / "evaluate.py"),
                             "--model-file", str(tmp_path / "model.pt"),
                             "--slices", "data/slices/brats2020", "--metrics", str(tmp_path / "metrics.json"),
                             "--evaluation", str(tmp_path / "evaluation")], cwd=project, capture_output=True, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr
    settings = json.loads((tmp_path / "evaluation" / "settings.json").read_text())
    assert (settings["threshold"], settings["postprocess"]) == (other, rule)
    assert json.loads((tmp_path / "metrics.json").read_text())["threshold"] == other
    assert f"test at threshold {other:.2f}" in result.stderr  # evaluate applies the file's decision, not its own
    # the val sweep tries the sizes the model file was chosen among, not the params' grid
    sweep = pd.read_csv(tmp_path / "evaluation" / "postprocess_sweep.csv")
    assert [r for r in sweep.rule if not r.startswith("peak:")] == ["none", "remove_small:3", "keep_largest"]
    # and the per-case scores are those of that threshold and rule: recomputed from the saved probabilities
    from btseg.decisions.postprocess import apply_rule
    from btseg.preprocessing.slices import load_split
    from btseg.scoring.metrics import evaluate_targets

    test = load_split(project / "data/slices/brats2020", "test")
    probabilities = np.load(tmp_path / "evaluation" / "probabilities.npy").astype(np.float32)
    _, per_case, _ = evaluate_targets(apply_rule(probabilities > other, test.index, rule), test.masks, test.index,
                                      list(test.meta["targets"]))
    saved = pd.read_csv(tmp_path / "evaluation" / "per_case.csv", dtype={"case_id": str})
    np.testing.assert_allclose(saved.dice.to_numpy(), per_case.dice.to_numpy(), atol=1e-5)


def test_the_model_file_keeps_only_sizes_that_delete_no_training_tumor(project):
    """train chooses post-processing among evaluate.min_component_voxels up to the training split's
    smallest tumor (here a few hundred voxels of phantom at 32 px)."""
    from btseg.preprocessing.slices import load_split

    train = load_split(project / "data/slices/brats2020", "train")
    volumes = {}
    for case, mask in zip(train.index.case_id, train.masks, strict=True):
        volumes[case] = volumes.get(case, 0) + int(np.asarray(mask).sum())
    smallest = min(v for v in volumes.values() if v > 0)
    grid = yaml.safe_load((project / "params.yaml").read_text())["evaluate"]["min_component_voxels"]
    expected = sorted(n for n in grid if n <= smallest)
    assert len(expected) < len(grid), "the phantoms' smallest tumor should be below the grid's largest size"
    contents = torch.load(project / "models/brats2020/unet/model.pt", map_location="cpu", weights_only=True)
    assert contents["min_component_voxels"] == expected
    settings = json.loads((project / "reports/brats2020/unet/evaluation/settings.json").read_text())
    sweep = pd.read_csv(project / "reports/brats2020/unet/evaluation/postprocess_sweep.csv")
    plain = sweep[~sweep.rule.str.startswith("peak:")]
    assert list(plain.rule) == ["none", *(f"remove_small:{n}" for n in expected), "keep_largest"]
    assert plain.threshold.nunique() == 1  # the component rules at one threshold; peak rules at it or below
    assert (sweep.threshold[sweep.rule.str.startswith("peak:")] <= plain.threshold.iloc[0] + 1e-9).all()
    chosen = sweep[(sweep.rule == settings["postprocess"]) & np.isclose(sweep.threshold, settings["threshold"])]
    assert len(chosen) == 1 and settings["val_case_dice"] == pytest.approx(chosen.case_dice.iloc[0], abs=1e-6)


def test_images_get_png_mask_and_overlay_at_their_size(project, tmp_path, realdata_coco):
    images = realdata_coco / "test"
    result = run(project, "btseg.inference.predict", "models/tumor_coco/unet/model.pt", str(images), "--out",
                 str(tmp_path))
    assert result.returncode == 0, result.stderr
    for source in images.glob("*.jpg"):
        mask = cv2.imread(str(tmp_path / f"{source.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (640, 640) and set(np.unique(mask)) <= {0, 255}
        assert cv2.imread(str(tmp_path / f"{source.stem}_overlay.png")).shape == (640, 640, 3)
        summary = json.loads((tmp_path / f"{source.stem}_summary.json").read_text())
        assert summary["tumor_pixels"]["whole_tumor"] == int((mask > 0).sum())


def test_a_jpeg_cut_in_half_is_one_error_and_the_other_images_are_predicted(project, tmp_path, realdata_coco):
    images = sorted((realdata_coco / "test").glob("*.jpg"))[:2]
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(images[0].read_bytes()[: images[0].stat().st_size // 2])
    result = run(project, "btseg.inference.predict", "models/tumor_coco/unet/model.pt", str(cut), str(images[1]),
                 "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {cut}: image file ends before its last byte of image data; it is truncated, "
                      "check the file"]
    assert (tmp_path / "out" / f"{images[1].stem}_mask.png").is_file() \
        and not (tmp_path / "out" / "cut_mask.png").exists()


def test_bad_inputs_are_reported_in_one_line_each_and_the_rest_still_run(project, tmp_path):
    case = sorted((project / "data/raw/brats2020_nifti").rglob("BraTS20_Training_002"))[0]
    broken = tmp_path / "broken_case"
    broken.mkdir()
    for path in case.glob("*"):
        if "_t1ce" not in path.name:
            (broken / path.name).write_bytes(path.read_bytes())
    png = tmp_path / "slice.png"
    cv2.imwrite(str(png), np.zeros((64, 64), np.uint8))
    result = run(project, "btseg.inference.predict", "models/brats2020_nifti/unet/model.pt", str(case), str(broken),
                 str(png), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, result.stderr
    assert any("broken_case: no BraTS20_Training_002_t1ce.nii or .nii.gz (the model expects sequences" in e
               for e in errors)
    assert any("slice.png: a 2D image, but the model expects 4 MRI sequences" in e for e in errors)
    assert (tmp_path / "out" / "BraTS20_Training_002_mask.nii.gz").is_file()


def test_model_file_of_another_format_version_is_refused(project, tmp_path):
    checkpoint = torch.load(project / "models/tumor_coco/unet/model.pt", weights_only=True)
    checkpoint["format_version"] = 1
    torch.save(checkpoint, tmp_path / "old.pt")
    result = run(project, "btseg.inference.predict", str(tmp_path / "old.pt"), str(tmp_path), "--out",
                 str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'old.pt'}: model file format 1, this version reads 2; retrain it with `dvc repro`"]


def test_exported_program_runs_without_this_package_and_matches(project, tmp_path):
    from btseg.models import load_model_file

    out = tmp_path / "unet.pt2"
    result = run(project, "btseg.inference.export", "models/brats2020/unet/model.pt", "--out", str(out))
    assert result.returncode == 0, result.stderr
    size = yaml.safe_load((project / "params.yaml").read_text())["preprocess"]["size"]
    x = torch.randn(3, 4, size, size, generator=torch.Generator().manual_seed(0))  # batch 3: not the traced 2
    torch.save(x, tmp_path / "x.pt")
    # importing `stages` is made impossible in that process: the program must not need it
    code = ("import sys; sys.modules['btseg'] = None; import torch; p = torch.export.load('unet.pt2'); "
            "torch.save(p.module()(torch.load('x.pt')), 'y.pt')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    check = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert check.returncode == 0, check.stderr
    model, _ = load_model_file(project / "models/brats2020/unet/model.pt")
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, atol=1e-5, rtol=1e-5)


def readme_onnx_example() -> str:
    """The README's ONNX example, as a user would copy it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- onnx-example -->", 1)[1]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


def test_onnx_export_runs_under_onnxruntime_without_torch_and_matches_pytorch(project, tmp_path):
    from btseg.models import load_model_file

    out = tmp_path / "unet.onnx"
    for _ in range(2):  # a re-export replaces its own file
        result = run(project, "btseg.inference.export", "models/brats2020/unet/model.pt", "--format", "onnx",
                     "--out", str(out))
        assert result.returncode == 0, result.stderr
    assert "onnxruntime matches PyTorch within" in result.stderr
    size = yaml.safe_load((project / "params.yaml").read_text())["preprocess"]["size"]
    model, contents = load_model_file(project / "models/brats2020/unet/model.pt")
    for batch in (1, 5):  # the batch is dynamic: neither is the traced 2
        x = torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(batch))
        np.save(tmp_path / "x.npy", x.numpy())
        (tmp_path / "example.py").write_text(readme_onnx_example())
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        check = subprocess.run([sys.executable, "-I", "example.py"], cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=300)
        assert check.returncode == 0, check.stderr
        with torch.no_grad():
            expected = model(x).numpy()
        got = np.load(tmp_path / "y.npy")
        assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4
        printed = json.loads(check.stdout)
        assert printed["threshold"] == contents["threshold"] and printed["size"] == size
        assert printed["tumor_pixels"] == int((1 / (1 + np.exp(-expected)) > contents["threshold"]).sum())
    # the pt2 program carries the same metadata
    result = run(project, "btseg.inference.export", "models/brats2020/unet/model.pt", "--out", str(tmp_path / "u.pt2"))
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "u.pt2") as archive:
        pt2_meta = json.loads(archive.read(next(n for n in archive.namelist() if n.endswith("preprocessing.json"))))
    onnx_meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["btseg"])
    assert onnx_meta == pt2_meta


def test_onnx_export_refuses_other_files_and_a_wrong_suffix(project, tmp_path):
    notes = tmp_path / "notes.onnx"
    notes.write_text("my notes")
    for out, extra, message in [(notes, ["--format", "onnx"], "not a program bts-export wrote"),
                                (tmp_path / "u.pt2", ["--format", "onnx"], "use the .onnx suffix for --format onnx"),
                                (tmp_path / "u.onnx", [], "use the .pt2 suffix for --format pt2")]:
        result = run(project, "btseg.inference.export", "models/brats2020/unet/model.pt", *extra, "--out", str(out))
        assert result.returncode == 1, (out, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    assert notes.read_text() == "my notes" and not (tmp_path / "u.onnx").exists()


def test_inputs_of_the_same_name_get_their_own_folders_and_slice_numbers_are_the_files(project, tmp_path,
                                                                                       realdata_coco):
    image = sorted((realdata_coco / "test").glob("*.jpg"))[0]
    for folder in ("a", "b"):
        (tmp_path / "in" / folder).mkdir(parents=True)
        (tmp_path / "in" / folder / "scan.jpg").write_bytes(image.read_bytes())
    result = run(project, "btseg.inference.predict", "models/tumor_coco/unet/model.pt", str(tmp_path / "in/a/scan.jpg"),
                 str(tmp_path / "in/b/scan.jpg"), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    for folder in ("a", "b"):
        assert (tmp_path / "out" / folder / "scan_mask.png").is_file()
        assert json.loads((tmp_path / "out" / folder / "scan_summary.json").read_text())["input"] == [
            str(tmp_path / "in" / folder / "scan.jpg")]
    assert "trained on the synthetic sample" in result.stderr  # the log says what the model is
    summary = json.loads((tmp_path / "out/a/scan_summary.json").read_text())
    assert summary["warning"].startswith("the model was trained on the synthetic sample")
    assert not list((tmp_path / "out").rglob("*.partial-*"))
    volume = sorted((project / "data/raw/brats2020").rglob("volume_1_slice_*.h5"))
    result = run(project, "btseg.inference.predict", "models/brats2020/unet/model.pt", *map(str, volume), "--out",
                 str(tmp_path / "h5"))
    assert result.returncode == 0, result.stderr
    numbers = {int(p.stem.rsplit("_", 1)[1]) for p in volume}
    found = json.loads((tmp_path / "h5/volume_1_summary.json").read_text())["slices_with_tumor"]
    assert found and set(found) <= numbers and max(found) > len(volume)  # file slice numbers, not positions


def test_model_output_and_device_errors_are_in_our_words(project, tmp_path, realdata_coco):
    image = str(sorted((realdata_coco / "test").glob("*.jpg"))[0])
    cases = [
        (["checkpoints/tumor_coco/unet/checkpoint.pt", image],
         "a training checkpoint (checkpoint.pt), not a model file"),
        (["params.yaml", image], "not a model file of this pipeline"),
        (["models/tumor_coco/unet/model.pt", image, "--out", "params.yaml"], "--out params.yaml: is a file"),
        (["models/tumor_coco/unet/model.pt",
          str(sorted((project / "data/raw/brats2020_nifti").rglob("BraTS20_Training_001"))[0])],
         "NIfTI volumes, but the model was trained on 2D images (tumor_coco)"),
    ]
    if not torch.cuda.is_available():
        cases.append((["models/tumor_coco/unet/model.pt", image, "--device", "cuda"],
                      "--device: 'cuda' asks for a GPU"))
    for args, message in cases:
        result = run(project, "btseg.inference.predict", *args,
                     *(["--out", str(tmp_path / "o")] if "--out" not in args else []))
        assert result.returncode == 1, (args, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], (args, result.stderr)
        assert "Weights only" not in result.stderr and "\x1b[" not in result.stderr


def test_an_unwritable_output_is_one_error_and_the_other_inputs_still_run(project, tmp_path, realdata_coco):
    images = sorted((realdata_coco / "test").glob("*.jpg"))[:2]
    out = tmp_path / "out"
    (out / f"{images[0].stem}_mask.png").mkdir(parents=True)  # a folder where a mask should go
    result = run(project, "btseg.inference.predict", "models/tumor_coco/unet/model.pt", *map(str, images), "--out",
                 str(out))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "cannot write" in errors[0] and images[0].stem in errors[0], result.stderr
    assert (out / f"{images[1].stem}_summary.json").is_file()
    assert not (out / f"{images[0].stem}_summary.json").exists() and not list(out.rglob("*.partial-*"))


def test_export_into_an_unwritable_folder_is_one_line(project, tmp_path):
    if os.geteuid() == 0:  # root writes anywhere: use a folder that does not exist, and a path through a file
        targets = [(tmp_path / "missing" / "unet.pt2", "is not an existing folder"),
                   (tmp_path / "file.txt" / "unet.pt2", "is not an existing folder")]
        (tmp_path / "file.txt").write_text("x")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        targets = [(locked / "unet.pt2", "cannot write in")]
    for out, message in targets:
        result = run(project, "btseg.inference.export", "models/brats2020/unet/model.pt", "--out", str(out))
        assert result.returncode == 1 and result.stderr.strip().splitlines() == [
            line for line in result.stderr.strip().splitlines() if line.startswith("error: ")], result.stderr
        assert message in result.stderr and "enforce fail" not in result.stderr


def test_a_bad_volume_the_user_brought_is_not_blamed_on_the_download_stage(project, tmp_path):
    """bts-predict reads the user's own files: "re-run the download stage" would send them the wrong way."""
    case = sorted((project / "data/raw/brats2020_nifti").rglob("BraTS20_Training_002"))[0]
    flair = next(case.glob("*_flair.nii*"))
    inputs = {}
    for fault in ("nan", "shape"):
        folder = tmp_path / fault / case.name
        folder.mkdir(parents=True)
        for path in case.glob("*.nii*"):
            (folder / path.name).write_bytes(path.read_bytes())
        image = nib.load(folder / flair.name)
        volume = np.asanyarray(image.dataobj).astype(np.float32)
        volume = np.where(np.arange(volume.size).reshape(volume.shape) == 0, np.nan, volume) if fault == "nan" \
            else volume[:-2]
        nib.save(nib.Nifti1Image(volume, image.affine), folder / flair.name)
        inputs[fault] = folder / flair.name
    result = run(project, "btseg.inference.predict", "models/brats2020_nifti/unet/model.pt",
                 *(str(p.parent) for p in inputs.values()), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    errors = sorted(line for line in result.stderr.splitlines() if line.startswith("error: "))
    assert len(errors) == 2, result.stderr
    assert "holds NaN or infinite voxels" in errors[0] and str(inputs["nan"]) in errors[0]
    assert "differs from" in errors[1] and str(case.name) in errors[1]
    assert not any("download" in line for line in errors), errors


def test_export_replaces_only_a_program_it_wrote(project, tmp_path):
    notes = tmp_path / "notes.pt2"
    notes.write_text("my notes")
    text = tmp_path / "notes.txt"
    text.write_text("my notes")
    foreign = tmp_path / "other.pt2"  # a torch.export program, but not one of this command's
    torch.export.save(torch.export.export(torch.nn.Conv2d(1, 1, 3), (torch.zeros(1, 1, 8, 8),)), foreign)
    before = foreign.read_bytes()
    (tmp_path / "folder.pt2").mkdir()
    for out, message in [(notes, "not a program bts-export wrote"), (foreign, "not a program bts-export wrote"),
                         (text, "use the .pt2 suffix"), (tmp_path / "folder.pt2", "is a folder")]:
        result = run(project, "btseg.inference.export", "models/brats2020/unet/model.pt", "--out", str(out))
        assert result.returncode == 1, (out, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(out) in lines[0] and message in lines[0], lines
    assert notes.read_text() == "my notes" and text.read_text() == "my notes" and foreign.read_bytes() == before

    out = tmp_path / "unet.pt2"
    for _ in range(2):  # exporting again over its own export is how a retrained model is re-exported
        result = run(project, "btseg.inference.export", "models/brats2020/unet/model.pt", "--out", str(out))
        assert result.returncode == 0, result.stderr
    assert torch.export.load(out).module()(torch.zeros(1, 4, 32, 32)).ndim == 4


def test_an_output_folder_inside_the_input_folder_is_not_read_back_as_input(project, tmp_path):
    case = sorted((project / "data/raw/brats2020_nifti").rglob("BraTS20_Training_001"))[0]
    inputs = tmp_path / "c"
    shutil.copytree(case, inputs / case.name)
    for attempt in range(2):  # the second run finds the first one's masks inside its input folder
        result = run(project, "btseg.inference.predict", "models/brats2020_nifti/unet/model.pt", str(inputs),
                     "--out", str(inputs / "pred"))
        assert result.returncode == 0, (attempt, result.stderr)
        assert sorted(p.name for p in (inputs / "pred").iterdir()) == [
            "BraTS20_Training_001_mask.nii.gz", "BraTS20_Training_001_overview.png",
            "BraTS20_Training_001_summary.json"]


def test_a_case_given_twice_is_predicted_and_counted_once(project, tmp_path):
    case = sorted((project / "data/raw/brats2020_nifti").rglob("BraTS20_Training_001"))[0]
    inputs = tmp_path / "c"
    shutil.copytree(case, inputs / case.name)
    out = tmp_path / "twice"
    result = run(project, "btseg.inference.predict", "models/brats2020_nifti/unet/model.pt", str(inputs / case.name),
                 str(inputs / case.name) + "/", str(next((inputs / case.name).glob("*_flair.nii*"))), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "1 input(s) predicted" in result.stderr
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == [
        "BraTS20_Training_001_mask.nii.gz", "BraTS20_Training_001_overview.png",
        "BraTS20_Training_001_summary.json"]
    summary = json.loads((out / "BraTS20_Training_001_summary.json").read_text())
    assert len(summary["input"]) == len(set(summary["input"])) == 4  # each sequence's file once


def test_an_input_inside_the_output_folder_is_still_read(project, tmp_path):
    case = sorted((project / "data/raw/brats2020_nifti").rglob("BraTS20_Training_001"))[0]
    shutil.copytree(case, tmp_path / "data" / case.name)
    result = run(project, "btseg.inference.predict", "models/brats2020_nifti/unet/model.pt",
                 str(tmp_path / "data" / case.name), "--out", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "BraTS20_Training_001_mask.nii.gz").is_file()
