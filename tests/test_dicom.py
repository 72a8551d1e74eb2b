"""DICOM series read into volumes (btseg.inference.dicom): geometry in several orientations and slice
orders against the volume the series was written from, the real DICOM files pydicom ships, every
series that cannot be trusted refused in one line, and the matching of series to a model's sequences."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLosslessSV1, generate_uid

from btseg.data.nifti import to_canonical
from btseg.errors import PipelineError
from btseg.inference import dicom
from tests.dicom_series import write_series


def _rotation_z(degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


AFFINES = {
    "axial RAS": np.diag([1.0, 1.0, 2.0, 1.0]) + np.array([[0, 0, 0, -12], [0, 0, 0, 30], [0, 0, 0, -8], [0, 0, 0, 0]]),
    "stored LPS, anisotropic": np.array([[-0.9, 0, 0, 40], [0, -1.1, 0, 20], [0, 0, 2.5, -30], [0, 0, 0, 1]]),
    "axes swapped": np.array([[0, 1.2, 0, -5], [0, 0, -0.8, 10], [1.5, 0, 0, 0], [0, 0, 0, 1]]),
    "oblique 12 degrees": np.block([[_rotation_z(12) @ np.diag([1.0, 1.0, 3.0]), np.array([[3.0], [-4.0], [5.0]])],
                                   [np.zeros((1, 3)), np.ones((1, 1))]]),
}


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 3000, (14, 11, 6)).astype(np.float32)


def _read(folder: Path):
    series, problems = dicom.find_series(sorted(folder.rglob("*")))
    assert not problems and len(series) == 1
    return series[0], *dicom.read_series(series[0])


@pytest.mark.parametrize("orientation", AFFINES)
@pytest.mark.parametrize(("slice_axis", "file_order"),
                         [(2, "forward"), (2, "shuffled"), (0, "reverse"), (1, "shuffled")])
def test_a_series_reads_back_onto_the_voxels_and_world_it_was_written_from(volume, tmp_path, orientation, slice_axis,
                                                                          file_order):
    """Whatever the orientation, the axis the slices were cut along and the order of files and instance
    numbers: the volume in canonical orientation is the source's, voxel for voxel, at the same place."""
    affine = AFFINES[orientation]
    write_series(volume, affine, tmp_path / "series", slice_axis=slice_axis, file_order=file_order)
    series, read, ordered = _read(tmp_path / "series")
    image = dicom.to_nifti(read)
    np.testing.assert_array_equal(to_canonical(np.asarray(image.dataobj), image.affine), to_canonical(volume, affine))
    source = nib.as_closest_canonical(nib.Nifti1Image(volume, affine))
    np.testing.assert_allclose(nib.as_closest_canonical(image).affine, source.affine, atol=1e-4)
    # the datasets come back in the volume's slice order: each one's position is its slice's corner
    for k, ds in enumerate(ordered):
        np.testing.assert_allclose(np.asarray(ds.ImagePositionPatient, float), read.affine[:3] @ [k, 0, 0, 1],
                                   atol=1e-4)
    assert series.description == "AX FLAIR" and len(series.files) == volume.shape[slice_axis]


def test_rescale_slope_and_intercept_are_applied(volume, tmp_path):
    write_series(volume * 2.0 - 1000.0, AFFINES["axial RAS"], tmp_path / "s", rescale=(2.0, -1000.0))
    stored = pydicom.dcmread(sorted((tmp_path / "s").iterdir())[0]).pixel_array
    assert stored.max() <= 3000  # the files hold (v - b) / m, not v
    _, read, _ = _read(tmp_path / "s")
    image = dicom.to_nifti(read)
    np.testing.assert_allclose(to_canonical(np.asarray(image.dataobj), image.affine),
                               to_canonical(volume * 2.0 - 1000.0, AFFINES["axial RAS"]))


def test_an_enhanced_multiframe_file_reads_as_the_series_it_was_made_from(volume, tmp_path):
    affine = AFFINES["stored LPS, anisotropic"]
    write_series(volume, affine, tmp_path / "single", file_order="shuffled")
    _, _, ordered = _read(tmp_path / "single")
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(list(reversed(ordered)), series_instance_uid=generate_uid(),
                                                        series_number=7, sop_instance_uid=generate_uid(),
                                                        instance_number=1)
    (tmp_path / "multi").mkdir()
    enhanced.save_as(tmp_path / "multi" / "enhanced.dcm")
    _, read, datasets = _read(tmp_path / "multi")
    assert len(datasets) == 1 and int(datasets[0].NumberOfFrames) == volume.shape[2]
    image = dicom.to_nifti(read)
    np.testing.assert_array_equal(to_canonical(np.asarray(image.dataobj), image.affine), to_canonical(volume, affine))


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm",
                                  "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"])
