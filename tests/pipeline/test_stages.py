"""Stage entry points as DVC runs them: one-line errors, and nothing half-written on failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from btseg.data import brats_h5
from btseg.preprocessing.slices import load_split
from tests.conftest import run_in

pytestmark = pytest.mark.slow  # trains or runs stages in subprocesses

run = run_in


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
    assert len(lines) == 1 and lines[0].startswith(f"error: {broken.relative_to(project)}: unreadable HDF5"), \
        result.stderr
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


DATASETS = ["brats2020", "tumor_coco", "brats2020_nifti", "lgg", "folder"]


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_dataset_goes_from_its_sample_to_checked_slices(project, params_dict, dataset):
    from btseg.preprocessing.slices import load_split

    params_dict["data"]["datasets"] = DATASETS
    (project / "params.yaml").write_text(yaml.safe_dump(params_dict, sort_keys=False))
    for stage in ("stages.download", "stages.preprocess"):
        result = run(project, stage, "--dataset", dataset)
        assert result.returncode == 0, result.stderr
    splits = {s: load_split(project / "data" / "slices" / dataset, s) for s in ("train", "val", "test")}
    cases = {s: set(split.index.case_id) for s, split in splits.items()}
    assert all(cases.values()) \
        and not (cases["train"] & cases["val"] or cases["train"] & cases["test"] or cases["val"] & cases["test"])
    total = sum(len(split.images) for split in splits.values())
    tumor = sum(int((split.index.tumor_pixels > 0).sum()) for split in splits.values())
    assert 0 < tumor < total  # tumor and tumor-free slices both present
    meta = splits["test"].meta
    assert meta["leakage_check"]["passed"] and meta["bad_files"]["skipped"] == 0
    assert meta["size"] == params_dict["preprocess"]["size"] and list(meta["targets"]) == ["whole_tumor"]


@pytest.mark.parametrize("dataset", ["brats2020", "brats2020_nifti"])
def test_regions_target_gives_wt_tc_et_channels_nested_as_in_brats(project, params_dict, dataset):
    from btseg.preprocessing.slices import load_split

    params_dict["data"]["datasets"] = [dataset]
    params_dict["preprocess"].update(target="regions", crop_to_brain=True, fit="letterbox", normalization="percentile")
    (project / "params.yaml").write_text(yaml.safe_dump(params_dict, sort_keys=False))
    for stage in ("stages.download", "stages.preprocess"):
        assert run(project, stage, "--dataset", dataset).returncode == 0
    train = load_split(project / "data" / "slices" / dataset, "train")
    assert list(train.meta["targets"]) == ["WT", "TC", "ET"] and train.masks.shape[1] == 3
    wt, tc, et = (train.masks[:, k].astype(bool) for k in range(3))
    assert et.any() and not (et & ~tc).any() and not (tc & ~wt).any()  # ET inside TC inside WT
    assert (tc.sum() < wt.sum()) and train.images.min() >= 0 and train.images.max() <= 1  # percentile: 0..1


def test_bad_file_is_skipped_and_counted_with_on_bad_file_skip(project, params_dict):
    from btseg.preprocessing.slices import load_split

    params_dict["preprocess"]["on_bad_file"] = "skip"
    (project / "params.yaml").write_text(yaml.safe_dump(params_dict, sort_keys=False))
    assert run(project, "stages.download", "--dataset", "brats2020").returncode == 0
    broken = brats_h5.list_slices(project / "data" / "raw" / "brats2020")[0].path
    broken.write_bytes(b"")
    result = run(project, "stages.preprocess", "--dataset", "brats2020")
    assert result.returncode == 0, result.stderr
    assert broken.name in result.stderr  # logged
    metas = [load_split(project / "data" / "slices" / "brats2020", s).meta for s in ("train", "val", "test")]
    assert all(m["bad_files"]["skipped"] == 1 and broken.name in m["bad_files"]["files"][0]["reason"] for m in metas)
    cases = set().union(*(set(load_split(project / "data" / "slices" / "brats2020", s).index.case_id)
                          for s in ("train", "val", "test")))
    assert "volume_1" not in cases and len(cases) == params_dict["data"]["sample"]["brats2020"]["cases"] - 1


def test_preprocess_workers_give_the_same_arrays_as_one_process(project, params_dict):
    import numpy as np

    assert run(project, "stages.download", "--dataset", "tumor_coco").returncode == 0
    results = []
    for workers in (1, 2):
        params_dict["preprocess"]["workers"] = workers
        (project / "params.yaml").write_text(yaml.safe_dump(params_dict, sort_keys=False))
        assert run(project, "stages.preprocess", "--dataset", "tumor_coco").returncode == 0
        results.append(np.load(project / "data/slices/tumor_coco/train/images.npy"))
    np.testing.assert_array_equal(results[0], results[1])


def test_training_split_left_empty_by_slice_selection_says_which_params(project, params_dict):
    import cv2

    params_dict["preprocess"]["tumor_free_fraction"] = 0.0
    params_dict["data"]["datasets"] = ["folder"]
    (project / "params.yaml").write_text(yaml.safe_dump(params_dict, sort_keys=False))
    assert run(project, "stages.download", "--dataset", "folder").returncode == 0
    for mask in (project / "data/raw/folder/masks").glob("*.png"):  # no tumor anywhere
        cv2.imwrite(str(mask), cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE) * 0)
    result = run(project, "stages.preprocess", "--dataset", "folder")
    assert result.returncode == 1
    assert "no training slices left" in result.stderr and "preprocess.tumor_free_fraction" in result.stderr
    assert not (project / "data/slices/folder").exists()


def test_slice_selection_thins_the_training_split_only(project, params_dict):
    params_dict["preprocess"].update(tumor_free_fraction=0.0, skip_no_brain=True)
    (project / "params.yaml").write_text(yaml.safe_dump(params_dict, sort_keys=False))
    for stage in ("stages.download", "stages.preprocess"):
        assert run(project, stage, "--dataset", "brats2020").returncode == 0
    train, val, test = (load_split(project / "data/slices/brats2020", s) for s in ("train", "val", "test"))
    assert (train.index.tumor_pixels > 0).all()  # no tumor-free slice left to learn from
    per_case = params_dict["data"]["sample"]["brats2020"]["slices_per_case"]
    for split in (val, test):  # every slice of every patient, with and without tumor
        assert (split.index.groupby("case_id").size() == per_case).all()
        assert (split.index.tumor_pixels == 0).any()
    assert train.meta["selection"]["train_slices_kept"] == len(train.images)


def test_own_folder_is_copied_in_for_non_sample_source(project, params_dict, tmp_path):
    from btseg.data import folder

    own = tmp_path / "my_study"
    folder.write_sample(own, cases=3, slices_per_case=3, size=32, seed=4)
    params_dict["data"].update(source="kaggle", datasets=["folder"])
    params_dict["data"]["folder"]["path"] = str(own)
    (project / "params.yaml").write_text(yaml.safe_dump(params_dict, sort_keys=False))
    assert run(project, "stages.download", "--dataset", "folder").returncode == 0
    copied = project / "data/raw/folder/images" / next((own / "images").iterdir()).name
    assert copied.read_bytes() == (own / "images" / copied.name).read_bytes()
    assert not os.path.samefile(copied, own / "images" / copied.name)  # a copy: DVC cannot touch the original
    result = run(project, "stages.preprocess", "--dataset", "folder")
    assert result.returncode == 0, result.stderr

    params_dict["data"]["folder"]["path"] = str(tmp_path / "nowhere")
    (project / "params.yaml").write_text(yaml.safe_dump(params_dict, sort_keys=False))
    result = run(project, "stages.download", "--dataset", "folder")
    assert result.returncode == 1 and "data.folder.path" in result.stderr


def test_batch_larger_than_the_training_split_stops_before_training(project, params_dict):
    params_dict["train"]["batch_size"] = 500
    (project / "params.yaml").write_text(yaml.safe_dump(params_dict, sort_keys=False))
    for stage in ("stages.download", "stages.preprocess"):
        assert run(project, stage, "--dataset", "tumor_coco").returncode == 0
    result = run(project, "stages.train", "--dataset", "tumor_coco", "--model", "unet")
    assert result.returncode == 1
    assert result.stderr.strip() == ("error: params.yaml: train.batch_size: 500 is larger than the 6 training "
                                     "slices of tumor_coco; lower it")
    assert not (project / "models").exists() or not list((project / "models").rglob("*.pt"))


def test_lgg_slice_without_mask_is_skipped_with_its_case_under_skip_policy(project, params_dict):
    from btseg.preprocessing.slices import load_split

    params_dict["data"]["datasets"] = ["lgg"]
    params_dict["preprocess"]["on_bad_file"] = "skip"
    (project / "params.yaml").write_text(yaml.safe_dump(params_dict, sort_keys=False))
    assert run(project, "stages.download", "--dataset", "lgg").returncode == 0
    mask = sorted((project / "data/raw/lgg/kaggle_3m").rglob("*_mask.tif"))[0]
    for copy in (project / "data/raw/lgg").rglob(mask.name):  # the archive's tree is there twice
        copy.unlink()
    result = run(project, "stages.preprocess", "--dataset", "lgg")
    assert result.returncode == 0, result.stderr
    meta = load_split(project / "data/slices/lgg", "train").meta
    assert meta["bad_files"]["skipped"] == 1 and "mask" in meta["bad_files"]["files"][0]["reason"]
