"""Readers of the raw layouts, on the real COCO excerpt, on generated samples, and on broken files."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from btseg.config import parse_params
from btseg.data import brats_h5, coco, sample
from btseg.errors import PipelineError
from btseg.preprocessing.dataset import preprocess_dataset
from btseg.preprocessing.slices import load_split


def slice_brats2020(raw, out, params):
    return preprocess_dataset("brats2020", raw, out, params)


def slice_tumor_coco(raw, out, params):
    return preprocess_dataset("tumor_coco", raw, out, params)


EMPTY_IMAGE = "2369_jpg.rf.8b8afa9d79c61fa42ca128c940b9cbc0.jpg"
DOUBLE_IMAGE = "176_jpg.rf.23ef40c30986ba54b865d55a934bfa72.jpg"


# --- real COCO excerpt -------------------------------------------------------------------

def test_real_coco_splits_are_read_with_their_bom(realdata_coco):
    counts = {split: len(coco.read_split(realdata_coco, split)) for split in ("train", "val", "test")}
    assert counts == {"train": 10, "val": 4, "test": 4}


def test_real_coco_image_without_annotation_has_empty_mask(realdata_coco):
    image = next(i for i in coco.read_split(realdata_coco, "train") if i.path.name == EMPTY_IMAGE)
    grey, mask = coco.read_image(image)
    assert grey.shape == (1, 640, 640) and mask.shape == (1, 640, 640)
    assert mask.sum() == 0 and grey.max() > 0


def test_real_coco_two_annotations_are_united(realdata_coco):
    raw = json.loads((realdata_coco / "train" / coco.ANNOTATIONS).read_text(encoding="utf-8-sig"))
    image_id = next(i["id"] for i in raw["images"] if i["file_name"] == DOUBLE_IMAGE)
    polygons = [a["segmentation"][0] for a in raw["annotations"] if a["image_id"] == image_id]
    assert len(polygons) == 2
    # independent expectation: the export's polygons are axis-aligned rectangles, so a pixel is
    # inside when its centre lies in [min, max) of the vertex coordinates
    expected = np.zeros((640, 640), bool)
    centres = np.arange(640) + 0.5
    for polygon in polygons:
        xs, ys = polygon[0::2], polygon[1::2]
        inside_x = (centres >= min(xs)) & (centres < max(xs))
        inside_y = (centres >= min(ys)) & (centres < max(ys))
        expected |= inside_y[:, None] & inside_x[None, :]
    image = next(i for i in coco.read_split(realdata_coco, "train") if i.path.name == DOUBLE_IMAGE)
    _, mask = coco.read_image(image)
    assert expected.sum() > 10_000  # the big box (about 101 x 106 px) plus the small one
    np.testing.assert_array_equal(mask[0].astype(bool), expected)


def test_real_coco_case_id_is_the_source_image_behind_roboflow_copies(realdata_coco):
    ids = {i.case_id for i in coco.read_split(realdata_coco, "test")}
    assert ids == {"1517", "2201", "2278", "2279"}


@pytest.mark.slow
def test_real_coco_preprocesses_into_the_slice_contract(realdata_coco, tmp_path, params_dict):
    params_dict["data"]["source"] = "kaggle"
    counts = slice_tumor_coco(realdata_coco, tmp_path, parse_params(params_dict))
    assert counts == {"train": 10, "val": 4, "test": 4}
    train = load_split(tmp_path, "train")
    size = params_dict["preprocess"]["size"]
    assert train.images.shape == (10, 1, size, size) and train.masks.shape == (10, 1, size, size)
    assert train.meta["source_version"] == params_dict["data"]["tumor_coco"]["kaggle_handle"]
    empty_row = train.index.index[train.index.source_file == f"train/{EMPTY_IMAGE}"][0]
    assert train.index.tumor_pixels[empty_row] == 0 and train.masks[empty_row].sum() == 0
    assert (train.index.tumor_pixels > 0).sum() == 9


def test_rasterize_rectangle_covers_exactly_its_bbox_pixels():
    mask = coco.rasterize(((2.0, 1.0, 6.0, 1.0, 6.0, 4.0, 2.0, 4.0),), 8, 8)
    expected = np.zeros((8, 8), np.uint8)
    expected[1:4, 2:6] = 1
    np.testing.assert_array_equal(mask, expected)


# --- generated samples -------------------------------------------------------------------

@pytest.fixture
def brats_raw(tmp_path) -> Path:
    root = tmp_path / "brats2020"
    sample.write_brats_h5(root, cases=4, slices_per_case=5, image_channels=["flair", "t1", "t1ce", "t2"],
                          mask_channels=["necrotic_core", "edema", "enhancing"], seed=3)
    return root


def test_sample_brats_has_the_archive_layout(brats_raw):
    assert (brats_raw / "BraTS20 Training Metadata.csv").is_file()
    data = brats_raw / "BraTS2020_training_data/content/data"
    for name in ("meta_data.csv", "name_mapping.csv", "survival_info.csv"):
        assert (data / name).is_file()
    files = brats_h5.list_slices(brats_raw)
    assert len(files) == 20 and {f.volume for f in files} == {1, 2, 3, 4}
    with h5py.File(files[0].path) as h5:
        assert h5["image"].shape == (240, 240, 4) and h5["mask"].shape == (240, 240, 3)
        assert h5["mask"].dtype == np.uint8


def test_sample_brats_has_tumor_and_tumor_free_slices_with_distinct_contrasts(brats_raw):
    files = brats_h5.list_slices(brats_raw)
    tumor_slices = 0
    for file in files:
        image, mask = brats_h5.read_slice(file.path, 4, 3)
        if mask.any():
            tumor_slices += 1
            edema = mask[1].astype(bool)
            if edema.sum() > 50:
                flair, t1 = image[0], image[1]
                brain = image[0] != 0
                # edema is bright on FLAIR and darker than brain on T1
                assert flair[edema].mean() > flair[brain & ~mask.any(0)].mean()
                assert t1[edema].mean() < t1[brain & ~mask.any(0)].mean()
    assert 0 < tumor_slices < len(files)


def test_sample_is_deterministic(tmp_path):
    for name in ("a", "b"):
        sample.write_tumor_coco(tmp_path / name, images_per_split={"train": 2, "valid": 1, "test": 1}, seed=5)
    for path in (tmp_path / "a").rglob("*"):
        if path.is_file():
            assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes(), path


def test_sample_coco_has_bom_empty_and_double_annotations(tmp_path):
    sample.write_tumor_coco(tmp_path, images_per_split={"train": 3, "valid": 1, "test": 1}, seed=1)
    raw = (tmp_path / "train" / coco.ANNOTATIONS).read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    images = coco.read_split(tmp_path, "train")
    polygons_per_image = sorted(len(i.polygons) for i in images)
    assert polygons_per_image[0] == 0 and polygons_per_image[-1] >= 2


def test_brats_split_keeps_each_patient_in_one_split(brats_raw, tmp_path, params_dict):
    params_dict["preprocess"]["split"] = {"train": 0.5, "val": 0.25, "test": 0.25}
    counts = slice_brats2020(brats_raw, tmp_path / "out", parse_params(params_dict))
    assert counts == {"train": 10, "val": 5, "test": 5}
    cases = {split: set(load_split(tmp_path / "out", split).index.case_id) for split in ("train", "val", "test")}
    assert not (cases["train"] & cases["val"] or cases["train"] & cases["test"] or cases["val"] & cases["test"])
    test = load_split(tmp_path / "out", "test")
    # masks are the whole tumor: any sub-region present in the source file
    row = int(np.argmax(test.index.tumor_pixels))
    _, raw_mask = brats_h5.read_slice(brats_raw / test.index.source_file[row], 4, 3)
    assert raw_mask.any(axis=0).sum() > 0 and test.masks[row].sum() == test.index.tumor_pixels[row] > 0


# --- broken files: the error names the file ----------------------------------------------

def test_truncated_h5_names_the_file(brats_raw):
    path = brats_h5.list_slices(brats_raw)[0].path
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(PipelineError, match=path.name):
        brats_h5.read_slice(path, 4, 3)


def test_h5_without_mask_names_the_file_and_dataset(tmp_path):
    path = tmp_path / "volume_1_slice_0.h5"
    with h5py.File(path, "w") as h5:
        h5["image"] = np.zeros((240, 240, 4), np.float32)
    with pytest.raises(PipelineError, match=r"volume_1_slice_0\.h5: dataset 'mask' missing"):
        brats_h5.read_slice(path, 4, 3)


def test_h5_with_wrong_channel_count_names_the_param(brats_raw):
    path = brats_h5.list_slices(brats_raw)[0].path
    with pytest.raises(PipelineError, match="data.brats2020.image_channels"):
        brats_h5.read_slice(path, 3, 3)


def test_corrupt_jpeg_names_the_file(tmp_path):
    sample.write_tumor_coco(tmp_path, images_per_split={"train": 2, "valid": 1, "test": 1}, seed=1)
    image = coco.read_split(tmp_path, "test")[0]
    image.path.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(PipelineError, match=image.path.name):
        coco.read_image(image)


def test_truncated_json_names_the_file(tmp_path):
    sample.write_tumor_coco(tmp_path, images_per_split={"train": 2, "valid": 1, "test": 1}, seed=1)
    path = tmp_path / "valid" / coco.ANNOTATIONS
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(PipelineError, match=r"valid/_annotations\.coco\.json: not valid JSON"):
        coco.read_split(tmp_path, "val")


def test_json_without_images_names_the_field(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / coco.ANNOTATIONS).write_text(json.dumps({"annotations": []}), encoding="utf-8")
    with pytest.raises(PipelineError, match=r"_annotations\.coco\.json: .*'images'"):
        coco.read_split(tmp_path, "test")


def test_missing_listed_image_names_the_file(tmp_path):
    sample.write_tumor_coco(tmp_path, images_per_split={"train": 2, "valid": 1, "test": 1}, seed=1)
    image = coco.read_split(tmp_path, "test")[0]
    image.path.unlink()
    with pytest.raises(PipelineError, match=f"{image.path.name}: listed in"):
        coco.read_image(image)


def test_slices_with_wrong_shape_name_the_array_file(brats_raw, tmp_path, params_dict):
    slice_brats2020(brats_raw, tmp_path, parse_params(params_dict))
    np.save(tmp_path / "val" / "masks.npy", np.zeros((1, 1, 8, 8), np.uint8))
    with pytest.raises(PipelineError, match=r"val/masks\.npy: uint8 \(1, 1, 8, 8\), meta\.json says"):
        load_split(tmp_path, "val")


def test_slices_meta_without_field_names_it(brats_raw, tmp_path, params_dict):
    slice_brats2020(brats_raw, tmp_path, parse_params(params_dict))
    meta_path = tmp_path / "test" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["channels"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(PipelineError, match=r"test/meta\.json: field\(s\) \['channels'\] missing"):
        load_split(tmp_path, "test")


def test_h5_mask_values_outside_zero_one_name_the_file(tmp_path):
    path = tmp_path / "volume_1_slice_0.h5"
    mask = np.zeros((240, 240, 3), np.uint8)
    mask[5, 5, 1] = 2
    with h5py.File(path, "w") as h5:
        h5["image"] = np.ones((240, 240, 4), np.float32)
        h5["mask"] = mask
    with pytest.raises(PipelineError, match=r"volume_1_slice_0\.h5: 'mask' holds values \[2\]"):
        brats_h5.read_slice(path, 4, 3)


def test_h5_nan_voxels_name_the_file(tmp_path):
    path = tmp_path / "volume_2_slice_9.h5"
    image = np.ones((240, 240, 4), np.float32)
    image[3, 3, 0] = np.nan
    with h5py.File(path, "w") as h5:
        h5["image"] = image
        h5["mask"] = np.zeros((240, 240, 3), np.uint8)
    with pytest.raises(PipelineError, match=r"volume_2_slice_9\.h5: 'image' holds NaN"):
        brats_h5.read_slice(path, 4, 3)
