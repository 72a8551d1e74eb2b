"""The NIfTI volume reader, BraTS 2020 preset (dataset brats2020_nifti): the sample, cases, slicing, bad inputs."""

from __future__ import annotations

import csv
import gzip
import logging
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from btseg.data import volumes as brats_nifti
from btseg.data import volumes_sample
from btseg.errors import PipelineError

SEQUENCES = ["flair", "t1", "t1ce", "t2"]
LABELS = {"necrotic_core": 1, "edema": 2, "enhancing": 4}
MICCAI = volumes_sample.SAMPLE_DIR


def options(**overrides) -> brats_nifti.BratsNiftiParams:
    """The data.brats2020_nifti section, unvalidated (some tests hand the reader values params would refuse)."""
    values = dict(kaggle_handle="", archive="", sequences=SEQUENCES, input_channels=SEQUENCES, labels=LABELS,
                  axis="axial")
    return brats_nifti.BratsNiftiParams.model_construct(**{**values, **overrides})


def write_sample(root: Path, cases: int = 4, seed: int = 7) -> Path:
    volumes_sample.write_sample(root, cases=cases, size=32, depth=10, sequences=SEQUENCES, labels=LABELS, seed=seed)
    return root


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory) -> Path:
    return write_sample(tmp_path_factory.mktemp("brats_nifti"))


def save(volume: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    return path


def coordinates(shape=(4, 5, 6), offset: int = 0) -> np.ndarray:
    """Each voxel holds offset + 100 i + 10 j + k, so a slice shows which array axes it kept."""
    i, j, k = np.indices(shape)
    return (offset + 100 * i + 10 * j + k).astype(np.int16)


def hand_built_case(root: Path, case_id: str = "BraTS20_Training_001", extension: str = ".nii.gz",
                    shape=(4, 5, 6)) -> Path:
    """A case whose sequence c holds coordinates() + 1000 c and whose seg holds 0, 1, 2 and 4."""
    folder = root / "MICCAI_BraTS2020_TrainingData" / case_id
    for c, sequence in enumerate(SEQUENCES):
        save(coordinates(shape, 1000 * c), folder / f"{case_id}_{sequence}{extension}")
    seg = np.zeros(shape, np.uint8)
    seg[0], seg[1], seg[2] = 1, 2, 4  # first-axis planes 0, 1, 2 are one sub-region each
    save(seg, folder / f"{case_id}_seg{extension}")
    return folder


def only_case(root: Path, **overrides):
    (case,) = brats_nifti.list_cases(root, options(**overrides))
    return case


# --- the sample ----------------------------------------------------------------------------

def test_sample_is_the_real_layout_and_fast(tmp_path):
    start = time.perf_counter()
    volumes_sample.write_sample(tmp_path, cases=6, size=64, depth=24, sequences=SEQUENCES, labels=LABELS, seed=1)
    assert time.perf_counter() - start < 5  # about 0.3 s; a loose bound for slow CI machines

    data_dir = tmp_path / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData"
    folders = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
    assert folders == [f"BraTS20_Training_{n:03d}" for n in range(1, 7)]
    assert sorted(p.name for p in (data_dir / "BraTS20_Training_001").iterdir()) == [
        f"BraTS20_Training_001_{s}.nii" for s in ("flair", "seg", "t1", "t1ce", "t2")]
    assert sorted(p.name for p in (data_dir / "BraTS20_Training_002").iterdir()) == [
        f"BraTS20_Training_002_{s}.nii.gz" for s in ("flair", "seg", "t1", "t1ce", "t2")]
    assert (data_dir / "BraTS20_Training_006" / "W39_1998.09.19_Segm.nii").is_file()
    assert not list((data_dir / "BraTS20_Training_006").glob("*_seg.nii*"))

    flair = nib.load(data_dir / "BraTS20_Training_002" / "BraTS20_Training_002_flair.nii.gz")
    seg = nib.load(data_dir / "BraTS20_Training_002" / "BraTS20_Training_002_seg.nii.gz")
    assert flair.shape == seg.shape == (64, 64, 24)
    assert flair.get_data_dtype() == np.int16 and seg.get_data_dtype() == np.uint8
    assert 300 < np.asanyarray(flair.dataobj).max() < 2000  # scanner-like integers in the hundreds
    np.testing.assert_array_equal(flair.affine, np.eye(4))
    assert set(np.unique(np.asanyarray(seg.dataobj))) == {0, 1, 2, 4}

    with (data_dir / "name_mapping.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["Grade", "BraTS_2017_subject_ID", "BraTS_2018_subject_ID", "TCGA_TCIA_subject_ID",
                             "BraTS_2019_subject_ID", "BraTS_2020_subject_ID"]
    assert [r["BraTS_2020_subject_ID"] for r in rows] == folders
    with (data_dir / "survival_info.csv").open(newline="") as handle:
        assert next(csv.reader(handle)) == ["Brats20ID", "Age", "Survival_days", "Extent_of_Resection"]


def test_sample_is_deterministic_per_seed(tmp_path):
    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    first, again, other = (files(write_sample(tmp_path / name, cases=2, seed=seed))
                           for name, seed in (("a", 3), ("b", 3), ("c", 4)))
    assert first == again
    assert first.keys() == other.keys() and first != other


def test_sample_rejects_a_label_it_cannot_draw(tmp_path):
    with pytest.raises(PipelineError, match="ventricle"):
        volumes_sample.write_sample(tmp_path, cases=1, size=16, depth=4, sequences=SEQUENCES,
                                 labels={"ventricle": 3}, seed=0)


# --- finding cases ---------------------------------------------------------------------------

def test_list_cases_finds_the_nested_sample_with_its_misnamed_seg(sample_root, caplog):
    with caplog.at_level(logging.INFO, logger="btseg.data.layouts"):
        cases = brats_nifti.list_cases(sample_root, options())
    assert [c.case_id for c in cases] == [f"BraTS20_Training_{n:03d}" for n in range(1, 5)]
    first, second, last = cases[0], cases[1], cases[-1]
    assert [f.name for f in first.files] == [f"BraTS20_Training_001_{s}.nii" for s in (*SEQUENCES, "seg")]
    assert [f.name for f in second.files] == [f"BraTS20_Training_002_{s}.nii.gz" for s in (*SEQUENCES, "seg")]
    assert last.files[-1].name == "W39_1998.09.19_Segm.nii"
    assert all(c.root == sample_root for c in cases)
    assert "W39_1998.09.19_Segm.nii" in caplog.text


def test_list_cases_orders_by_number_and_reads_a_duplicated_case_once(tmp_path):
    for case_id in ("BraTS20_Training_010", "BraTS20_Training_002", "BraTS20_Training_009"):
        hand_built_case(tmp_path / "BraTS2020_TrainingData", case_id)
    # the archive also holds one case a second time, higher up, and a macOS resource-fork mirror
    shutil.copytree(tmp_path / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData" / "BraTS20_Training_009",
                    tmp_path / "BraTS20_Training_009")
    (tmp_path / "__MACOSX" / "BraTS20_Training_011").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "BraTS20_Training_011" / "._BraTS20_Training_011_flair.nii").write_bytes(b"\0" * 10)

    cases = brats_nifti.list_cases(tmp_path, options())
    assert [c.case_id for c in cases] == ["BraTS20_Training_002", "BraTS20_Training_009", "BraTS20_Training_010"]
    assert cases[1].files[0].parent == tmp_path / "BraTS20_Training_009"  # the shallowest copy


