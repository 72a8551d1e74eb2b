"""The NIfTI volume reader's other layouts (dataset `nifti`): BraTS 2021 and 2023 naming, nnU-Net raw,
the Decathlon's 4D images, a site's own names; orientation; and each layout's bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from btseg.config import parse_params
from btseg.data import layouts, nifti, volumes, volumes_sample
from btseg.errors import PipelineError
from tests.conftest import default_params

# each layout's names for the four BraTS sequences, in the order flair, t1, t1ce, t2
NAMES = {
    "brats2020": ["flair", "t1", "t1ce", "t2"],
    "brats2021": ["flair", "t1", "t1ce", "t2"],
    "brats2023": ["t2f", "t1n", "t1c", "t2w"],
    "nnunet": ["FLAIR", "T1w", "t1gd", "T2w"],
    "decathlon": ["FLAIR", "T1w", "t1gd", "T2w"],
    "custom": ["flair", "t1", "t1ce", "t2"],
}
LABELS = {"brats2023": {"necrotic_core": 1, "edema": 2, "enhancing": 3}}
CUSTOM_FILES = {s: f"{{case}}_{s.upper()}.nii.gz" for s in NAMES["custom"]}


def options(layout: str, **overrides) -> volumes.NiftiParams:
    """The data.nifti section, unvalidated (some tests hand the reader values params would refuse)."""
    values = dict(path="", layout=layout, case_pattern=r"patient\d+" if layout == "custom" else "",
                  files=CUSTOM_FILES if layout == "custom" else {},
                  label_file="{case}_labels.nii.gz" if layout == "custom" else "",
                  brain_mask_file="", sequences=NAMES[layout], input_channels=NAMES[layout][::-1],
                  labels=LABELS.get(layout, {"necrotic_core": 1, "edema": 2, "enhancing": 4}), axis="axial")
    return volumes.NiftiParams.model_construct(**{**values, **overrides})


def write(root: Path, layout: str, cases: int = 3, seed: int = 5) -> Path:
    o = options(layout)
    volumes_sample.write_sample(root, cases=cases, size=24, depth=6, sequences=o.sequences, labels=o.labels,
                                seed=seed, layout=layout, files=o.files, label_file=o.label_file)
    return root


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, Path]:
    return {layout: write(tmp_path_factory.mktemp(layout), layout) for layout in layouts.LAYOUTS}


def read_all(root: Path, o) -> list:
    return [volumes.read_case(case, o) for case in volumes.list_cases(root, o)]


# --- each layout as its archive names it, read to the same slices --------------------------------

@pytest.mark.parametrize("layout, expected", [
    ("brats2021", ["BraTS2021_Training_Data/BraTS2021_00000/BraTS2021_00000_flair.nii.gz",
                   "BraTS2021_Training_Data/BraTS2021_00002/BraTS2021_00002_seg.nii.gz"]),
    ("brats2023", ["ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData/BraTS-GLI-00000-000/"
                   "BraTS-GLI-00000-000-t2f.nii.gz",
                   "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData/BraTS-GLI-00001-000/"
                   "BraTS-GLI-00001-000-seg.nii.gz"]),
    ("nnunet", ["nnUNet_raw/Dataset001_BrainTumour/imagesTr/BRATS_001_0000.nii.gz",
                "nnUNet_raw/Dataset001_BrainTumour/imagesTr/BRATS_003_0003.nii.gz",
                "nnUNet_raw/Dataset001_BrainTumour/labelsTr/BRATS_002.nii.gz",
                "nnUNet_raw/Dataset001_BrainTumour/dataset.json"]),
    ("decathlon", ["Task01_BrainTumour/imagesTr/BRATS_001.nii.gz", "Task01_BrainTumour/imagesTr/._BRATS_001.nii.gz",
                   "Task01_BrainTumour/labelsTr/BRATS_003.nii.gz", "Task01_BrainTumour/dataset.json"]),
    ("custom", ["site_export/patient01/patient01_FLAIR.nii.gz", "site_export/patient03/patient03_labels.nii.gz"]),
])
def test_sample_is_written_as_the_archive_names_it(samples, layout, expected):
    for name in expected:
        assert (samples[layout] / name).is_file(), name


def test_dataset_json_is_what_nnunet_and_the_decathlon_write(samples):
    nnunet = json.loads((samples["nnunet"] / "nnUNet_raw/Dataset001_BrainTumour/dataset.json").read_text())
    assert nnunet["channel_names"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert nnunet["labels"] == {"background": 0, "necrotic_core": 1, "edema": 2, "enhancing": 4}
    assert nnunet["file_ending"] == ".nii.gz" and nnunet["numTraining"] == 3
    decathlon = json.loads((samples["decathlon"] / "Task01_BrainTumour/dataset.json").read_text())
    assert decathlon["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert decathlon["labels"]["4"] == "enhancing" \
        and decathlon["training"][0]["image"] == "./imagesTr/BRATS_001.nii.gz"
    image = nib.load(samples["decathlon"] / "Task01_BrainTumour/imagesTr/BRATS_002.nii.gz")
    assert image.shape == (24, 24, 6, 4)


@pytest.mark.parametrize("layout", [name for name in layouts.LAYOUTS if name != "brats2020"])
def test_every_layout_reads_to_the_same_slices_as_brats2020(samples, layout):
    """Same seed, same phantoms: whatever the names, the files' order or (nnU-Net: LPS) orientation."""
    reference = read_all(samples["brats2020"], options("brats2020"))
    cases = read_all(samples[layout], options(layout))
    assert len(cases) == len(reference) == 3
    for ours, theirs in zip(cases, reference):
        assert ours.channel_names == tuple(NAMES[layout][::-1])
        np.testing.assert_array_equal(ours.image, theirs.image)  # input_channels reversed in both
        np.testing.assert_array_equal(ours.regions, theirs.regions)
        assert ours.region_names == ("necrotic_core", "edema", "enhancing")


