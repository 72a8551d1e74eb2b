"""bts-predict on DICOM, end to end on CPU: a sample case written as four DICOM series (by the tests,
in two orientations and shuffled file orders) gives the mask its NIfTI files give, and a DICOM SEG
that highdicom reads back onto the same voxels; bad series are one line each."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import yaml
from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from btseg.data.nifti import to_canonical
from btseg.inference.dicom import SEQUENCE_RULES
from tests.conftest import run_in
from tests.dicom_series import LPS, write_series

pytestmark = pytest.mark.slow

MODEL = "models/brats2020_nifti/unet/model.pt"
DESCRIPTIONS = {"flair": "AX T2 FLAIR", "t1": "AX T1 SE", "t1ce": "AX T1 POST GD", "t2": "AX T2 FSE"}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    from tests.conftest import tiny_params

    root = tmp_path_factory.mktemp("predict_dicom")
    params = tiny_params()
    params["data"]["datasets"] = ["brats2020_nifti"]
    params["data"]["sample"]["brats2020_nifti"].update(slices_per_case=8)
    params["train"]["epochs"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("download", "preprocess"):
        result = run_in(root, f"stages.{stage}", "--dataset", "brats2020_nifti")
        assert result.returncode == 0, result.stderr
    result = run_in(root, "stages.train", "--dataset", "brats2020_nifti", "--model", "unet")
    assert result.returncode == 0, result.stderr
    return root


def _case(project: Path, name: str = "BraTS20_Training_001") -> dict[str, nib.Nifti1Image]:
    """The sample case's four volumes, rounded to the integers a DICOM file stores."""
    folder = sorted((project / "data/raw/brats2020_nifti").rglob(name))[0]
    images = {}
    for sequence in DESCRIPTIONS:
        image = nib.load(str(next(folder.glob(f"*_{sequence}.nii*"))))
        data = np.round(np.asarray(image.dataobj, dtype=np.float32))
        assert data.min() >= 0
        images[sequence] = nib.Nifti1Image(data, image.affine)
    return images


def _restored(image: nib.Nifti1Image, axcodes: tuple[str, str, str]) -> nib.Nifti1Image:
    """The same voxels stored in another orientation (array axes toward `axcodes`)."""
    transform = ornt_transform(io_orientation(image.affine), axcodes2ornt(axcodes))
    data = nib.orientations.apply_orientation(np.asarray(image.dataobj), transform)
    return nib.Nifti1Image(data, image.affine @ inv_ornt_aff(transform, image.shape))


def _write_study(images: dict, folder: Path, *, axcodes=None, slice_axis=2, patient="PHANTOM01", skip=()) -> None:
    study = pydicom.uid.generate_uid()
    for number, (sequence, image) in enumerate(images.items(), start=1):
        if sequence in skip:
            continue
        stored = _restored(image, axcodes) if axcodes else image
        write_series(np.asarray(stored.dataobj), stored.affine, folder / f"series{number}", slice_axis=slice_axis,
                     description=DESCRIPTIONS[sequence], study=study, patient=patient, series_number=number,
                     file_order="shuffled", seed=number)


def _world_to_voxel_values(mask: nib.Nifti1Image, ds: pydicom.Dataset) -> np.ndarray:
    """The NIfTI mask's values at the centre of every pixel of the DICOM slice `ds`: from the slice's own
    header (position, orientation, spacing) to LPS, RAS, and the mask's voxel indices."""
    rows, columns = int(ds.Rows), int(ds.Columns)
    orientation = np.asarray(ds.ImageOrientationPatient, float)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    r, c = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    lps = (np.asarray(ds.ImagePositionPatient, float) + c[..., None] * column_spacing * orientation[:3]
           + r[..., None] * row_spacing * orientation[3:])
    ras = lps * LPS
    voxels = np.rint(nib.affines.apply_affine(np.linalg.inv(mask.affine), ras)).astype(int)
    return np.asarray(mask.dataobj)[voxels[..., 0], voxels[..., 1], voxels[..., 2]]


@pytest.mark.parametrize(("axcodes", "slice_axis"), [(None, 2), (("S", "L", "P"), 1)],
                         ids=["axial as stored", "stored SLP, cut along L"])
