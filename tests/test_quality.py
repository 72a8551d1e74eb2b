"""Suspect inputs: identical channels, near-empty volumes, intensity outliers."""

from __future__ import annotations

import numpy as np
import pytest

from btseg.preprocessing.quality import suspect_reasons


def volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.uniform(50, 100, size=(4, 3, 16, 16)).astype(np.float32)
    image[:, :, :2] = 0  # a background band
    return image, image.max(axis=1) > 0


def test_a_normal_case_is_not_suspect():
    image, brain = volume()
    assert suspect_reasons(image, brain, ["t1", "flair", "t1ce"]) == []


def test_a_sequence_filled_in_with_another_is_reported_by_name():
    image, brain = volume()
    image[:, 2] = image[:, 1]
    assert suspect_reasons(image, brain, ["t1", "flair", "t1ce"]) == [
        "channels flair and t1ce are identical (a missing sequence filled in?)"]


def test_near_empty_volume_and_hot_spot():
    image, brain = volume()
    empty = np.zeros_like(brain)
    empty[0, 5, 5] = True  # 1 of 1,024 voxels
    assert any(r.startswith("near-empty volume: brain in 0.10% of the voxels")
               for r in suspect_reasons(image, empty, ["a", "b", "c"]))
    image[1, 0, 8, 8] = 5_000.0  # 50x the channel's 99th percentile (about 100)
    reasons = suspect_reasons(image, brain, ["a", "b", "c"])
    assert len(reasons) == 1 and reasons[0].startswith("intensity outlier in a: maximum 5000 is")


@pytest.mark.slow
def test_suspect_lgg_case_is_reported_in_meta_or_skipped(tmp_path, params_dict, realdata_lgg):
    import shutil
    import subprocess

    import cv2
    import yaml

    from btseg.preprocessing.slices import load_split
    from tests.conftest import stage_argv

    tree = tmp_path / "lgg"
    shutil.copytree(realdata_lgg, tree)
    patient = tree / "kaggle_3m" / "TCGA_CS_4942_19970222"
    for other in ("TCGA_CS_4943_20000902", "TCGA_CS_4944_20010208", "TCGA_CS_4945_20010208"):
        shutil.copytree(patient, patient.with_name(other))
        for file in patient.with_name(other).iterdir():
            file.rename(file.with_name(file.name.replace(patient.name, other)))
    for image in (tree / "kaggle_3m" / "TCGA_CS_4945_20010208").glob("*[0-9].tif"):  # FLAIR copied into all three
        pixels = cv2.imread(str(image), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(image), np.repeat(pixels[..., 1:2], 3, axis=2))
    params_dict["data"].update(source="kaggle", datasets=["lgg"])
    params_dict["data"]["lgg"]["archive"] = str(tree)
    for policy, cases in (("report", 4), ("skip", 3)):
        params_dict["preprocess"]["suspect_cases"] = policy
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict, sort_keys=False))
        for stage in ("stages.download", "stages.preprocess"):
            result = subprocess.run(stage_argv(stage, "--dataset", "lgg"), cwd=tmp_path, capture_output=True, text=True,
                                    timeout=300)
            assert result.returncode == 0, result.stderr
        splits = [load_split(tmp_path / "data/slices/lgg", s) for s in ("train", "val", "test")]
        assert len(set().union(*(set(s.index.case_id) for s in splits))) == cases
        suspect = splits[0].meta["suspect_cases"]
        assert suspect["count"] == 1 and suspect["cases"][0]["case_id"] == "TCGA_CS_4945_20010208"
        assert "channels pre_contrast and flair are identical" in suspect["cases"][0]["reasons"][0]