def test_nnunet_sample_is_stored_lps_so_reading_it_reorients(samples):
    image = nib.load(samples["nnunet"] / "nnUNet_raw/Dataset001_BrainTumour/imagesTr/BRATS_001_0000.nii.gz")
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")


def test_case_ids_and_order(samples):
    ids = [case.case_id for case in volumes.list_cases(samples["brats2023"], options("brats2023"))]
    assert ids == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000", "BraTS-GLI-00002-000"]
    ids = [case.case_id for case in volumes.list_cases(samples["decathlon"], options("decathlon"))]
    assert ids == ["BRATS_001", "BRATS_002", "BRATS_003"]  # the ._ resource fork is no case


# --- orientation ---------------------------------------------------------------------------------

def test_volume_stored_in_another_orientation_is_sliced_as_if_stored_ras(tmp_path):
    """Axes permuted and one flipped (voxel i -> S, j -> A, k -> L): axial slice z is RAS volume[:, :, z],
    checked against nibabel's own as_closest_canonical."""
    shape_ras = (5, 4, 3)
    ras = np.arange(np.prod(shape_ras), dtype=np.int16).reshape(shape_ras)
    n = shape_ras[0]
    stored = np.transpose(ras, (2, 1, 0))[:, :, ::-1].copy()  # stored[i, j, k] = ras[n - 1 - k, j, i]
    affine = np.array([[0, 0, -1, n - 1], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    case_dir = tmp_path / "site" / "patient01"
    for sequence in NAMES["custom"]:
        case_dir.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(stored, affine), case_dir / f"patient01_{sequence.upper()}.nii.gz")
    labels = (stored % 3 == 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(labels, affine), case_dir / "patient01_labels.nii.gz")
    o = options("custom", labels={"tumor": 1})
    (case,) = read_all(tmp_path, o)
    assert nib.aff2axcodes(affine) == ("S", "A", "L")
    canonical = np.asanyarray(nib.as_closest_canonical(nib.load(case_dir / "patient01_T1.nii.gz")).dataobj)
    np.testing.assert_array_equal(canonical, ras)
    for z in range(shape_ras[2]):
        np.testing.assert_array_equal(case.image[z, 0], ras[:, :, z])
        np.testing.assert_array_equal(case.regions[z, 0], ras[:, :, z] % 3 == 0)
    back = nifti.from_canonical(nifti.to_canonical(stored, affine), affine)
    np.testing.assert_array_equal(back, stored)  # predictions go back to the input's orientation


# --- labels and brain masks --------------------------------------------------------------------

def test_region_labels_unite_their_values(samples):
    o = options("nnunet", labels={"whole_tumor": [1, 2, 4], "tumor_core": [1, 4], "enhancing": 4})
    (case, *_) = read_all(samples["nnunet"], o)
    (single, *_) = read_all(samples["nnunet"], options("nnunet"))
    necrotic, edema, enhancing = (single.regions[:, k] for k in range(3))
    np.testing.assert_array_equal(case.regions[:, 0], necrotic | edema | enhancing)
    np.testing.assert_array_equal(case.regions[:, 1], necrotic | enhancing)
    np.testing.assert_array_equal(case.regions[:, 2], enhancing)
    assert case.regions[:, 0].any() and case.region_names == ("whole_tumor", "tumor_core", "enhancing")


def test_brain_mask_zeroes_what_lies_outside(tmp_path, samples):
    root = tmp_path / "custom"
    shutil.copytree(samples["custom"], root)
    folder = root / "site_export/patient01"
    reference = nib.load(folder / "patient01_T1.nii.gz")
    mask = np.zeros(reference.shape, np.uint8)
    mask[:12] = 1  # the left half (array rows 0..11) is brain
    nib.save(nib.Nifti1Image(mask, reference.affine), folder / "patient01_brainmask.nii.gz")
    o = options("custom", brain_mask_file="{case}_brainmask.nii.gz", case_pattern="patient01")
    (case,) = read_all(root, o)
    (unmasked,) = read_all(root, options("custom", case_pattern="patient01"))
    assert not case.image[:, :, 12:].any() and unmasked.image[:, :, 12:].any()
    np.testing.assert_array_equal(case.image[:, :, :12], unmasked.image[:, :, :12])


# --- bad inputs: one line naming the file ------------------------------------------------------

def damage_missing_sequence(root: Path) -> Path:
    path = next(root.rglob("BraTS-GLI-00001-000-t1c.nii.gz"))
    path.unlink()
    return path


def damage_other_shape(root: Path) -> Path:
    path = next(root.rglob("BRATS_002_0001.nii.gz"))
    image = nib.load(path)
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 5), np.int16), image.affine), path)
    return path


