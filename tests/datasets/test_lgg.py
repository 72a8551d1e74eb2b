"""LGG reader on the real excerpt, on generated samples, and on broken files."""

from __future__ import annotations

import logging
import re
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from btseg.data import lgg
from btseg.errors import PipelineError

REAL_CASE = "TCGA_CS_4942_19970222"


def lgg_options(**changes) -> SimpleNamespace:
    options = {"channels": ["pre_contrast", "flair", "post_contrast"],
               "input_channels": ["pre_contrast", "flair", "post_contrast"],
               "labels": {"abnormality": 255}}
    return SimpleNamespace(**(options | changes))


@pytest.fixture
def sample_raw(tmp_path) -> Path:
    root = tmp_path / "lgg"
    lgg.write_sample(root, cases=2, slices_per_case=12, size=48, seed=7)
    return root


def raw_tiff_pixels(path: Path) -> np.ndarray:
    """Pixels of an uncompressed, chunky TIFF straight from its bytes, (H, W, samples) in file order.

    Independent of cv2, so it shows which channel the file stores first.
    """
    data = path.read_bytes()
    endian = {b"II": "<", b"MM": ">"}[data[:2]]
    (ifd,) = struct.unpack_from(endian + "I", data, 4)
    (count,) = struct.unpack_from(endian + "H", data, ifd)
    tags = {}
    for i in range(count):
        tag, kind, n, value = struct.unpack_from(endian + "HHI4s", data, ifd + 2 + 12 * i)
        code, size = {3: ("H", 2), 4: ("I", 4)}.get(kind, ("B", 1))
        where = value if n * size <= 4 else data[struct.unpack(endian + "I", value)[0]:][: n * size]
        tags[tag] = struct.unpack_from(endian + code * n, where)
    width, height, samples = tags[256][0], tags[257][0], tags.get(277, (1,))[0]
    assert tags.get(259, (1,))[0] == 1 and tags.get(284, (1,))[0] == 1, "helper reads only raw chunky TIFFs"
    strips = b"".join(data[o:o + n] for o, n in zip(tags[273], tags[279]))
    # the real files' last strip is stored full length (rows past the image are padding)
    return np.frombuffer(strips[: height * width * samples], np.uint8).reshape(height, width, samples)


# --- real excerpt ------------------------------------------------------------------------

def test_real_case_is_listed_with_slices_in_numeric_order(realdata_lgg):
    cases = lgg.list_cases(realdata_lgg, lgg_options())
    assert [c.case_id for c in cases] == [REAL_CASE]
    case = cases[0]
    assert case.extra["slice_index"] == tuple(range(1, 21))
    assert [p.name for p in case.extra["images"][:3]] == [f"{REAL_CASE}_{k}.tif" for k in (1, 2, 3)]
    assert len(case.files) == 40


def test_the_kaggle_3m_folder_copied_in_without_its_name_is_read(realdata_lgg, tmp_path):
    # data.lgg.archive pointed at kaggle_3m itself: the download copies its patient folders straight into data/raw/lgg
    raw = tmp_path / "raw_lgg"
    shutil.copytree(realdata_lgg / "kaggle_3m", raw)
    cases = lgg.list_cases(raw, lgg_options())
    assert [c.case_id for c in cases] == [REAL_CASE] and len(cases[0].files) == 40
    assert lgg.read_case(cases[0], lgg_options()).image.shape == (20, 3, 256, 256)


def test_a_folder_of_other_folders_is_still_not_a_tree(tmp_path):
    (tmp_path / "photos" / "holiday").mkdir(parents=True)
    (tmp_path / "photos" / "holiday" / "beach_1.tif").write_bytes(b"x")  # a slice name, but not of its folder
    with pytest.raises(PipelineError, match="no kaggle_3m/<case>/<case>_<k>.tif slices found"):
        lgg.list_cases(tmp_path / "photos", lgg_options())