def test_real_mr_files_pydicom_ships_read_alike_in_every_transfer_syntax(tmp_path, name):
    """A real scanner's MR slice (pydicom's test data), uncompressed and in three lossless compressions:
    the same pixels, rescaled, at the position and spacing its header gives."""
    (tmp_path / "s").mkdir()
    shutil.copy(get_testdata_file(name), tmp_path / "s" / name)
    _, read, (ds,) = _read(tmp_path / "s")
    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    slope, intercept = float(reference.get("RescaleSlope", 1)), float(reference.get("RescaleIntercept", 0))
    expected = reference.pixel_array * slope + intercept
    np.testing.assert_array_equal(read.array[0], expected)
    np.testing.assert_allclose(read.affine[:3, 3], np.asarray(reference.ImagePositionPatient, float), atol=1e-4)
    np.testing.assert_allclose(read.spacing[1:], np.asarray(reference.PixelSpacing, float), atol=1e-6)


def _series_of_files(tmp_path, volume) -> list[Path]:
    return write_series(volume, AFFINES["axial RAS"], tmp_path / "bad", description="AX FLAIR", series_number=4)


def _rewrite(path: Path, **attributes) -> None:
    ds = pydicom.dcmread(path)
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.save_as(path)


def _refusal(tmp_path) -> str:
    series, problems = dicom.find_series(sorted((tmp_path / "bad").iterdir()))
    assert not problems
    with pytest.raises(PipelineError) as raised:
        dicom.read_series(series[0])
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'bad'}: series 4 'AX FLAIR': ")
    return message


def test_a_missing_slice_is_refused_naming_the_gap(tmp_path, volume):
    files = _series_of_files(tmp_path, volume)
    by_position = sorted(files, key=lambda p: pydicom.dcmread(p).ImagePositionPatient[2])
    by_position[2].unlink()
    message = _refusal(tmp_path)
    assert "uneven slice spacing (4 mm between slices 2 and 3 against 2 mm elsewhere: a missing slice?)" in message


def test_uneven_spacing_is_refused(tmp_path, volume):
    files = _series_of_files(tmp_path, volume)
    last = max(files, key=lambda p: pydicom.dcmread(p).ImagePositionPatient[2])
    position = pydicom.dcmread(last).ImagePositionPatient
    _rewrite(last, ImagePositionPatient=[position[0], position[1], position[2] + 0.5])
    assert "uneven slice spacing (2.5 mm between slices 5 and 6 against 2 mm elsewhere" in _refusal(tmp_path)


def test_two_files_at_one_position_are_refused(tmp_path, volume):
    files = _series_of_files(tmp_path, volume)
    copy = tmp_path / "bad" / "copy.dcm"
    shutil.copy(files[0], copy)
    _rewrite(copy, SOPInstanceUID=generate_uid(), InstanceNumber=99)
    assert "2 slices share a position (several acquisitions or echoes in one series)" in _refusal(tmp_path)


