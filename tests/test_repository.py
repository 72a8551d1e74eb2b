"""Promises the repository makes to users: the README's commands, CI, and dvc.yaml's deps."""

from __future__ import annotations

import ast
import re
from pathlib import Path

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


def imported_stage_modules(module: Path, seen: set[Path] | None = None) -> set[Path]:
    """Files of the `stages` package that `module` imports, transitively (relative to the repo)."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stages"):
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("stages")]
        for name in names:
            base = REPO / Path(*name.split("."))
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file() and candidate.relative_to(REPO) not in seen:
                    seen.add(candidate.relative_to(REPO))
                    imported_stage_modules(candidate, seen)
    return seen


def test_every_stage_depends_on_the_library_code_it_runs():
    # shared plumbing (arg parsing, params, atomic writes) changes no result, so it is not a dep
    plumbing = {Path("stages/cli.py"), Path("stages/config.py"), Path("stages/fileio.py"),
                Path("stages/__init__.py"), Path("stages/datasets/__init__.py")}
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    for name, stage in stages.items():
        module = re.search(r"python -m (stages\.\w+)", stage["cmd"])[1]
        entry = REPO / Path(*module.split(".")).with_suffix(".py")
        deps = [Path(d) for d in stage["deps"]]
        needed = (imported_stage_modules(entry) | {entry.relative_to(REPO)}) - plumbing
        missing = [str(m) for m in needed if not any(m == d or d in m.parents for d in deps)]
        assert not missing, f"dvc.yaml stage {name}: deps miss {missing}"