def test_list_cases_lists_the_chosen_channels_in_their_order(sample_root):
    case = brats_nifti.list_cases(sample_root, options(input_channels=["t2", "flair"]))[0]
    assert [f.name for f in case.files] == ["BraTS20_Training_001_t2.nii", "BraTS20_Training_001_flair.nii",
                                            "BraTS20_Training_001_seg.nii"]


def test_no_case_folders_names_the_root(tmp_path):
    (tmp_path / "MICCAI_BraTS2020_TrainingData" / "notes").mkdir(parents=True)
    with pytest.raises(PipelineError, match="BraTS20_Training_<NNN>") as error:
        brats_nifti.list_cases(tmp_path, options())
    assert str(tmp_path) in str(error.value)


def test_missing_sequence_names_the_folder_and_the_file(tmp_path):
    folder = hand_built_case(tmp_path)
    (folder / "BraTS20_Training_001_t1ce.nii.gz").unlink()
    with pytest.raises(PipelineError, match="BraTS20_Training_001_t1ce.nii") as error:
        brats_nifti.list_cases(tmp_path, options())
    assert str(folder) in str(error.value)
    # not asked for, not needed
    assert only_case(tmp_path, input_channels=["flair", "t2"]).case_id == "BraTS20_Training_001"


def test_missing_seg_names_the_folder_and_the_file(tmp_path):
    folder = hand_built_case(tmp_path)
    (folder / "BraTS20_Training_001_seg.nii.gz").unlink()
    with pytest.raises(PipelineError, match="BraTS20_Training_001_seg.nii") as error:
        brats_nifti.list_cases(tmp_path, options())
    assert str(folder) in str(error.value)


