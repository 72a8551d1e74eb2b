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
