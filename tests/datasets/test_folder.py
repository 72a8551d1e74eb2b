"""The folder reader: the generated sample, grouping and ordering, formats and colour, and bad inputs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from btseg.data import folder
from btseg.errors import PipelineError
from tests.conftest import default_params


def options(**overrides) -> SimpleNamespace:
    """params.yaml's data.folder (the layout the sample generator writes), with overrides."""
    return SimpleNamespace(**{**default_params()["data"]["folder"], **overrides})


def write(root: Path, relative: str, array: np.ndarray) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array), path
    return path


def grey_pair(root: Path, stem: str, shape=(6, 8), mask_value=255) -> tuple[Path, Path]:
    """A grey image and its mask (top-left corner labelled) in the sample layout."""
    image = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    mask = np.zeros(shape, np.uint8)
    mask[:2, :3] = mask_value
    return write(root, f"images/{stem}.png", image), write(root, f"masks/{stem}_mask.png", mask)


# --- generated sample ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder_sample")
    folder.write_sample(root, cases=3, slices_per_case=11, size=32, seed=4)
    return root


def test_sample_round_trip_groups_cases_and_orders_slices_numerically(sample_root):
    cases = folder.list_cases(sample_root, options())
    assert [c.case_id for c in cases] == ["patient01", "patient02", "patient03"]
    first = folder.read_case(cases[0], options())
    assert first.image.shape == (11, 1, 32, 32) and first.image.dtype == np.float32
    assert first.regions.shape == (11, 1, 32, 32) and first.regions.dtype == np.uint8
    assert first.channel_names == ("grey",) and first.region_names == ("tumor",)
    assert first.slice_index.tolist() == list(range(1, 12))
    # by name patient01_10 and _11 would come before _2
    assert first.source_files[:3] == ("images/patient01_1.png", "images/patient01_2.png", "images/patient01_3.png")
    assert first.source_files[-2:] == ("images/patient01_10.png", "images/patient01_11.png")
    for case in cases:
        read = folder.read_case(case, options())
        for k, source in enumerate(read.source_files):
            stem = Path(source).stem
            written_mask = cv2.imread(str(sample_root / "masks" / f"{stem}_mask.png"), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(read.regions[k, 0] * 255, written_mask)
            np.testing.assert_array_equal(read.image[k, 0], cv2.imread(str(sample_root / source), cv2.IMREAD_GRAYSCALE))
        tumor_pixels = read.regions.sum(axis=(1, 2, 3))
        assert tumor_pixels[0] == 0 and tumor_pixels[-1] == 0 and tumor_pixels.max() > 20


def test_params_yaml_describes_the_layout_the_sample_writes(sample_root):
    assert len(folder.list_cases(sample_root, options())) > 1
    assert len(list((sample_root / "images").glob("*.png"))) == 33
    assert len(list((sample_root / "masks").glob("*_mask.png"))) == 33


def test_sample_is_deterministic_and_the_seed_matters(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        folder.write_sample(tmp_path / name, cases=2, slices_per_case=3, size=16, seed=seed)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 12
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)


def test_default_pattern_makes_each_image_its_own_case(sample_root):
    cases = folder.list_cases(sample_root, options(case_pattern="(?P<case>.+)"))
    assert len(cases) == 33 and cases[0].case_id == "patient01_1"
    read = folder.read_case(cases[0], options())
    assert read.image.shape == (1, 1, 32, 32) and read.slice_index.tolist() == [0]


def test_without_a_slice_group_slices_go_in_file_name_order(tmp_path):
    for stem in ("p_b", "p_a", "p_c"):
        grey_pair(tmp_path, stem)
    (case,) = folder.list_cases(tmp_path, options(case_pattern=r"(?P<case>p)_\w"))
    read = folder.read_case(case, options())
    assert read.source_files == ("images/p_a.png", "images/p_b.png", "images/p_c.png")
    assert read.slice_index.tolist() == [0, 1, 2]
    assert case.extra["slice_index"] == (0, 1, 2) and len(case.files) == 6


# --- formats and channels --------------------------------------------------------------------

def rgb_case(root: Path) -> np.ndarray:
    """One colour image with distinct R, G and B planes; returns it as (3, H, W) RGB."""
    rgb = np.stack([np.full((4, 5), 10), np.full((4, 5), 20), np.arange(20).reshape(4, 5) + 100]).astype(np.uint8)
    write(root, "images/scan_1.png", rgb.transpose(1, 2, 0)[..., ::-1])  # cv2 writes BGR
    write(root, "masks/scan_1_mask.png", np.zeros((4, 5), np.uint8))
    return rgb


def test_colour_images_are_read_in_rgb_order(tmp_path):
    rgb = rgb_case(tmp_path)
    colour = options(channels=["red", "green", "blue"], input_channels=["red", "green", "blue"])
    read = folder.read_case(folder.list_cases(tmp_path, colour)[0], colour)
    assert read.channel_names == ("red", "green", "blue")
    np.testing.assert_array_equal(read.image[0], rgb)


def test_input_channels_pick_a_subset_in_their_order(tmp_path):
    rgb = rgb_case(tmp_path)
    subset = options(channels=["red", "green", "blue"], input_channels=["blue", "red"])
    read = folder.read_case(folder.list_cases(tmp_path, subset)[0], subset)
    assert read.image.shape == (1, 2, 4, 5) and read.channel_names == ("blue", "red")
    np.testing.assert_array_equal(read.image[0], rgb[[2, 0]])


def test_colour_stored_image_is_read_as_grey_when_one_channel_is_configured(tmp_path):
    rgb_case(tmp_path)
    read = folder.read_case(folder.list_cases(tmp_path, options())[0], options())
    assert read.image.shape == (1, 1, 4, 5)


def test_jpg_and_tif_in_any_case_are_taken_and_other_files_ignored(tmp_path):
    flat = np.full((8, 8), 120, np.uint8)  # flat: survives JPEG compression exactly
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 255
    for name in ("a_1.png", "b_1.jpg", "c_1.JPEG", "d_1.tif", "e_1.TIFF"):
        write(tmp_path, f"images/{name}", flat)
        write(tmp_path, f"masks/{Path(name).stem}_mask.png", mask)
    (tmp_path / "images" / "notes_1.txt").write_text("not an image")
    cases = folder.list_cases(tmp_path, options(images="images/*.*"))
    assert [c.case_id for c in cases] == ["a", "b", "c", "d", "e"]
    for case in cases:
        read = folder.read_case(case, options())
        np.testing.assert_array_equal(read.image[0, 0], flat)
        np.testing.assert_array_equal(read.regions[0, 0], mask // 255)


def test_16_bit_tif_keeps_its_values(tmp_path):
    image = (np.arange(48).reshape(6, 8) * 1000).astype(np.uint16)
    write(tmp_path, "images/s_1.tif", image)
    write(tmp_path, "masks/s_1_mask.png", np.zeros((6, 8), np.uint8))
    read = folder.read_case(folder.list_cases(tmp_path, options(images="images/*.tif"))[0], options())
    np.testing.assert_array_equal(read.image[0, 0], image.astype(np.float32))


def test_masks_beside_images_are_not_taken_as_images(tmp_path):
    # the LGG-style layout: <case>/<case>_<n>.tif next to <case>_<n>_mask.tif
    for n in (1, 2, 10):
        write(tmp_path, f"kaggle_3m/TCGA_CS_1/TCGA_CS_1_{n}.tif", np.full((4, 4), n, np.uint8))
        write(tmp_path, f"kaggle_3m/TCGA_CS_1/TCGA_CS_1_{n}_mask.tif", np.zeros((4, 4), np.uint8))
    beside = options(images="kaggle_3m/*/*.tif", masks="{parent}/{stem}_mask.tif")
    (case,) = folder.list_cases(tmp_path, beside)
    assert case.case_id == "TCGA_CS_1" and case.extra["slice_index"] == (1, 2, 10)
    read = folder.read_case(case, beside)
    assert read.image[:, 0, 0, 0].tolist() == [1, 2, 10]


def test_several_labels_give_regions_in_label_order(tmp_path):
    grey_pair(tmp_path, "x_1")
    mask = np.zeros((6, 8), np.uint8)
    mask[0, :] = 2
    mask[1, :] = 1
    write(tmp_path, "masks/x_1_mask.png", np.dstack([mask] * 3))  # grey stored as RGB is accepted
    labelled = options(labels={"edema": 2, "core": 1})
    read = folder.read_case(folder.list_cases(tmp_path, labelled)[0], labelled)
    assert read.region_names == ("edema", "core")
    np.testing.assert_array_equal(read.regions[0, 0], mask == 2)
    np.testing.assert_array_equal(read.regions[0, 1], mask == 1)


# --- bad inputs ------------------------------------------------------------------------------

def error_of(root: Path, opts: SimpleNamespace | None = None) -> str:
    opts = opts or options()
    with pytest.raises(PipelineError) as raised:
        for case in folder.list_cases(root, opts):
            folder.read_case(case, opts)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_no_images_names_the_folder_and_the_glob(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "readme.txt").write_text("empty")
    message = error_of(tmp_path)
    assert str(tmp_path) in message and "data.folder.images" in message and "images/*.png" in message


def test_missing_folder_is_named(tmp_path):
    assert str(tmp_path / "nowhere") in error_of(tmp_path / "nowhere")


def test_missing_mask_names_image_mask_and_param(tmp_path):
    image, mask = grey_pair(tmp_path, "p_1")
    mask.unlink()
    message = error_of(tmp_path)
    assert str(image) in message and str(mask) in message and "data.folder.masks" in message


def test_stem_not_matching_the_pattern_names_file_and_param(tmp_path):
    grey_pair(tmp_path, "p_1")
    image, _ = grey_pair(tmp_path, "scout")
    message = error_of(tmp_path)
    assert str(image) in message and "data.folder.case_pattern" in message


@pytest.mark.parametrize("which", ["image", "mask"])
@pytest.mark.parametrize(("damage", "said"), [("truncated", "truncated"), ("empty", "empty"),
                                              ("garbage", "unreadable")])
def test_unreadable_file_is_named(tmp_path, which, damage, said):
    image, mask = grey_pair(tmp_path, "p_1", shape=(32, 32))
    path = image if which == "image" else mask
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x89PNG not really"}[damage])
    message = error_of(tmp_path)
    assert str(path) in message and which in message and said in message


def test_truncated_jpeg_is_named(tmp_path):
    image = write(tmp_path, "images/p_1.jpg", np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8))
    write(tmp_path, "masks/p_1_mask.png", np.zeros((32, 32), np.uint8))
    image.write_bytes(image.read_bytes()[:-40])
    message = error_of(tmp_path, options(images="images/*.jpg"))
    assert str(image) in message and "truncated" in message


def test_mask_of_another_size_names_both_and_the_shapes(tmp_path):
    image, mask = grey_pair(tmp_path, "p_1", shape=(6, 8))
    write(tmp_path, "masks/p_1_mask.png", np.zeros((6, 7), np.uint8))
    message = error_of(tmp_path)
    assert str(image) in message and str(mask) in message and "6x7" in message and "6x8" in message


def test_slices_of_different_sizes_name_the_file(tmp_path):
    grey_pair(tmp_path, "p_1", shape=(6, 8))
    odd, _ = grey_pair(tmp_path, "p_2", shape=(8, 8))
    message = error_of(tmp_path)
    assert str(odd) in message and "8x8" in message and "6x8" in message


def test_mask_value_outside_labels_names_file_values_and_param(tmp_path):
    _, mask = grey_pair(tmp_path, "p_1", mask_value=128)
    message = error_of(tmp_path)
    assert str(mask) in message and "[128]" in message and "data.folder.labels" in message


def test_colour_mask_with_differing_channels_is_named(tmp_path):
    _, mask = grey_pair(tmp_path, "p_1")
    colour = np.zeros((6, 8, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    write(tmp_path, "masks/p_1_mask.png", colour)
    message = error_of(tmp_path)
    assert str(mask) in message and "channels" in message


def test_repeated_slice_number_names_both_files(tmp_path):
    first, _ = grey_pair(tmp_path, "p_1")
    second, _ = grey_pair(tmp_path, "p_01")
    message = error_of(tmp_path)
    assert str(first) in message and str(second) in message and "data.folder.case_pattern" in message


def test_two_images_with_one_mask_are_named(tmp_path):
    png, mask = grey_pair(tmp_path, "p_1")
    jpg = write(tmp_path, "images/p_1.jpg", np.zeros((6, 8), np.uint8))
    message = error_of(tmp_path, options(images="images/*.*"))
    assert str(png) in message and str(jpg) in message and str(mask) in message


@pytest.mark.parametrize(("override", "param"), [
    ({"case_pattern": r"(.+)_\d+"}, "data.folder.case_pattern"),
    ({"case_pattern": r"(?P<case>.+"}, "data.folder.case_pattern"),
    ({"masks": "masks/mask.png"}, "data.folder.masks"),
    ({"masks": "masks/{name}.png"}, "data.folder.masks"),
    ({"input_channels": ["flair"]}, "data.folder.input_channels"),
    ({"channels": ["a", "b"], "input_channels": ["a"]}, "data.folder.channels"),
    ({"labels": {"tumor": 0}}, "data.folder.labels"),
    ({"labels": {"a": 255, "b": 255}}, "data.folder.labels"),
])
def test_bad_options_name_the_param(tmp_path, override, param):
    grey_pair(tmp_path, "p_1")
    assert param in error_of(tmp_path, options(**override))


def test_slice_group_matching_more_than_digits_names_file_and_param(tmp_path):
    image, _ = grey_pair(tmp_path, "p_x")
    message = error_of(tmp_path, options(case_pattern=r"(?P<case>p)_(?P<slice>\w+)"))
    assert str(image) in message and "data.folder.case_pattern" in message