def damage_other_affine(root: Path) -> Path:
    path = next(root.rglob("BraTS2021_00001_t1.nii.gz"))  # read third: t2 (the first input channel) is the reference
    image = nib.load(path)
    affine = image.affine.copy()
    affine[0, 3] += 1.5  # shifted 1.5 mm: not the same grid
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), affine), path)
    return path


def damage_label_outside_map(root: Path) -> Path:
    path = next(root.rglob("patient02_labels.nii.gz"))
    image = nib.load(path)
    labels = np.asanyarray(image.dataobj).copy()
    labels[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(labels, image.affine), path)
    return path


def damage_channel_count(root: Path) -> Path:
    path = next(root.rglob("imagesTr/BRATS_003.nii.gz"))
    image = nib.load(path)
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj)[..., :3], image.affine), path)
    return path


def damage_missing_label_map(root: Path) -> Path:
    path = next(root.rglob("labelsTr/BRATS_002.nii.gz"))
    path.unlink()
    return path


@pytest.mark.parametrize("layout, damage, message", [
    ("brats2023", damage_missing_sequence,
     r"BraTS-GLI-00001-000-t1c\.nii or \.nii\.gz missing \(data\.nifti\.input_channels asks"),
    ("nnunet", damage_other_shape, r"shape \(24, 24, 5\) differs from BRATS_002_0003\.nii\.gz \(24, 24, 6\)"),
    ("brats2021", damage_other_affine, r"affine \(voxel-to-world\) differs from BraTS2021_00001_t2\.nii\.gz's"),
    ("custom", damage_label_outside_map, r"unexpected label value\(s\) \[7\].*data\.nifti\.labels"),
    ("decathlon", damage_channel_count, r"shape \(24, 24, 6, 3\), expected 4D with 4 channels"),
    ("nnunet", damage_missing_label_map,
     r"BRATS_002\.nii\.gz missing \(the label map of case BRATS_002\); cases without a label map"),
])
def test_bad_input_is_one_line_naming_the_file(tmp_path, samples, layout, damage, message):
    root = tmp_path / layout
    shutil.copytree(samples[layout], root)
    path = damage(root)
    with pytest.raises(PipelineError, match=message) as error:
        read_all(root, options(layout))
    shown = str(error.value)
    assert (path.name in shown or str(path.parent) in shown) and "\n" not in shown


