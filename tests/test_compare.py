"""bts-compare: paired per-case comparison of two evaluate runs, from files or git/DVC revisions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest


def per_case(path: Path, dice: dict[str, float], target: str = "whole_tumor") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"case_id": list(dice), "dice": list(dice.values()), "target": target}).to_csv(path, index=False)
    return path


def compare(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "btseg.evaluation.compare", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_two_files_give_the_paired_difference(tmp_path):
    base = per_case(tmp_path / "a.csv", {"TCGA_1": 0.5, "TCGA_2": 0.6, "TCGA_3": 0.9})
    new = per_case(tmp_path / "b.csv", {"TCGA_3": 0.9, "TCGA_1": 0.8, "TCGA_2": 0.7})
    result = compare(tmp_path, str(base), str(new), "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["mean_difference"] == pytest.approx(0.4 / 3) and (out["better"], out["same"]) == (2, 1)
    text = compare(tmp_path, str(base), str(new)).stdout
    assert "3 paired test cases" in text and "+0.1333" in text


@pytest.mark.slow
def test_a_revision_is_read_through_dvc(tmp_path):
    def sh(*args):
        subprocess.run(args, cwd=tmp_path, check=True, capture_output=True)
    sh("git", "init", "-q")
    sh(sys.executable, "-m", "dvc", "init", "-q")
    per_case(tmp_path / "eval/per_case.csv", {"a": 0.2, "b": 0.4})
    sh("git", "add", "-A")
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    per_case(tmp_path / "eval/per_case.csv", {"a": 0.6, "b": 0.4})
    result = compare(tmp_path, "eval/per_case.csv@HEAD", "eval/per_case.csv", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["mean_difference"] == pytest.approx(0.2)


def test_different_patients_or_a_bad_file_fail_in_one_line(tmp_path):
    base = per_case(tmp_path / "a.csv", {"a": 0.5})
    other = per_case(tmp_path / "b.csv", {"z": 0.5})
    result = compare(tmp_path, str(base), str(other))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "same test patients" in result.stderr
    result = compare(tmp_path, str(base), str(tmp_path / "missing.csv"))
    assert result.returncode == 1 and "missing.csv: cannot read a per_case.csv" in result.stderr


def test_nan_in_the_metric_fails_naming_the_file_and_cases(tmp_path):
    base = per_case(tmp_path / "a.csv", {"TCGA_1": 0.5, "TCGA_2": 0.6, "TCGA_3": 0.9})
    new = per_case(tmp_path / "b.csv", {"TCGA_1": 0.5, "TCGA_2": float("nan"), "TCGA_3": 0.9})
    result = compare(tmp_path, str(base), str(new))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "b.csv" in result.stderr and "TCGA_2" in result.stderr and "TCGA_1" not in result.stderr
    assert result.stdout == ""


def test_a_header_only_file_fails_in_one_line(tmp_path):
    base = per_case(tmp_path / "a.csv", {"a": 0.5})
    empty = tmp_path / "empty.csv"
    empty.write_text("case_id,dice,target\n")
    for args in ((str(base), str(empty)), (str(empty), str(base))):
        result = compare(tmp_path, *args)
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "empty.csv" in result.stderr and "Traceback" not in result.stderr


def distances(path: Path, column: str, values: dict[str, float]) -> Path:
    table = pd.DataFrame({"case_id": list(values), column: list(values.values()), "target": "whole_tumor"})
    table.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("column", ["hd95_px", "fp", "fn"])
def test_for_a_distance_or_error_count_lower_is_better(tmp_path, column):
    base = distances(tmp_path / "a.csv", column, {"a": 2.0, "b": 3.0, "c": 4.0, "d": 5.0})
    new = distances(tmp_path / "b.csv", column, {"a": 20.0, "b": 30.0, "c": 40.0, "d": 5.0})  # new lies far off
    out = json.loads(compare(tmp_path, str(base), str(new), "--metric", column, "--json").stdout)
    assert (out["better"], out["worse"], out["same"]) == (0, 3, 1) and out["better_when"] == "lower"
    text = compare(tmp_path, str(base), str(new), "--metric", column).stdout
    assert text.strip().endswith("new is worse") and "lower is better" in text
    text = compare(tmp_path, str(new), str(base), "--metric", column).stdout
    assert text.strip().endswith("new is better") and "3 better, 0 worse" in text


def test_a_size_error_is_better_nearer_zero_whatever_its_sign(tmp_path):
    base = distances(tmp_path / "a.csv", "volume_difference_px", {"a": -100, "b": 80, "c": -90, "d": 50})
    new = distances(tmp_path / "b.csv", "volume_difference_px", {"a": 10, "b": -5, "c": 8, "d": -50})
    out = json.loads(compare(tmp_path, str(base), str(new), "--metric", "volume_difference_px", "--json").stdout)
    assert (out["better"], out["worse"], out["same"]) == (3, 0, 1)
    text = compare(tmp_path, str(base), str(new), "--metric", "volume_difference_px").stdout
    assert "new is better" in text and "nearer 0" in text


def test_dice_is_still_better_higher(tmp_path):
    base = per_case(tmp_path / "a.csv", {"a": 0.5, "b": 0.6, "c": 0.7})
    new = per_case(tmp_path / "b.csv", {"a": 0.8, "b": 0.9, "c": 0.95})
    text = compare(tmp_path, str(base), str(new)).stdout
    assert text.strip().endswith("new is better") and "higher is better" in text and "3 better" in text


def test_a_column_without_a_better_direction_is_refused(tmp_path):
    base = distances(tmp_path / "a.csv", "slices", {"a": 10, "b": 12})
    new = distances(tmp_path / "b.csv", "slices", {"a": 10, "b": 14})
    result = compare(tmp_path, str(base), str(new), "--metric", "slices")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "--metric slices" in result.stderr and "hd95_px" in result.stderr
