"""Atomic outputs: nothing half-written is left when writing or the final rename fails."""

from __future__ import annotations

import pytest

from btseg.fileio import atomic_file


def test_a_folder_in_the_way_fails_the_rename_and_leaves_no_partial(tmp_path):
    (tmp_path / "mask.png").mkdir()
    with pytest.raises(OSError):
        with atomic_file(tmp_path / "mask.png") as partial:
            partial.write_bytes(b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png"] and (tmp_path / "mask.png").is_dir()


def test_a_failure_while_writing_leaves_neither_file(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "out.json") as partial:
            partial.write_text("{")
            raise RuntimeError("stopped")
    assert list(tmp_path.iterdir()) == []