def test_affine_check_names_the_file_that_differs(tmp_path, samples):
    root = tmp_path / "brats2021"
    shutil.copytree(samples["brats2021"], root)
    path = damage_other_affine(root)
    with pytest.raises(PipelineError, match="affine") as error:
        read_all(root, options("brats2021"))
    assert str(error.value).startswith(f"{path}: affine (voxel-to-world) differs from BraTS2021_00001_t2.nii.gz's")


@pytest.mark.parametrize("layout, overrides, message", [
    ("nnunet", {"sequences": ["FLAIR", "T2"], "input_channels": ["T2"]},
     r"\['T2'\] not among .*dataset\.json's channel_names"),
    ("decathlon", {"labels": {"tumor": 9}}, r"data\.nifti\.labels: values \[9\] are not classes of .*dataset\.json"),
    ("brats2023", {"sequences": ["flair", "t1c"], "input_channels": ["t1c"]},
     r"\['flair'\] are not brats2023 sequences"),
    ("custom", {"files": {"flair": "{case}_FLAIR.nii.gz"}}, r"layout custom needs .* missing \['t1', 't1ce', 't2'\]"),
    ("custom", {"label_file": ""},
     r"data\.nifti\.label_file is empty: cases without a label map can only be predicted"),
    ("brats2021", {"labels": {"tumor": [1, 300]}}, r"data\.nifti\.labels .*expected distinct label values"),
])
def test_bad_params_name_the_param(samples, layout, overrides, message):
    with pytest.raises(PipelineError, match=message):
        read_all(samples[layout], options(layout, **overrides))


def test_flat_layout_without_dataset_json_says_so(tmp_path, samples):
    root = tmp_path / "nnunet"
    shutil.copytree(samples["nnunet"], root)
    (root / "nnUNet_raw/Dataset001_BrainTumour/dataset.json").unlink()
    with pytest.raises(PipelineError, match="no dataset.json at any depth; layout nnunet"):
        read_all(root, options("nnunet"))


@pytest.mark.parametrize("channels", [None, {}, {"first": "FLAIR"}, ["FLAIR"]])
def test_dataset_json_without_a_channel_mapping_says_so(tmp_path, samples, channels):
    root = tmp_path / "nnunet"
    shutil.copytree(samples["nnunet"], root)
    path = root / "nnUNet_raw/Dataset001_BrainTumour/dataset.json"
    meta = json.loads(path.read_text())
    meta["channel_names"] = channels
    path.write_text(json.dumps(meta))
    with pytest.raises(PipelineError, match=f"{path}: no 'channel_names' mapping of channel numbers to names"):
        read_all(root, options("nnunet"))


def test_params_accept_every_layout_and_region_labels():
    params = default_params()
    params["data"]["nifti"].update(layout="nnunet", labels={"whole_tumor": [1, 2, 3], "enhancing": 3})
    assert parse_params(params).data.nifti.labels["whole_tumor"] == [1, 2, 3]
    params["data"]["nifti"]["layout"] = "freesurfer"
    with pytest.raises(PipelineError, match="data.nifti.layout"):
        parse_params(params)


# --- prediction finds the same files from the layout the model keeps ----------------------------

@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_prediction_groups_the_files_into_the_cases_the_reader_lists(samples, layout):
    o = options(layout)
    spec = layouts.build_layout(samples[layout], o).spec(o.axis, o.input_channels)  # input order: sequences reversed
    spec = json.loads(json.dumps(spec))  # as stored in meta.json and the model file
    listed = {case.case_id: case.extra["channels"] for case in volumes.list_cases(samples[layout], o)}
    files = [p for p in samples[layout].rglob("*.nii*") if not p.name.startswith(".")]
    grouped, problems = layouts.group_cases(files, spec)
    assert problems == []  # labelsTr/ holds no inputs; every case folder is complete
    assert {name: [tuple(c) for c in channels] for name, channels in grouped} == listed
    # the model's first channel (T2: input_channels reversed)
    assert [Path(channels[0][0]).name for _, channels in grouped][:1] == [
        {"brats2020": "BraTS20_Training_001_t2.nii", "brats2021": "BraTS2021_00000_t2.nii.gz",
         "brats2023": "BraTS-GLI-00000-000-t2w.nii.gz", "nnunet": "BRATS_001_0003.nii.gz",
         "decathlon": "BRATS_001.nii.gz", "custom": "patient01_T2.nii.gz"}[layout]]