def test_two_unknown_niftis_are_not_guessed_as_the_seg(tmp_path):
    folder = hand_built_case(tmp_path)
    (folder / "BraTS20_Training_001_seg.nii.gz").rename(folder / "a_Segm.nii")
    shutil.copy(folder / "a_Segm.nii", folder / "b_Segm.nii")
    with pytest.raises(PipelineError, match="BraTS20_Training_001_seg.nii.*a_Segm.nii.*b_Segm.nii"):
        brats_nifti.list_cases(tmp_path, options())


def test_misnamed_seg_is_found_when_params_list_fewer_sequences(tmp_path):
    folder = hand_built_case(tmp_path)
    (folder / "BraTS20_Training_001_seg.nii.gz").rename(folder / "W39_1998.09.19_Segm.nii.gz")
    case = only_case(tmp_path, sequences=["flair"], input_channels=["flair"])
    assert case.files[-1].name == "W39_1998.09.19_Segm.nii.gz"


# --- slicing volumes -------------------------------------------------------------------------

@pytest.mark.parametrize("axis, expected_shape, voxel", [
    # voxel maps (slice s, row h, column w) of the result to array indices (i, j, k)
    ("axial", (6, 4, 4, 5), lambda s, h, w: (h, w, s)),
    ("coronal", (5, 4, 4, 6), lambda s, h, w: (h, s, w)),
    ("sagittal", (4, 4, 5, 6), lambda s, h, w: (s, h, w)),
])
@pytest.mark.parametrize("extension", [".nii", ".nii.gz"])
def test_slices_are_cut_along_the_chosen_axis(tmp_path, axis, expected_shape, voxel, extension):
    hand_built_case(tmp_path, extension=extension)
    case = brats_nifti.read_case(only_case(tmp_path), options(axis=axis))
    assert case.image.shape == expected_shape and case.image.dtype == np.float32
    assert case.regions.shape == (expected_shape[0], 3) + expected_shape[2:] and case.regions.dtype == np.uint8
    for s, h, w in [(0, 0, 0), (1, 2, 3), (expected_shape[0] - 1, expected_shape[2] - 1, expected_shape[3] - 1)]:
        i, j, k = voxel(s, h, w)
        assert case.image[s, :, h, w].tolist() == [1000 * c + 100 * i + 10 * j + k for c in range(4)]
        # the seg's first-axis planes 0, 1, 2 hold necrotic core, edema, enhancing
        assert case.regions[s, :, h, w].tolist() == [int(i == 0), int(i == 1), int(i == 2)]
    np.testing.assert_array_equal(case.slice_index, np.arange(expected_shape[0]))


def test_channel_subset_comes_in_the_params_order(tmp_path):
    hand_built_case(tmp_path)
    chosen = options(input_channels=["t2", "flair"])
    case = brats_nifti.read_case(only_case(tmp_path, input_channels=["t2", "flair"]), chosen)
    assert case.channel_names == ("t2", "flair")
    np.testing.assert_array_equal(case.image[:, 0], np.moveaxis(coordinates(offset=3000), 2, 0))
    np.testing.assert_array_equal(case.image[:, 1], np.moveaxis(coordinates(offset=0), 2, 0))


def test_regions_and_images_match_the_sample_on_disk(sample_root):
    cases = brats_nifti.list_cases(sample_root, options())
    lesion_voxels = 0
    for ref in (cases[0], cases[1], cases[-1]):  # .nii, .nii.gz and the misnamed seg
        case = brats_nifti.read_case(ref, options())
        seg = np.moveaxis(nib.load(ref.files[-1]).get_fdata(), 2, 0)
        flair = np.moveaxis(nib.load(ref.files[0]).get_fdata(), 2, 0)
        assert case.case_id == ref.case_id
        assert case.region_names == ("necrotic_core", "edema", "enhancing")
        for k, value in enumerate(LABELS.values()):
            np.testing.assert_array_equal(case.regions[:, k], seg == value)
        np.testing.assert_array_equal(case.image[:, 0], flair)
        lesion_voxels += int(case.regions.sum())
        folder = ref.files[-1].parent.relative_to(sample_root).as_posix()
        assert case.source_files == (folder,) * 10
        assert folder.startswith("BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData/BraTS20_Training_")
    assert lesion_voxels > 0


def test_regions_follow_the_labels_order(tmp_path):
    hand_built_case(tmp_path)
    labels = {"enhancing": 4, "necrotic_core": 1, "edema": 2}
    case = brats_nifti.read_case(only_case(tmp_path, labels=labels), options(labels=labels))
    assert case.region_names == ("enhancing", "necrotic_core", "edema")
    assert case.regions[0, :, 2, 0].tolist() == [1, 0, 0]  # array plane i = 2 is enhancing (4)