def test_mixed_orientations_are_refused(tmp_path, volume):
    files = _series_of_files(tmp_path, volume)
    _rewrite(files[3], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    assert "mixed orientations (2 ImageOrientationPatient values" in _refusal(tmp_path)


def test_slices_that_cannot_be_placed_are_refused(tmp_path, volume):
    files = _series_of_files(tmp_path, volume)
    ds = pydicom.dcmread(files[1])
    del ds.ImagePositionPatient
    ds.save_as(files[1])
    assert "slices without ImagePositionPatient: they cannot be placed in the patient" in _refusal(tmp_path)


def test_colour_images_are_refused(tmp_path, volume):
    files = _series_of_files(tmp_path, volume)
    for path in files:
        ds = pydicom.dcmread(path)
        rgb = np.repeat(ds.pixel_array[..., None].astype(np.uint8), 3, axis=-1)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = rgb.tobytes()
        ds.save_as(path)
    assert "colour images (RGB), not an MR scan's greyscale slices" in _refusal(tmp_path)


def test_a_compression_without_its_decoder_is_refused_naming_it(tmp_path, volume):
    """JPEG Lossless (process 14) needs pylibjpeg-libjpeg or GDCM, which this project does not install."""
    files = _series_of_files(tmp_path, volume)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(64) + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds.save_as(path, enforce_file_format=True)
    message = _refusal(tmp_path)
    assert "pixel data compressed as JPEG Lossless, Non-Hierarchical, First-Order Prediction" in message
    assert "(1.2.840.10008.1.2.4.70) cannot be decoded here" in message


def test_files_that_are_not_series_are_sorted_out(tmp_path, volume):
    """A SEG beside the scans is not a scan; a .dcm that is not DICOM is one line; other files are
    left to the other readers; two series in one folder are two series."""
    write_series(volume, AFFINES["axial RAS"], tmp_path / "mixed", description="AX FLAIR", series_number=1)
    write_series(volume, AFFINES["axial RAS"], tmp_path / "mixed" / "more", description="AX T2", series_number=2)
    (tmp_path / "mixed" / "broken.dcm").write_bytes(b"not dicom")
    for path in sorted((tmp_path / "mixed" / "more").iterdir())[:2]:  # a Siemens export's names
        path.rename(path.with_suffix(".IMA"))
    (tmp_path / "mixed" / "notes.txt").write_text("hello")
    _, read, ordered = _read(tmp_path / "mixed" / "more")
    source = dicom.DicomSource(ordered, read, [])
    seg = dicom.seg_bytes(source, (read.array > 1500)[None], ["tumor"], _DESCRIPTION, sample=True)
    (tmp_path / "mixed" / "seg.dcm").write_bytes(seg)
    series, problems = dicom.find_series(sorted(p for p in (tmp_path / "mixed").rglob("*") if p.is_file()))
    assert [(s.number, s.description, len(s.files)) for s in series] == [(1, "AX FLAIR", 6), (2, "AX T2", 6)]
    assert len(problems) == 1 and problems[0].startswith(f"{tmp_path / 'mixed' / 'broken.dcm'}: not a readable DICOM")


_DESCRIPTION = {"file": None, "architecture": "unet", "dataset": "brats2020_nifti", "val_case_dice": 0.9}


def test_the_seg_holds_each_target_on_the_source_slices_it_references(tmp_path, volume):
    """highdicom reads the SEG back: one segment per target, each frame referencing the source slice
    whose pixels it covers, the algorithm named with its version and the model file's hash."""
    affine = AFFINES["oblique 12 degrees"]
    write_series(volume, affine, tmp_path / "s", file_order="shuffled")
    model_file = tmp_path / "model.pt"
    model_file.write_bytes(b"weights")
    _, read, ordered = _read(tmp_path / "s")
    masks = np.stack([read.array > 1500, read.array > 2500])
    seg_file = tmp_path / "seg.dcm"
    seg_file.write_bytes(dicom.seg_bytes(dicom.DicomSource(ordered, read, []), masks, ["whole_tumor", "core"],
                                         {**_DESCRIPTION, "file": str(model_file)}, sample=False))
    seg = hd.seg.segread(seg_file)
    assert seg.number_of_segments == 2
    assert [seg.get_segment_description(k).segment_label for k in (1, 2)] == ["whole_tumor", "core"]
    algorithm = seg.get_segment_description(1).algorithm_identification[0]
    assert algorithm.AlgorithmName == "btseg unet"
    parameters = dict(item.split("=", 1) for item in algorithm.AlgorithmParameters.split(","))
    assert parameters["model_sha256"] == hashlib.sha256(b"weights").hexdigest()
    for ds in ordered:
        k = ordered.index(ds)
        frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=[ds.SOPInstanceUID], segment_numbers=[1, 2])
        np.testing.assert_array_equal(frames[0], np.moveaxis(masks[:, k], 0, -1))
        value = ds.pixel_array  # the source slice's own pixels: the mask is on them, pixel for pixel
        np.testing.assert_array_equal(frames[0][..., 0], value > 1500)


