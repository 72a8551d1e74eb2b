"""Complete-file checks for PNG, JPEG and TIFF, on real files from the excerpts and generated ones,
and every reader that decodes images refusing a truncated file in one line that names it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from btseg.data import coco, lgg
from btseg.data.images import decode, truncated
from btseg.errors import PipelineError


def written(tmp_path: Path, suffix: str) -> bytes:
    image = (np.random.default_rng(0).uniform(0, 255, (64, 48, 3))).astype(np.uint8)
    path = tmp_path / f"x{suffix}"
    cv2.imwrite(str(path), image)
    return path.read_bytes()


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_complete_files_pass_and_cut_files_fail(tmp_path, suffix):
    data = written(tmp_path, suffix)
    assert not truncated(data)
    for cut in (len(data) // 2, len(data) - 10):
        assert truncated(data[:cut]), (suffix, cut)


def test_real_excerpt_files_are_complete_and_their_halves_are_not(realdata_coco, realdata_lgg):
    jpeg = sorted(realdata_coco.rglob("*.jpg"))[0].read_bytes()
    tiff = sorted(realdata_lgg.rglob("*_1.tif"))[0].read_bytes()
    assert not truncated(jpeg) and not truncated(tiff)
    assert truncated(jpeg[: len(jpeg) // 2]) and truncated(tiff[: len(tiff) // 2])


def test_decode_names_the_file_and_what_to_do(tmp_path):
    path = tmp_path / "scan.jpg"
    path.write_bytes(written(tmp_path, ".jpg")[:500])
    with pytest.raises(PipelineError, match=rf"^{path}: image file ends before .* truncated, copy it$"):
        decode(path, cv2.IMREAD_COLOR, "image", "copy it")


def test_coco_and_lgg_readers_refuse_truncated_real_files(tmp_path, realdata_coco, realdata_lgg):
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(realdata_coco, root)
    case = next(c for c in coco.list_cases(root) if c.split == "test")
    image = case.files[0] if case.files[0].suffix == ".jpg" else next(f for f in case.files if f.suffix == ".jpg")
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    with pytest.raises(PipelineError, match=f"{image}: image file ends before"):
        coco.read_case(case)

    from btseg.config import load_params
    from tests.conftest import REPO

    options = load_params(REPO / "params.yaml").data.lgg
    root = tmp_path / "lgg"
    shutil.copytree(realdata_lgg, root)
    case = lgg.list_cases(root, options)[0]
    tif = sorted(f for f in case.files if f.name.endswith("_5.tif"))[0]
    tif.write_bytes(tif.read_bytes()[:4000])
    with pytest.raises(PipelineError, match=f"{tif}: TIFF file ends before"):
        lgg.read_case(case, options)


def float_tiff(path: Path, channels: int = 1, dtype=np.float32) -> np.ndarray:
    """A float TIFF of MRI-like values (not 0..255) written by OpenCV; returns what it holds, (H, W[, C])."""
    image = np.random.default_rng(1).uniform(-50.0, 3000.0, (40, 30) if channels == 1 else (40, 30, channels))
    image = image.astype(dtype)
    assert cv2.imwrite(str(path), image)
    return image


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_float_tiff_is_read_with_its_values_as_grey_or_colour(tmp_path, dtype):
    path = tmp_path / "scan.tif"
    stored = float_tiff(path, dtype=dtype)
    for flags in (cv2.IMREAD_GRAYSCALE, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH, cv2.IMREAD_UNCHANGED):
        grey = decode(path, flags, "image", "check the file")
        assert grey.dtype == np.float32 and grey.shape == (40, 30)
        np.testing.assert_allclose(grey, stored, rtol=1e-6)  # values as stored: no scaling into 8 bits
    colour = decode(path, cv2.IMREAD_COLOR, "image", "check the file")
    assert colour.dtype == np.float32 and colour.shape == (40, 30, 3)
    for channel in range(3):
        np.testing.assert_allclose(colour[..., channel], stored, rtol=1e-6)


def test_a_three_channel_float_tiff_read_as_grey_is_its_luminance(tmp_path):
    path = tmp_path / "rgb.tif"
    stored = float_tiff(path, channels=3)
    grey = decode(path, cv2.IMREAD_GRAYSCALE, "image", "check the file")
    expected = 0.114 * stored[..., 0] + 0.587 * stored[..., 1] + 0.299 * stored[..., 2]  # BGR, as OpenCV weighs it
    np.testing.assert_allclose(grey, expected, rtol=1e-4)


def test_a_float_tiff_holding_nan_is_refused_naming_it(tmp_path):
    path = tmp_path / "scan.tif"
    image = np.ones((8, 8), np.float32)
    image[2, 3] = np.nan
    cv2.imwrite(str(path), image)
    with pytest.raises(PipelineError, match=rf"^{path}: image holds NaN or infinite values; check the file$"):
        decode(path, cv2.IMREAD_GRAYSCALE, "image", "check the file")
