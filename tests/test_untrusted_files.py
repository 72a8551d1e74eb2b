"""A torch file from someone else never runs code: every reader refuses a malicious pickle unread.

Each file below, if unpickled by the full unpickler, creates a marker file (its `__reduce__` calls
`open(marker, "w")`); every reader must fail with one line naming the file, and the marker must
never appear. The readers: model files (evaluate, cv_summary, bts-predict, bts-export, the
benchmarks), ensembles, training checkpoints (resume, and the dvclive log that follows it) and
encoder weights; plus a check that no torch.load in the code loads without weights_only=True.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from btseg.errors import PipelineError
from btseg.models import create_model, load_model_file
from btseg.training.checkpoint import matching_checkpoint
from tests.conftest import REPO


class RunsCode:
    """Unpickled unsafely, creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _evil_files(folder: Path, marker: Path) -> dict[str, Path]:
    """Torch files shaped as each kind the pipeline reads, each carrying the code-running object."""
    payload = RunsCode(marker)
    shapes = {
        "bare-object": payload,
        "model-file": {"format_version": 2, "model": "unet", "model_args": {}, "state_dict": {}, "threshold": payload},
        "ensemble": {"format_version": 2, "model": "unet", "model_args": {}, "members": [payload]},
        "checkpoint": {"fingerprint": "x", "epoch": 1, "rng": {"python": payload}},
    }
    files = {}
    for name, contents in shapes.items():
        files[name] = folder / f"{name}.pt"
        torch.save(contents, files[name])
    return files


@pytest.fixture
def evil(tmp_path) -> tuple[dict[str, Path], Path]:
    marker = tmp_path / "code-ran"
    files = _evil_files(tmp_path, marker)
    assert not marker.exists()
    return files, marker


def test_the_payload_runs_code_when_unpickled_unsafely(tmp_path):
    # the test's premise: these files do run code under the full unpickler
    marker = tmp_path / "code-ran"
    files = _evil_files(tmp_path, marker)
    torch.load(files["checkpoint"], weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["bare-object", "model-file", "ensemble", "checkpoint"])
def test_model_file_readers_refuse_without_running_code(evil, kind):
    files, marker = evil
    from btseg.inference.model import load_model  # bts-predict's and bts-export's reader

    for read in (load_model_file, load_model):
        with pytest.raises(PipelineError) as error:
            read(files[kind])
        assert str(error.value).startswith(f"{files[kind]}: ") and "\n" not in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["bare-object", "checkpoint", "model-file"])
def test_resume_ignores_a_malicious_checkpoint_without_running_code(evil, kind, caplog):
    files, marker = evil
    assert matching_checkpoint(files[kind], "x") is None
    assert "not resumable" in caplog.text and "training from scratch" in caplog.text
    assert not marker.exists()


def test_encoder_weights_refuse_without_running_code(evil):
    files, marker = evil
    with pytest.raises(Exception) as error:  # noqa: PT011 - torch's own refusal, reported by train as one line
        create_model("resnet34_unet", in_channels=1, encoder_weights=str(files["bare-object"]))
    assert "weights_only" in str(error.value) or "Weights only" in str(error.value)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    ["btseg.inference.predict", "{file}", "{image}", "--out", "{out}"],
    ["btseg.inference.export", "{file}", "--out", "{out}/model.pt2"],
])
def test_commands_refuse_a_malicious_model_file_in_one_line(evil, tmp_path, command):
    files, marker = evil
    image = tmp_path / "scan.png"
    image.write_bytes(b"")
    (tmp_path / "out").mkdir()
    for kind, path in files.items():
        argv = [part.format(file=path, image=image, out=tmp_path / "out") for part in command]
        result = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, (kind, result.stderr)
        assert f"error: {path}: " in result.stderr and "Traceback" not in result.stderr, kind
        assert not marker.exists(), kind


def _torch_loads(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
            yield node


def test_every_torch_load_in_the_code_is_the_safe_one():
    calls = 0
    for path in sorted([*REPO.glob("btseg/**/*.py"), *REPO.glob("stages/*.py"), *REPO.glob("benchmarks/*.py")]):
        for node in _torch_loads(path):
            calls += 1
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            assert safe, f"{path.relative_to(REPO)}:{node.lineno}: torch.load without weights_only=True"
    assert calls >= 3  # the model file, the checkpoint and the encoder weights are read somewhere