def test_prediction_takes_a_case_files_from_its_own_folder_only(tmp_path, samples):
    """Two copies of a case, one lacking a sequence: the complete copy's file must not stand in for it."""
    case = next(p for p in samples["brats2023"].rglob("BraTS-GLI-00001-000") if p.is_dir())
    broken = tmp_path / "broken" / case.name
    shutil.copytree(case, broken)
    next(broken.glob("*-t1n.nii.gz")).unlink()
    spec = layouts.build_layout(samples["brats2023"], options("brats2023")).spec("axial", NAMES["brats2023"])
    cases, problems = layouts.group_cases(sorted(case.iterdir()) + sorted(broken.iterdir()), spec)
    assert [[path.parent for path, _ in channels] for _, channels in cases] == [[case] * 4]
    assert problems == [f"{broken}: no {case.name}-t1n.nii or .nii.gz "
                        f"(the model expects sequences {NAMES['brats2023']})"]


def test_prediction_reports_a_folder_without_cases(tmp_path, samples):
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(next(samples["brats2023"].rglob("BraTS-GLI-00000-000-seg.nii.gz")), folder / "other_name.nii.gz")
    spec = layouts.build_layout(samples["brats2023"], options("brats2023")).spec("axial", NAMES["brats2023"])
    cases, problems = layouts.group_cases(sorted(folder.iterdir()), spec)
    assert cases == [] and problems == [f"{folder}: no NIfTI file named like {{case}}-t2f.nii (the model was "
                                        f"trained on layout brats2023, sequences {NAMES['brats2023']})"]


# --- every bad input in every layout ------------------------------------------------------------

def rewrite(path: Path, change) -> None:
    """Save the file again with its data and affine passed through `change(data, affine)`."""
    image = nib.load(path)
    data, affine = change(np.asanyarray(image.dataobj).copy(), image.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), path)


def shifted(data, affine):
    affine[:3, 3] += 1.5  # 1.5 mm off: not the same grid
    return data, affine


def one_slice_short(data, affine):
    return data[:, :, :-1], affine


def label_seven(data, affine):
    data[0, 0, 0] = 7
    return data, affine


@pytest.mark.parametrize("damage", ["missing sequence", "other shape", "other affine", "label outside the map"])
@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_every_layout_names_the_file_of_each_bad_input(tmp_path, samples, layout, damage):
    """The second case's file is damaged: for a sequence, the second input channel read (the first is the
    grid every other volume is checked against); in the Decathlon's 4D image every sequence shares one
    file, so its label map is put off the grid instead."""
    root = tmp_path / layout
    shutil.copytree(samples[layout], root)
    o = options(layout)
    case = volumes.list_cases(root, o)[1]
    sequence_file = case.extra["channels"][1][0]
    four_d = layout == "decathlon"
    if damage == "missing sequence":
        target = sequence_file
        if four_d:  # one file holds every sequence: a sequence missing is a 4D image with one channel fewer
            rewrite(target, lambda data, affine: (data[..., :3], affine))
            message = "expected 4D with 4 channels"
        else:
            target.unlink()
            message = f"{Path(target.name.split('.nii')[0])}.nii.*missing"
    elif damage == "other shape":
        target = case.extra["label"] if four_d else sequence_file
        rewrite(target, one_slice_short)
        message = r"shape \(24, 24, 5\) differs from"
    elif damage == "other affine":
        target = case.extra["label"] if four_d else sequence_file
        rewrite(target, shifted)
        message = r"affine \(voxel-to-world\) differs from"
    else:
        target = case.extra["label"]
        rewrite(target, label_seven)
        message = r"unexpected label value\(s\) \[7\]"
    with pytest.raises(PipelineError, match=message) as error:
        read_all(root, o)
    shown = str(error.value)
    # "...nii or .nii.gz"
    assert shown.startswith(f"{target}:") or shown.startswith(str(target).split(".nii")[0] + ".nii")
    assert "\n" not in shown