def test_real_case_shapes_and_tumor_slices_match_the_mask_files(realdata_lgg):
    case_ref = lgg.list_cases(realdata_lgg, lgg_options())[0]
    case = lgg.read_case(case_ref, lgg_options())
    assert case.image.shape == (20, 3, 256, 256) and case.image.dtype == np.float32
    assert case.regions.shape == (20, 1, 256, 256) and case.regions.dtype == np.uint8
    assert case.channel_names == ("pre_contrast", "flair", "post_contrast") and case.region_names == ("abnormality",)
    np.testing.assert_array_equal(case.slice_index, np.arange(1, 21))
    assert case.source_files[9] == f"kaggle_3m/{REAL_CASE}/{REAL_CASE}_10.tif"
    # independent count: read each mask file directly
    folder = realdata_lgg / "kaggle_3m" / REAL_CASE
    masks = [cv2.imread(str(folder / f"{REAL_CASE}_{k}_mask.tif"), cv2.IMREAD_GRAYSCALE) for k in range(1, 21)]
    with_tumor = [k for k, mask in enumerate(masks, start=1) if mask.any()]
    assert 0.25 <= len(with_tumor) / 20 <= 0.45  # the README's "about 35%" (this patient: 6 of 20)
    assert case.slice_index[case.regions.any(axis=(1, 2, 3))].tolist() == with_tumor
    for k, mask in enumerate(masks):
        np.testing.assert_array_equal(case.regions[k, 0], mask == 255)


def test_real_channels_are_in_file_order_pre_flair_post(realdata_lgg):
    case = lgg.read_case(lgg.list_cases(realdata_lgg, lgg_options())[0], lgg_options())
    # the file's own bytes, parsed without cv2: channel i must be the file's channel i
    for k in (1, 11, 20):
        raw = raw_tiff_pixels(realdata_lgg / case.source_files[k - 1])
        np.testing.assert_array_equal(case.image[k - 1], raw.transpose(2, 0, 1))
    # the excerpt's pre- and post-contrast differ, so a missing BGR -> RGB reversal would show above
    assert not np.array_equal(case.image[:, 0], case.image[:, 2])
    # FLAIR abnormality is bright on FLAIR: relative to the rest of the head, channel 1 shows it most
    tumor = case.regions[:, 0].astype(bool)
    head = (case.image.sum(axis=1) > 30) & ~tumor
    contrast = [case.image[:, c][tumor].mean() / case.image[:, c][head].mean() for c in range(3)]
    assert contrast[1] > 1.3 and contrast[1] > max(contrast[0], contrast[2])


def test_real_flair_only(realdata_lgg):
    case_ref = lgg.list_cases(realdata_lgg, lgg_options())[0]
    full = lgg.read_case(case_ref, lgg_options())
    flair = lgg.read_case(case_ref, lgg_options(input_channels=["flair"]))
    assert flair.image.shape == (20, 1, 256, 256) and flair.channel_names == ("flair",)
    np.testing.assert_array_equal(flair.image[:, 0], full.image[:, 1])
    reordered = lgg.read_case(case_ref, lgg_options(input_channels=["post_contrast", "pre_contrast"]))
    np.testing.assert_array_equal(reordered.image, full.image[:, [2, 0]])


def test_duplicated_tree_is_counted_once_from_the_shallowest_copy(realdata_lgg, tmp_path, caplog):
    shutil.copytree(realdata_lgg / "kaggle_3m", tmp_path / "lgg-mri-segmentation" / "kaggle_3m")
    shutil.copytree(realdata_lgg / "kaggle_3m", tmp_path / "kaggle_3m")
    with caplog.at_level(logging.INFO, logger="btseg.data.lgg"):
        cases = lgg.list_cases(tmp_path, lgg_options())
    assert [c.case_id for c in cases] == [REAL_CASE]
    assert all(path.parent.parent == tmp_path / "kaggle_3m" for path in cases[0].files)
    assert "1 case folder(s) appear in more than one" in caplog.text
    case = lgg.read_case(cases[0], lgg_options())
    assert case.source_files[0] == f"kaggle_3m/{REAL_CASE}/{REAL_CASE}_1.tif"


