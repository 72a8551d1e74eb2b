"""One real BraTS 2018 case (shared/realdata/brats2018_case, stored LPS with a header extension on its seg)
through the NIfTI reader's custom layout and its brats2020 preset, and through bts-predict; checked against
nibabel's own reorientation."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from btseg.config import parse_params
from btseg.data import volumes
from tests.conftest import default_params, run_in, tiny_params

CASE = "Brats18_2013_2_1"
SEQUENCES = ["flair", "t1", "t1ce", "t2"]
LABELS = {"necrotic_core": 1, "edema": 2, "enhancing": 4}
INPUTS = ["t2", "flair", "t1ce", "t1"]  # not the files' order: channels must follow params
CUSTOM = {"layout": "custom", "files": {s: f"{{case}}_{s}.nii.gz" for s in SEQUENCES},
          "label_file": "{case}_seg.nii.gz", "sequences": SEQUENCES, "input_channels": INPUTS, "labels": LABELS,
          "axis": "axial"}  # data.nifti for the real case's own file names


def read_only_case(root: Path, options):
    (case,) = volumes.list_cases(root, options)
    return volumes.read_case(case, options)


@pytest.fixture(scope="module")
def custom_case(realdata_brats2018):
    params = default_params()
    params["data"]["nifti"].update(CUSTOM, case_pattern=r"Brats18_\d+_\d+_\d+")
    return read_only_case(realdata_brats2018.parent, parse_params(params).data.nifti)


def canonical(path: Path) -> np.ndarray:
    """The volume in RAS+ by nibabel alone, axial slices first: (155, 240, 240)."""
    return np.moveaxis(nib.as_closest_canonical(nib.load(path)).get_fdata(), 2, 0)


def test_custom_layout_reads_the_voxels_nibabel_reads_in_ras(realdata_brats2018, custom_case):
    stored = nib.load(realdata_brats2018 / f"{CASE}_seg.nii.gz")
    assert nib.aff2axcodes(stored.affine) == ("L", "P", "S") and stored.header.extensions  # flipped on reading
    assert custom_case.case_id == CASE and custom_case.channel_names == tuple(INPUTS)
    assert custom_case.image.shape == (155, 4, 240, 240) and custom_case.regions.shape == (155, 3, 240, 240)
    np.testing.assert_array_equal(custom_case.slice_index, np.arange(155))
    for channel, sequence in enumerate(INPUTS):
        expected = canonical(realdata_brats2018 / f"{CASE}_{sequence}.nii.gz")
        np.testing.assert_array_equal(custom_case.image[:, channel], expected)
    seg = canonical(realdata_brats2018 / f"{CASE}_seg.nii.gz")
    assert set(np.unique(seg)) == {0, 1, 2, 4}
    for region, value in enumerate(LABELS.values()):
        np.testing.assert_array_equal(custom_case.regions[:, region], seg == value)


def test_brats2020_preset_reads_the_case_under_its_names_to_the_same_arrays(realdata_brats2018, custom_case, tmp_path):
    folder = tmp_path / "MICCAI_BraTS2020_TrainingData" / "BraTS20_Training_001"
    folder.mkdir(parents=True)
    for name in [*SEQUENCES, "seg"]:
        (folder / f"BraTS20_Training_001_{name}.nii.gz").symlink_to(realdata_brats2018 / f"{CASE}_{name}.nii.gz")
    params = default_params()
    params["data"]["brats2020_nifti"]["input_channels"] = INPUTS
    case = read_only_case(tmp_path, parse_params(params).data.brats2020_nifti)
    assert case.case_id == "BraTS20_Training_001"
    np.testing.assert_array_equal(case.image, custom_case.image)
    np.testing.assert_array_equal(case.regions, custom_case.regions)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A tiny U-Net trained on the nifti sample written in the custom layout under the real case's file names."""
    root = tmp_path_factory.mktemp("brats2018")
    params = tiny_params()
    params["data"]["datasets"] = ["nifti"]
    params["data"]["nifti"].update(CUSTOM, case_pattern=r"patient\d+")  # the sample's case folders
    params["data"]["sample"]["nifti"].update(cases=6, slices_per_case=6, size=32)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("stages.download", "stages.preprocess", "stages.train"):
        result = run_in(root, stage, "--dataset", "nifti", *(["--model", "unet"] if stage == "stages.train" else []))
        assert result.returncode == 0, result.stderr
    return root


@pytest.mark.slow
def test_predicted_mask_lies_on_the_input_grid(realdata_brats2018, project, tmp_path):
    result = run_in(project, "btseg.inference.predict", "models/nifti/unet/model.pt", str(realdata_brats2018),
                    "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    # only the mask's grid and values are checked: a model trained on the phantom says nothing of this tumor
    flair = nib.load(realdata_brats2018 / f"{CASE}_flair.nii.gz")
    mask = nib.load(tmp_path / f"{CASE}_mask.nii.gz")
    assert mask.shape == flair.shape == (240, 240, 155)
    np.testing.assert_array_equal(mask.affine, flair.affine)
    assert set(np.unique(np.asanyarray(mask.dataobj))) <= {0, 1}  # target whole_tumor: one 0/1 mask
    summary = json.loads((tmp_path / f"{CASE}_summary.json").read_text())
    assert summary["input"] == [str(realdata_brats2018 / f"{CASE}_{s}.nii.gz") for s in INPUTS]  # the model's order
    assert summary["model"]["dataset"] == "nifti"
