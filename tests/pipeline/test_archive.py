"""data.<dataset>.archive: a dataset the user already has, as its unpacked folder or the Kaggle .zip,
read through the same download stage contract and the same readers, with no network."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from btseg.download import unpack_archive
from btseg.errors import PipelineError
from btseg.preprocessing.slices import load_split
from tests.conftest import run_in
from tests.pipeline.test_download import OFFLINE

pytestmark = pytest.mark.slow  # trains or runs stages in subprocesses


def zip_tree(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                bundle.write(path, prefix + str(path.relative_to(folder)))
    return archive


@pytest.fixture
def lgg_project(tmp_path, params_dict) -> Path:
    params_dict["data"].update(source="kaggle", datasets=["lgg"])
    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(params_dict, sort_keys=False))
    return root


def set_archive(project: Path, archive: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["lgg"]["archive"] = str(archive)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.parametrize("form", ["folder", "zip", "kaggle_3m"])  # kaggle_3m: the folder a user sees after unzipping
def test_real_lgg_excerpt_from_a_local_archive_gives_the_same_slices_either_way(lgg_project, realdata_lgg, tmp_path,
                                                                                form):
    # the excerpt's patient three times over (the split needs three), under the archive's own names
    tree = tmp_path / "lgg"
    shutil.copytree(realdata_lgg, tree)
    patient = tree / "kaggle_3m" / "TCGA_CS_4942_19970222"
    for other in ("TCGA_CS_4943_20000902", "TCGA_CS_4944_20010208"):
        shutil.copytree(patient, patient.with_name(other))
        for file in (patient.with_name(other)).iterdir():
            file.rename(file.with_name(file.name.replace("TCGA_CS_4942_19970222", other)))
    realdata_lgg = tree / "kaggle_3m" if form == "kaggle_3m" else tree  # what the download copies in
    archive = realdata_lgg if form != "zip" else zip_tree(tree, tmp_path / "archive.zip")
    set_archive(lgg_project, archive)
    result = run(lgg_project, "stages.download", "--dataset", "lgg")
    assert result.returncode == 0, result.stderr
    raw = lgg_project / "data/raw/lgg"
    files = sorted(str(p.relative_to(raw)) for p in raw.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(realdata_lgg)) for p in realdata_lgg.rglob("*") if p.is_file())
    assert not any((raw / f).stat().st_ino == (realdata_lgg / f).stat().st_ino for f in files)  # copies, not links
    result = run(lgg_project, "stages.preprocess", "--dataset", "lgg")
    assert result.returncode == 0, result.stderr
    splits = [load_split(lgg_project / "data/slices/lgg", s) for s in ("train", "val", "test")]
    assert sum(len(s.images) for s in splits) == 60  # three patients of 20 slices, every slice kept
    assert splits[0].meta["source_version"] == f"archive({archive})"


def test_a_zip_is_extracted_with_its_folders(tmp_path):
    (tmp_path / "tree/kaggle_3m/P1").mkdir(parents=True)
    (tmp_path / "tree/kaggle_3m/P1/a.tif").write_bytes(b"\x01\x02" * 100)
    (tmp_path / "tree/kaggle_3m/data.csv").write_text("x\n")
    archive = zip_tree(tmp_path / "tree", tmp_path / "a.zip")
    out = tmp_path / "out"
    out.mkdir()
    unpack_archive(archive, out, "data.lgg.archive")
    assert (out / "kaggle_3m/P1/a.tif").read_bytes() == b"\x01\x02" * 100
    assert (out / "kaggle_3m/data.csv").read_text() == "x\n"


def test_a_truncated_zip_fails_in_one_line_naming_it_and_the_stage_leaves_nothing(lgg_project, tmp_path):
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree/big.bin").write_bytes(np.random.default_rng(0).bytes(200_000))
    archive = zip_tree(tmp_path / "tree", tmp_path / "a.zip")
    archive.write_bytes(archive.read_bytes()[:150_000])
    set_archive(lgg_project, archive)
    result = run(lgg_project, "stages.download", "--dataset", "lgg")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(archive) in lines[0] and "data.lgg.archive" in lines[0], lines
    assert not (lgg_project / "data/raw/lgg").exists()
    assert not list((lgg_project / "data/raw").glob("lgg.partial-*"))


def test_a_missing_archive_names_the_param(lgg_project, tmp_path):
    set_archive(lgg_project, tmp_path / "nowhere.zip")
    result = run(lgg_project, "stages.download", "--dataset", "lgg")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: params.yaml: data.lgg.archive: {tmp_path / 'nowhere.zip'} not found; give the unpacked folder or "
        "the .zip as downloaded, or set it to '' to download from Kaggle"]


def test_a_zip_member_outside_the_folder_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("../escape.txt", "x")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PipelineError, match="outside the dataset folder"):
        unpack_archive(archive, out, "data.lgg.archive")
    assert not (tmp_path / "escape.txt").exists()
    shutil.rmtree(out)


def run(project: Path, *args: str):
    return run_in(project, *args, env={**os.environ, **OFFLINE})


def test_a_symlink_loop_in_an_archive_folder_fails_in_one_line_naming_the_link(lgg_project, tmp_path):
    (tmp_path / "tree/kaggle_3m/P1").mkdir(parents=True)
    (tmp_path / "tree/kaggle_3m/P1/a.tif").write_bytes(b"\x01")
    (tmp_path / "tree/kaggle_3m/P1/loop").symlink_to("loop")  # a link to itself
    set_archive(lgg_project, tmp_path / "tree")
    result = run(lgg_project, "stages.download", "--dataset", "lgg")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "tree/kaggle_3m/P1/loop") in lines[0], lines
    assert "data.lgg.archive" in lines[0]
    assert not (lgg_project / "data/raw/lgg").exists() and not list((lgg_project / "data/raw").glob("lgg.partial-*"))


def test_a_link_to_a_folder_holding_it_is_refused_before_anything_is_copied(tmp_path):
    (tmp_path / "tree/kaggle_3m/P1").mkdir(parents=True)
    (tmp_path / "tree/kaggle_3m/P1/a.tif").write_bytes(b"\x01")
    (tmp_path / "tree/kaggle_3m/P1/up").symlink_to("..")  # copying it would copy kaggle_3m into itself, 40 deep
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PipelineError, match="P1/up") as error:
        unpack_archive(tmp_path / "tree", out, "data.lgg.archive")
    assert "\n" not in str(error.value) and not list(out.rglob("*.tif"))