# --- bad inputs ------------------------------------------------------------------------------

def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def drop_gzip_trailer(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-4])  # only the CRC/length check notices this


def empty(path: Path) -> None:
    path.write_bytes(b"")


def garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(2000))


def gzipped_garbage(path: Path) -> None:
    path.write_bytes(gzip.compress(np.random.default_rng(0).bytes(2000)))


def nan_voxel(path: Path) -> None:
    volume = coordinates().astype(np.float32)
    volume[1, 2, 3] = np.nan
    save(volume, path)


def inf_voxel(path: Path) -> None:
    volume = coordinates().astype(np.float32)
    volume[0, 0, 0] = np.inf
    save(volume, path)


def other_shape(path: Path) -> None:
    save(coordinates((4, 5, 7)), path)


def label_three(path: Path) -> None:
    seg = np.zeros((4, 5, 6), np.uint8)
    seg[1, 1, 1] = 3
    seg[2, 2, 2] = 4
    save(seg, path)


def four_dimensional(path: Path) -> None:
    save(np.zeros((4, 5, 6, 2), np.int16), path)


@pytest.mark.parametrize("file_name, damage, message", [
    ("BraTS20_Training_001_flair.nii.gz", truncate, "truncated or corrupt"),
    ("BraTS20_Training_001_seg.nii.gz", truncate, "truncated or corrupt"),
    ("BraTS20_Training_001_t1.nii.gz", drop_gzip_trailer, "truncated or corrupt"),
    ("BraTS20_Training_001_t1ce.nii.gz", empty, "truncated or corrupt"),
    ("BraTS20_Training_001_t2.nii.gz", garbage, "truncated or corrupt"),
    ("BraTS20_Training_001_t2.nii.gz", gzipped_garbage, "truncated or corrupt"),
    ("BraTS20_Training_001_t1.nii.gz", nan_voxel, "NaN or infinite"),
    ("BraTS20_Training_001_t1ce.nii.gz", inf_voxel, "NaN or infinite"),
    ("BraTS20_Training_001_t2.nii.gz", other_shape,
     r"\(4, 5, 7\) differs from BraTS20_Training_001_flair.nii.gz \(4, 5, 6\)"),
    ("BraTS20_Training_001_seg.nii.gz", other_shape, r"\(4, 5, 7\) differs"),
    ("BraTS20_Training_001_seg.nii.gz", label_three, r"unexpected label value\(s\) \[3\].*data.brats2020_nifti.labels"),
    ("BraTS20_Training_001_flair.nii.gz", four_dimensional, "expected 3D"),
])
def test_bad_gzipped_volume_stops_naming_the_file(tmp_path, file_name, damage, message):
    folder = hand_built_case(tmp_path)
    damage(folder / file_name)
    with pytest.raises(PipelineError, match=message) as error:
        brats_nifti.read_case(only_case(tmp_path), options())
    assert str(folder / file_name) in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("damage", [truncate, empty, garbage])
def test_bad_plain_nifti_stops_naming_the_file(tmp_path, damage):
    folder = hand_built_case(tmp_path, extension=".nii")
    damage(folder / "BraTS20_Training_001_t1.nii")
    with pytest.raises(PipelineError, match="truncated or corrupt") as error:
        brats_nifti.read_case(only_case(tmp_path), options())
    assert str(folder / "BraTS20_Training_001_t1.nii") in str(error.value)


def test_seg_value_missing_from_params_is_unexpected(tmp_path):
    hand_built_case(tmp_path)
    labels = {"edema": 2, "enhancing": 4}  # the seg also holds 1 (necrotic core)
    with pytest.raises(PipelineError, match=r"\[1\]"):
        brats_nifti.read_case(only_case(tmp_path, labels=labels), options(labels=labels))


@pytest.mark.parametrize("overrides, key", [
    ({"axis": "oblique"}, "data.brats2020_nifti.axis"),
    ({"input_channels": ["flair", "dwi"]}, "data.brats2020_nifti.input_channels"),
    ({"input_channels": []}, "data.brats2020_nifti.input_channels"),
    ({"labels": {"edema": 0}}, "data.brats2020_nifti.labels"),
    ({"labels": {"edema": 2, "enhancing": 2}}, "data.brats2020_nifti.labels"),
])
def test_bad_options_name_the_param(tmp_path, overrides, key):
    hand_built_case(tmp_path)
    with pytest.raises(PipelineError, match=key):
        brats_nifti.list_cases(tmp_path, options(**overrides))