@pytest.mark.parametrize(("description", "sequence"), [
    ("AX T2 FLAIR", "flair"), ("Sag 3D FLAIR", "flair"), ("t2_tirm_tra_dark-fluid", "flair"),
    ("AX T1 POST GAD", "t1ce"), ("T1+C AX", "t1ce"), ("t1_mprage_sag_gd", "t1ce"), ("Post-contrast T1", "t1ce"),
    ("T1 CE", "t1ce"), ("AX T1 SE", "t1"), ("t1_se_tra", "t1"), ("AX T2 FSE", "t2"), ("t2_tse_tra", "t2"),
    ("DWI b1000", None), ("Localizer", None),
])
def test_series_descriptions_name_their_sequence(description, sequence):
    assert dicom.sequence_of(description, dicom.SEQUENCE_RULES) == sequence


def _series(number: int, description: str, study: str = "1.2.3", patient: str = "P1") -> dicom.Series:
    return dicom.Series(f"{study}.{number}", number, description, study, patient,
                        (Path(f"/scans/{patient}/{number}/IM1.dcm"),))


def test_a_multisequence_study_is_one_case_with_each_sequence_in_the_models_order():
    series = [_series(1, "AX T1"), _series(2, "AX T2"), _series(3, "AX T2 FLAIR"), _series(4, "AX T1 POST GD"),
              _series(5, "DWI")]
    cases, problems = dicom.group_cases(series, ["flair", "t1", "t1ce", "t2"], dicom.SEQUENCE_RULES)
    assert not problems and len(cases) == 1
    assert [(channel, s.number) for channel, s in cases[0].series] == [("flair", 3), ("t1", 1), ("t1ce", 4), ("t2", 2)]
    assert cases[0].name == "P1"
    # other datasets' names for the same sequences (BraTS 2023)
    cases, _ = dicom.group_cases(series, ["t1n", "t1c", "t2w", "t2f"], dicom.SEQUENCE_RULES)
    assert [s.number for _, s in cases[0].series] == [1, 4, 2, 3]


def test_a_missing_or_doubly_claimed_sequence_is_one_line_and_a_rule_settles_it():
    series = [_series(1, "AX T1"), _series(2, "T1 3D"), _series(3, "AX FLAIR"), _series(4, "AX T2"),
              _series(1, "AX T2 FLAIR", study="9.9", patient="P2"), _series(2, "AX T1", study="9.9", patient="P2"),
              _series(3, "T1 POST", study="9.9", patient="P2"), _series(4, "AX T2", study="9.9", patient="P2")]
    channels = ["flair", "t1", "t1ce", "t2"]
    cases, problems = dicom.group_cases(series, channels, dicom.SEQUENCE_RULES)
    assert [c.name for c in cases] == ["P2"]
    rule = dicom.SEQUENCE_RULES["t1ce"]
    assert problems == [f"{Path('/scans/P1')}: study of patient P1: no series for t1ce (rule /{rule}/); "
                        "t1 claimed by series 1 'AX T1' and series 2 'T1 3D' among 'AX T1', 'T1 3D', 'AX FLAIR', "
                        "'AX T2'; name each sequence's series with --sequence-rule NAME=REGEX (on SeriesDescription)"]
    rules = dicom.parse_rules(["t1ce=T1 3D|POST", "t1=^AX T1$"])  # the user's rule replaces the built-in one
    cases, problems = dicom.group_cases(series, channels, rules)
    assert not problems and [c.name for c in cases] == ["P1", "P2"]
    assert [s.number for _, s in cases[0].series] == [3, 1, 2, 4]


def test_a_one_sequence_model_takes_every_series_as_a_case():
    series = [_series(1, "AX FLAIR"), _series(2, "AX FLAIR"), _series(7, "Sag FLAIR", patient="P9")]
    cases, problems = dicom.group_cases(series, ["flair"], dicom.SEQUENCE_RULES)
    assert not problems
    assert [c.name for c in cases] == ["P1_s1_AX_FLAIR", "P1_s2_AX_FLAIR", "P9_s7_Sag_FLAIR"]
    twins = dicom.group_cases([_series(1, "AX FLAIR"), _series(1, "AX FLAIR", study="4.5")], ["flair"], {})[0]
    assert [c.name for c in twins] == ["P1_s1_AX_FLAIR_1231", "P1_s1_AX_FLAIR_451"]


@pytest.mark.parametrize("rule", ["t1ce", "=T1", "t1ce=(unclosed"])
def test_a_bad_sequence_rule_is_one_line_naming_it(rule):
    with pytest.raises(PipelineError, match=r"--sequence-rule '.*': (write NAME=REGEX|not a regular expression)"):
        dicom.parse_rules([rule])