def test_a_dicom_study_gives_the_nifti_mask_and_a_seg_on_the_same_voxels(project, tmp_path, axcodes, slice_axis):
    images = _case(project)
    nifti = tmp_path / "nifti" / "BraTS20_Training_001"
    nifti.mkdir(parents=True)
    for sequence, image in images.items():
        nib.save(image, nifti / f"BraTS20_Training_001_{sequence}.nii.gz")
    _write_study(images, tmp_path / "dicom", axcodes=axcodes, slice_axis=slice_axis)
    for source in ("nifti", "dicom"):
        result = run_in(project, "btseg.inference.predict", MODEL, str(tmp_path / source), "--out",
                        str(tmp_path / f"out_{source}"))
        assert result.returncode == 0, result.stderr
    # the same mask as the NIfTI files give, on the same place in the patient
    from_nifti = nib.load(str(tmp_path / "out_nifti/BraTS20_Training_001_mask.nii.gz"))
    from_dicom = nib.load(str(tmp_path / "out_dicom/PHANTOM01_mask.nii.gz"))
    expected = to_canonical(np.asarray(from_nifti.dataobj), from_nifti.affine)
    assert expected.sum() > 0
    np.testing.assert_array_equal(to_canonical(np.asarray(from_dicom.dataobj), from_dicom.affine), expected)
    np.testing.assert_allclose(nib.as_closest_canonical(from_dicom).affine,
                               nib.as_closest_canonical(from_nifti).affine, atol=1e-4)
    # the SEG: read back by highdicom, each frame on its FLAIR source slice, equal to the mask there
    seg = hd.seg.segread(tmp_path / "out_dicom/PHANTOM01_seg.dcm")
    flair = [pydicom.dcmread(p) for p in sorted((tmp_path / "dicom/series1").iterdir())]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == flair[0].SeriesInstanceUID
    assert seg.number_of_segments == 1 and seg.get_segment_description(1).segment_label == "whole_tumor"
    assert seg.PatientID == "PHANTOM01" and seg.StudyInstanceUID == flair[0].StudyInstanceUID
    covered = 0
    for ds in flair:
        frame = seg.get_pixels_by_source_instance(source_sop_instance_uids=[ds.SOPInstanceUID],
                                                  segment_numbers=[1])[0, ..., 0]
        np.testing.assert_array_equal(frame, _world_to_voxel_values(from_nifti, ds))
        covered += int(frame.sum())
    assert covered == int(expected.sum())
    algorithm = seg.get_segment_description(1).algorithm_identification[0]
    parameters = dict(item.split("=", 1) for item in algorithm.AlgorithmParameters.split(","))
    assert parameters["model_sha256"] == hashlib.sha256((project / MODEL).read_bytes()).hexdigest()
    # the summary says which series took which sequence, and lists the SEG and the overview
    summary = json.loads((tmp_path / "out_dicom/PHANTOM01_summary.json").read_text())
    assert [(s["sequence"], s["series_description"]) for s in summary["dicom_series"]] == list(DESCRIPTIONS.items())
    assert summary["outputs"] == [str(tmp_path / f"out_dicom/PHANTOM01_{kind}")
                                  for kind in ("mask.nii.gz", "seg.dcm", "overview.png")]
    assert summary["tumor_volume_ml"]["whole_tumor"] == pytest.approx(
        expected.sum() * np.prod(from_nifti.header.get_zooms()[:3]) / 1000, abs=1e-3)


def test_bad_studies_and_series_are_one_line_each_and_the_good_one_is_still_predicted(project, tmp_path):
    images = _case(project)
    _write_study(images, tmp_path / "in" / "good", patient="GOOD")
    _write_study(images, tmp_path / "in" / "no_t1ce", patient="NOT1CE", skip=("t1ce",))
    _write_study(images, tmp_path / "in" / "gap", patient="GAP")
    flair = sorted((tmp_path / "in/gap/series1").iterdir(), key=lambda p: pydicom.dcmread(p).ImagePositionPatient[2])
    flair[3].unlink()
    result = run_in(project, "btseg.inference.predict", MODEL, str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {tmp_path / 'in/no_t1ce'}: study of patient NOT1CE: no series for t1ce (rule "
        f"/{SEQUENCE_RULES['t1ce']}/) "
        "among 'AX T2 FLAIR', 'AX T1 SE', 'AX T2 FSE'; name each sequence's series with --sequence-rule NAME=REGEX "
        "(on SeriesDescription)",
        f"error: {tmp_path / 'in/gap/series1'}: series 1 'AX T2 FLAIR': uneven slice spacing (2 mm between slices 3 "
        "and 4 against 1 mm elsewhere: a missing slice?); 7 files",
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"GOOD_{kind}" for kind in ("mask.nii.gz", "overview.png", "seg.dcm", "summary.json")]
    # a rule naming the missing sequence's stand-in lets the study through (here: the T1 as t1ce, a user's choice)
    shutil.rmtree(tmp_path / "in/gap")
    result = run_in(project, "btseg.inference.predict", MODEL, str(tmp_path / "in/no_t1ce"), "--out",
                    str(tmp_path / "out2"), "--sequence-rule", "t1ce=T1 SE")
    assert result.returncode == 1 and "t1 (rule /t1/)" in result.stderr  # the T1 now claimed by t1ce: t1 has none