def test_sample_data_csv_has_the_real_header(realdata_lgg, sample_raw):
    real = (realdata_lgg / "kaggle_3m" / "data.csv").read_text(encoding="utf-8").splitlines()[0]
    assert (sample_raw / "kaggle_3m" / "data.csv").read_text(encoding="utf-8").splitlines()[0] == real


# --- generated sample --------------------------------------------------------------------

def test_sample_has_the_archive_layout(sample_raw):
    tree = sample_raw / "kaggle_3m"
    assert (tree / "README.md").is_file()
    rows = (tree / "data.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].split(",") == list(lgg.DATA_CSV_HEADER) and len(rows) == 3
    case_dirs = sorted(p.name for p in tree.iterdir() if p.is_dir())
    assert len(case_dirs) == 2 and all(name.startswith("TCGA_") and len(name.split("_")) == 4 for name in case_dirs)
    assert {row.split(",")[0] for row in rows[1:]} == {name.rsplit("_", 1)[0] for name in case_dirs}
    image = cv2.imread(str(tree / case_dirs[0] / f"{case_dirs[0]}_1.tif"), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(tree / case_dirs[0] / f"{case_dirs[0]}_1_mask.tif"), cv2.IMREAD_UNCHANGED)
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8 and mask.shape == (48, 48) and mask.dtype == np.uint8
    copy = sample_raw / "lgg-mri-segmentation" / "kaggle_3m"
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == sorted(p.relative_to(tree) for p in tree.rglob("*"))
    assert len(lgg.list_cases(sample_raw, lgg_options())) == 2


def test_sample_without_duplicate_tree(tmp_path):
    lgg.write_sample(tmp_path, cases=1, slices_per_case=3, size=32, seed=1, duplicate_tree=False)
    assert not (tmp_path / "lgg-mri-segmentation").exists()


def test_sample_slices_are_ordered_numerically(sample_raw):
    case = lgg.list_cases(sample_raw, lgg_options())[0]
    assert case.extra["slice_index"] == tuple(range(1, 13))  # 2 before 10, unlike a name sort
    names = [p.name for p in case.extra["images"]]
    assert names.index(f"{case.case_id}_2.tif") < names.index(f"{case.case_id}_10.tif")
    read = lgg.read_case(case, lgg_options())
    assert read.source_files[1].endswith(f"{case.case_id}_2.tif")


def test_sample_is_deterministic_and_seeded(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        lgg.write_sample(tmp_path / name, cases=2, slices_per_case=4, size=32, seed=seed)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for path in files:
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes(), path
    assert sorted(p.name for p in (tmp_path / "c" / "kaggle_3m").iterdir()) != \
        sorted(p.name for p in (tmp_path / "a" / "kaggle_3m").iterdir())


def test_sample_channels_and_masks_follow_the_phantom(sample_raw):
    tumor_slices = total = 0
    for case_ref in lgg.list_cases(sample_raw, lgg_options()):
        case = lgg.read_case(case_ref, lgg_options())
        assert case.regions[0].sum() == 0  # slice 1 lies below the lesion
        for k, image_path in enumerate(case_ref.extra["images"]):
            np.testing.assert_array_equal(case.image[k], raw_tiff_pixels(image_path).transpose(2, 0, 1))
        tumor = case.regions[:, 0].astype(bool)
        brain = (case.image[:, 1] > 40) & ~tumor
        tumor_slices += int(tumor.any(axis=(1, 2)).sum())
        total += len(tumor)
        ratio = [case.image[:, c][tumor].mean() / case.image[:, c][brain].mean() for c in range(3)]
        # file order pre (T1), FLAIR, post (T1ce): abnormality brightest on FLAIR, rim enhances after contrast
        assert ratio[1] > 1.4 and ratio[2] > ratio[0]
    assert 0 < tumor_slices < total


def test_sample_is_fast(tmp_path):
    import time

    start = time.perf_counter()
    lgg.write_sample(tmp_path, cases=4, slices_per_case=6, size=64, seed=0)
    assert time.perf_counter() - start < 1.0


# --- broken input: the error names the file ----------------------------------------------

def _first_pair(root: Path) -> tuple[Path, Path]:
    case = lgg.list_cases(root, lgg_options())[0]
    return case.extra["images"][0], case.extra["masks"][0]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _wrong_size(path: Path) -> None:
    cv2.imwrite(str(path), np.zeros((20, 30), np.uint8))


def _value_7(path: Path) -> None:
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    mask[3, 4] = 7
    cv2.imwrite(str(path), mask)


def _grey_image(path: Path) -> None:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(path), image[:, :, 0])


@pytest.mark.parametrize("which, damage, message", [
    ("image", _truncate, "TIFF file ends before its last byte of image data; it is truncated"),
    ("mask", _truncate, "TIFF file ends before its last byte of image data; it is truncated"),
    ("image", lambda p: p.write_bytes(b""), "empty TIFF file"),
    ("mask", lambda p: p.write_bytes(b""), "empty TIFF file"),
    ("image", lambda p: p.write_bytes(b"not a tiff at all"), "unreadable TIFF"),
    ("mask", _wrong_size, r"\(48, 48, 3\) and its mask .*_mask\.tif is \(20, 30\)"),
    ("image", _grey_image, r"image is \(48, 48\) and its mask .*_mask\.tif"),
    ("mask", _value_7, r"mask values \[7\] .*data\.lgg\.labels"),
])
def test_bad_file_is_named(sample_raw, which, damage, message):
    image, mask = _first_pair(sample_raw / "kaggle_3m")
    path = {"image": image, "mask": mask}[which]
    damage(path)
    case = lgg.list_cases(sample_raw / "kaggle_3m", lgg_options())[0]
    with pytest.raises(PipelineError, match=message) as error:
        lgg.read_case(case, lgg_options())
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_image_without_mask_is_named(sample_raw):
    image, mask = _first_pair(sample_raw)
    mask.unlink()
    case = next(c for c in lgg.list_cases(sample_raw, lgg_options()) if c.case_id == image.parent.name)
    with pytest.raises(PipelineError, match=rf"^{re.escape(str(image))}: mask {re.escape(mask.name)} missing"):
        lgg.read_case(case, lgg_options())  # in read_case: preprocess.on_bad_file=skip can skip the case


def test_mask_without_image_is_named(sample_raw):
    image, mask = _first_pair(sample_raw)
    image.unlink()
    case = next(c for c in lgg.list_cases(sample_raw, lgg_options()) if c.case_id == mask.parent.name)
    with pytest.raises(PipelineError, match=rf"^{re.escape(str(mask))}: image {re.escape(image.name)} missing"):
        lgg.read_case(case, lgg_options())


def test_folder_without_cases_is_named(tmp_path):
    (tmp_path / "kaggle_3m").mkdir()
    (tmp_path / "kaggle_3m" / "README.md").write_text("# nothing", encoding="utf-8")
    with pytest.raises(PipelineError,
                       match=rf"^{re.escape(str(tmp_path))}: no kaggle_3m/<case>/<case>_<k>\.tif slices found"):
        lgg.list_cases(tmp_path, lgg_options())


@pytest.mark.parametrize("changes, param", [
    ({"input_channels": ["t2"]}, "data.lgg.input_channels"),
    ({"channels": ["grey"], "input_channels": ["grey"]}, "data.lgg.channels"),
    ({"labels": {"abnormality": 0}}, "data.lgg.labels"),
])
def test_bad_options_name_the_param(sample_raw, changes, param):
    with pytest.raises(PipelineError, match=rf"^params\.yaml: {param}"):
        lgg.list_cases(sample_raw, lgg_options(**changes))
