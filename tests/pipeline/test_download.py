"""The download stage's kaggle path, offline: a pre-filled kagglehub cache, the real download code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from btseg.data import sample
from btseg.preprocessing.slices import load_split
from tests.conftest import run_in

pytestmark = pytest.mark.slow  # trains or runs stages in subprocesses

HANDLES = {
    "brats2020": "awsaf49/brats2020-training-data/versions/3",
    "tumor_coco": "pkdarabi/brain-tumor-image-dataset-semantic-segmentation/versions/1",
}
# Any request that slips through goes to a closed local port instead of the internet.
OFFLINE = {"KAGGLE_API_ENDPOINT": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}


@pytest.fixture
def project(tmp_path, params_dict) -> Path:
    params_dict["data"]["source"] = "kaggle"
    assert {d: params_dict["data"][d]["kaggle_handle"] for d in HANDLES} == HANDLES
    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(params_dict, sort_keys=False))
    return root


@pytest.fixture
def offline_env(tmp_path) -> dict:
    home = tmp_path / "home"  # no ~/.kaggle/kaggle.json here
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE")}
    env.update(OFFLINE, HOME=str(home), KAGGLEHUB_CACHE=str(tmp_path / "kagglehub"), TQDM_DISABLE="1")
    return env


def fill_cache(cache: Path, dataset: str, monkeypatch) -> Path:
    """Put generated files where kagglehub keeps the pinned version and mark it complete."""
    from kagglehub.cache import Cache
    from kagglehub.handle import parse_dataset_handle

    owner, slug, _, version = HANDLES[dataset].split("/")
    folder = cache / "datasets" / owner / slug / "versions" / version
    if dataset == "brats2020":
        sample.write_brats_h5(folder, cases=4, slices_per_case=3, image_channels=["flair", "t1", "t1ce", "t2"],
                              mask_channels=["necrotic_core", "edema", "enhancing"], seed=11)
    else:
        sample.write_tumor_coco(folder, images_per_split={"train": 3, "valid": 2, "test": 2}, seed=11)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(cache))
    Cache().mark_as_complete(parse_dataset_handle(HANDLES[dataset]))
    return folder


@pytest.mark.parametrize("dataset", sorted(HANDLES))
def test_kaggle_download_resolves_pinned_version_from_cache_and_links_it(project, offline_env, dataset, monkeypatch):
    cached = fill_cache(Path(offline_env["KAGGLEHUB_CACHE"]), dataset, monkeypatch)
    result = run_stage(project, offline_env, "stages.download", "--dataset", dataset)
    assert result.returncode == 0, result.stderr
    raw = project / "data" / "raw" / dataset
    cached_files = sorted(p.relative_to(cached) for p in cached.rglob("*") if p.is_file())
    raw_files = sorted(p.relative_to(raw) for p in raw.rglob("*") if p.is_file())
    assert raw_files == cached_files and len(raw_files) > 5  # the archive's own layout, untouched
    for relative in raw_files:  # one copy on disk: the same inode as the cache
        assert os.path.samefile(raw / relative, cached / relative)
    assert not list(raw.parent.glob("*.partial-*"))

    result = run_stage(project, offline_env, "stages.preprocess", "--dataset", dataset)
    assert result.returncode == 0, result.stderr
    test = load_split(project / "data" / "slices" / dataset, "test")
    assert test.meta["source"] == "kaggle" and test.meta["source_version"] == HANDLES[dataset]


@pytest.mark.parametrize("dataset", sorted(HANDLES))
def test_kaggle_without_credentials_or_network_fails_in_one_line_and_leaves_nothing(project, offline_env, dataset):
    result = run_stage(project, offline_env, "stages.download", "--dataset", dataset)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: could not download Kaggle dataset " + HANDLES[dataset])
    assert "KAGGLE_USERNAME" in lines[0] and "KAGGLE_KEY" in lines[0] and "~/.kaggle/kaggle.json" in lines[0]
    raw = project / "data" / "raw"
    assert not raw.exists() or not list(raw.iterdir())  # neither the dataset nor a half-written temp folder


def test_unpinned_handle_is_refused(project, offline_env, params_dict):
    params_dict["data"]["source"] = "kaggle"
    params_dict["data"]["tumor_coco"]["kaggle_handle"] = "pkdarabi/brain-tumor-image-dataset-semantic-segmentation"
    (project / "params.yaml").write_text(yaml.safe_dump(params_dict, sort_keys=False))
    result = run_stage(project, offline_env, "stages.download", "--dataset", "tumor_coco")
    assert result.returncode == 1
    assert "expected owner/slug/versions/N" in result.stderr


def run_stage(project: Path, env: dict, *args: str):
    return run_in(project, *args, env=env)
