"""The `nifti` dataset end to end in three layouts (nnU-Net raw, Decathlon 4D, BraTS 2023): the stages
train on each sample, and bts-predict reads that layout's files and writes masks in each input's
own orientation and affine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from tests.conftest import run_in, tiny_params

pytestmark = pytest.mark.slow
run = run_in

SEQUENCES = {"nnunet": ["FLAIR", "T1w", "t1gd", "T2w"], "decathlon": ["FLAIR", "T1w", "t1gd", "T2w"],
             "brats2023": ["t1c", "t1n", "t2f", "t2w"]}
INPUTS = {"brats2023": ["t2f", "t2w", "t1c"]}  # a subset, in another order than the files' sequences


@pytest.fixture(scope="module")
def projects(tmp_path_factory) -> dict[str, Path]:
    """One project per layout: the sample written in it, preprocessed, a tiny U-Net trained."""
    made = {}
    for layout, sequences in SEQUENCES.items():
        root = tmp_path_factory.mktemp(layout)
        params = tiny_params()
        params["data"]["datasets"] = ["nifti"]
        params["data"]["nifti"].update(layout=layout, sequences=sequences, input_channels=INPUTS.get(layout, sequences))
        params["data"]["sample"]["nifti"].update(cases=6, slices_per_case=6, size=32)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for stage in ("download", "preprocess"):
            result = run(root, f"stages.{stage}", "--dataset", "nifti")
            assert result.returncode == 0, result.stderr
        result = run(root, "stages.train", "--dataset", "nifti", "--model", "unet")
        assert result.returncode == 0, result.stderr
        made[layout] = root
    return made


def predict(project: Path, *args: str):
    return run(project, "btseg.inference.predict", "models/nifti/unet/model.pt", *args)


def test_preprocess_records_the_layout_and_the_model_keeps_it(projects):
    meta = json.loads((projects["nnunet"] / "data/slices/nifti/train/meta.json").read_text())
    assert meta["layout"]["layout"] == "nnunet" and meta["layout"]["images"]["t1gd"] == "{case}_0002"
    assert meta["channels"] == SEQUENCES["nnunet"] and meta["source_version"] == "sample(seed=20201)"


def test_nnunet_folder_of_many_cases_gets_one_mask_each_in_the_input_orientation(projects, tmp_path):
    project = projects["nnunet"]
    images = next(project.glob("data/raw/nifti/**/imagesTr"))
    result = predict(project, str(images), "--out", str(tmp_path / "lps"))
    assert result.returncode == 0, result.stderr
    masks = sorted(p.name for p in (tmp_path / "lps").glob("*_mask.nii.gz"))
    assert masks == [f"BRATS_{n:03d}_mask.nii.gz" for n in range(1, 7)]
    source = nib.load(images / "BRATS_001_0000.nii.gz")
    mask = nib.load(tmp_path / "lps" / "BRATS_001_mask.nii.gz")
    assert mask.shape == source.shape and np.allclose(mask.affine, source.affine)
    assert nib.aff2axcodes(mask.affine) == ("L", "P", "S")

    # the same case stored RAS (each file through nibabel's as_closest_canonical): the same mask, reoriented
    ras = tmp_path / "ras"
    ras.mkdir()
    for path in sorted(images.glob("BRATS_001_*.nii.gz")):
        nib.save(nib.as_closest_canonical(nib.load(path)), ras / path.name)
    result = predict(project, str(ras), "--out", str(tmp_path / "ras_out"))
    assert result.returncode == 0, result.stderr
    ras_mask = nib.load(tmp_path / "ras_out" / "BRATS_001_mask.nii.gz")
    assert nib.aff2axcodes(ras_mask.affine) == ("R", "A", "S")
    lps_as_ras = np.asanyarray(nib.as_closest_canonical(mask).dataobj)
    np.testing.assert_array_equal(np.asanyarray(ras_mask.dataobj), lps_as_ras)
    assert np.asanyarray(mask.dataobj).any(), "the tiny model finds no tumor at all: the comparison says nothing"
    summary = json.loads((tmp_path / "lps" / "BRATS_001_summary.json").read_text())
    assert summary["input"] == [str(images / f"BRATS_001_{i:04d}.nii.gz") for i in range(4)]


def test_decathlon_4d_images_are_predicted_with_3d_masks(projects, tmp_path):
    project = projects["decathlon"]
    images = next(project.glob("data/raw/nifti/**/imagesTr"))
    result = predict(project, str(images / "BRATS_002.nii.gz"), str(images / "BRATS_005.nii.gz"), "--out",
                     str(tmp_path))
    assert result.returncode == 0, result.stderr
    for name in ("BRATS_002", "BRATS_005"):
        mask = nib.load(tmp_path / f"{name}_mask.nii.gz")
        assert mask.shape == nib.load(images / f"{name}.nii.gz").shape[:3]


def test_brats2023_case_missing_a_sequence_is_one_line_and_others_still_run(projects, tmp_path):
    project = projects["brats2023"]
    cases = sorted(p for p in next(project.glob("data/raw/nifti/*")).iterdir() if p.is_dir())
    broken = tmp_path / "inputs" / cases[1].name
    shutil.copytree(cases[1], broken)
    next(broken.glob("*-t2w.nii.gz")).unlink()
    result = predict(project, str(cases[0]), str(broken), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {broken}: no {cases[1].name}-t2w.nii or .nii.gz "
                      f"(the model expects sequences {INPUTS['brats2023']})"]
    summary = json.loads((tmp_path / "out" / f"{cases[0].name}_summary.json").read_text())
    # the model's order
    assert summary["input"] == [str(cases[0] / f"{cases[0].name}-{s}.nii.gz") for s in INPUTS["brats2023"]]
