"""Promises the repository makes to users: the README's commands, CI, and dvc.yaml's deps."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO


def quick_start_commands() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_readme_quick_start_is_two_commands_and_ci_runs_the_test_one():
    commands = quick_start_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands), commands
    run, test = commands
    assert run.endswith("dvc repro") and "torch==2.13.0" in run
    assert test.endswith("pytest")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert test in ci.splitlines()
    assert ci.index("pip install --quiet torch==2.13.0") < ci.index(test)


# shared plumbing (arg parsing, params, errors, atomic writes, the dataset registry) changes no result,
# so it is not a dep; imports are not followed through it
PLUMBING = {Path("btseg/cli.py"), Path("btseg/config.py"), Path("btseg/fileio.py"), Path("btseg/errors.py"),
            Path("btseg/data/registry.py")}


def imported_names(module: Path) -> set[str]:
    """btseg modules that `module` imports: import statements anywhere in it, and
    importlib.import_module("btseg....") calls with a literal name."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("btseg"):
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("btseg")}
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("btseg")):
            names.add(node.args[0].value)
    return names


def imported_library_files(module: Path, seen: set[Path] | None = None) -> set[Path]:
    """Files of the btseg package that `module` imports, transitively (relative to the repo)."""
    seen = set() if seen is None else seen
    for name in imported_names(module):
        base = REPO / Path(*name.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            relative = candidate.relative_to(REPO)
            if candidate.is_file() and relative not in seen:
                seen.add(relative)
                if relative not in PLUMBING:
                    imported_library_files(candidate, seen)
    return seen


def stage_scripts() -> dict[str, Path]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {name: REPO / re.search(r"python (stages/\w+\.py)", stage["cmd"])[1] for name, stage in stages.items()}


def test_every_stage_depends_on_the_library_code_it_runs():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    for name, script in stage_scripts().items():
        deps = [Path(d) for d in stages[name]["deps"]]
        needed = {p for p in imported_library_files(script) | {script.relative_to(REPO)}
                  if p not in PLUMBING and p.name != "__init__.py" or p.parent == Path("btseg/models")}
        missing = [str(m) for m in needed if not any(m == d or d in m.parents for d in deps)]
        assert not missing, f"dvc.yaml stage {name}: deps miss {missing}"


def test_the_dependency_check_follows_imports_made_by_name(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import importlib\nreader = importlib.import_module('btseg.data.lgg')\n"
                      "def f():\n    from btseg.evaluation import failures\n")
    assert imported_names(module) == {"btseg.data.lgg", "btseg.evaluation", "btseg.evaluation.failures"}


def test_stage_scripts_are_thin_entry_points():
    """Each stage parses its arguments, loads params and calls one library function: no modelling,
    metric or file-format code (only btseg's cli, config, errors, fileio and one library module)."""
    for name, script in stage_scripts().items():
        source = script.read_text(encoding="utf-8")
        assert len(source.splitlines()) <= 60, f"{script.name}: {len(source.splitlines())} lines"
        library = {n for n in imported_names(script)
                   if not n.startswith(("btseg.cli", "btseg.config", "btseg.errors", "btseg.fileio"))}
        modules = {n for n in library if (REPO / Path(*n.split("."))).with_suffix(".py").is_file()}
        assert len(modules) <= 1, f"{script.name} imports {sorted(library)}"
        assert not re.search(r"\b(torch|numpy|pandas|cv2|nibabel|h5py)\b", source), f"{script.name} holds library code"


def test_train_code_fingerprint_hashes_exactly_the_train_stage_code_deps(tmp_path):
    from btseg.training.run import code_files

    deps = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["train"]["deps"]
    listed = set()
    for dep in (REPO / d for d in deps if "$" not in d):
        listed |= set(dep.rglob("*.py")) if dep.is_dir() else {dep}
    files = code_files()
    assert set(files) == listed and len(files) == len(set(files))
    # what picks the best epoch and the threshold is code the checkpoint depends on
    for needed in ("btseg/scoring/metrics.py", "btseg/preprocessing/slices.py", "btseg/training/loop.py",
                   "btseg/models/unet.py", "stages/train.py"):
        assert REPO / needed in files, needed
    # an edit to any listed file changes the fingerprint; a file outside the list does not count
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "train.py").write_text("a = 1\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "x.py").write_text("b = 2\n")
    (tmp_path / "other.py").write_text("c = 3\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {"deps": [
        "stages/train.py", "lib", "data/slices/${item.dataset}"]}}}))
    assert code_files(tmp_path / "dvc.yaml") == [tmp_path / "stages" / "train.py", tmp_path / "lib" / "x.py"]


def library_modules() -> list[str]:
    return sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                  for p in (REPO / "btseg").rglob("*.py"))


@pytest.mark.slow
def test_every_library_module_imports_on_its_own_in_a_fresh_interpreter():
    """No import order hides a cycle: each module is the first one a new interpreter imports."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    def load(module: str) -> tuple[str, str]:
        result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
        return module, result.stderr.strip().splitlines()[-1] if result.returncode else ""

    modules = library_modules()
    assert len(modules) > 30
    with ThreadPoolExecutor(4) as pool:
        failures = {module: error for module, error in pool.map(load, modules) if error}
    assert not failures


def test_no_library_import_is_deferred_into_a_function():
    """Imports inside functions are how a cycle gets dodged: our own modules are imported at the top."""
    deferred = []
    for path in (REPO / "btseg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("btseg") or \
                            isinstance(inner, ast.Import) and any(a.name.startswith("btseg") for a in inner.names):
                        deferred.append(f"{path.relative_to(REPO)}:{inner.lineno}")
    assert not deferred


def test_ruff_finds_nothing():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "ruff", "check", "btseg", "stages", "tests", "benchmarks"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]


def test_installs_use_exact_versions_of_every_dependency():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    pins = {line.split("==")[0].lower().replace("_", "-")
            for line in (REPO / "constraints.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    names = {re.match(r"[A-Za-z0-9_.-]+", d)[0].lower().replace("_", "-") for d in wanted} - {"torch"}
    assert names <= pins, sorted(names - pins)
    assert all("-c constraints.txt" in command for command in quick_start_commands())
