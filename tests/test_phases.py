"""The library's phases import one way: a module imports only from its own phase and those before it.

The order (../shared/DESIGN.md, with scoring and download made phases of their own) is written once,
in PHASES. Imports are read from the source (ast), so a test can plant an upward import in a copy
of the tree and see the check fail.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

# Each phase: the module paths (below btseg/) it holds, as files or folders. Earlier phases first.
PHASES: list[tuple[str, tuple[str, ...]]] = [
    ("errors and files", ("errors.py", "fileio.py", "__init__.py")),
    ("data", ("data",)),
    ("config", ("config.py",)),
    ("download", ("download.py",)),
    ("preprocessing", ("preprocessing",)),
    ("models", ("models",)),
    ("scoring", ("scoring",)),
    ("decisions", ("decisions",)),
    ("training", ("training",)),
    ("evaluation", ("evaluation",)),
    ("inference", ("inference",)),
    ("commands", ("cli.py", "recipes.py")),
]


def phase_of(module: str) -> int:
    """The phase number of a module, named `btseg.x.y` or by its path below btseg/ (`x/y.py`)."""
    top = module.removesuffix(".py").replace("/", ".").removeprefix("btseg.").split(".")[0]
    for number, (_, members) in enumerate(PHASES):
        if top in members or f"{top}.py" in members:
            return number
    raise KeyError(f"{module}: in no phase of tests/test_phases.py PHASES; add it there")


def upward_imports(package: Path) -> list[str]:
    """Every import in `package` (a btseg folder) of a module from a later phase than the importer's."""
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        own = phase_of(relative)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name == "btseg" or not name.startswith("btseg."):
                    continue
                if phase_of(name) > own:
                    found.append(f"btseg/{relative}:{node.lineno} ({PHASES[own][0]}) imports {name} "
                                 f"({PHASES[phase_of(name)][0]})")
    return found


def test_every_module_belongs_to_a_phase():
    for path in (REPO / "btseg").rglob("*.py"):
        phase_of(path.relative_to(REPO / "btseg").as_posix())


def test_no_module_imports_from_a_later_phase():
    assert upward_imports(REPO / "btseg") == []


def test_a_planted_upward_import_is_found(tmp_path):
    copy = tmp_path / "btseg"
    shutil.copytree(REPO / "btseg", copy, ignore=shutil.ignore_patterns("__pycache__"))
    config = copy / "config.py"
    config.write_text(config.read_text(encoding="utf-8") + "\nfrom btseg.training.losses import LOSSES\n",
                      encoding="utf-8")
    (copy / "decisions" / "choose.py").write_text("import btseg.evaluation.evaluate\n", encoding="utf-8")
    found = upward_imports(copy)
    assert len(found) == 2
    assert found[0].startswith("btseg/config.py:") and "(config) imports btseg.training.losses (training)" in found[0]
    assert "btseg/decisions/choose.py:1 (decisions) imports btseg.evaluation.evaluate (evaluation)" in found[1]


def test_checking_params_loads_no_torch():
    # params validation (every stage's first step, and check_params alone) needs names, not PyTorch
    code = "import sys, btseg.config; print(' '.join(m for m in ('torch', 'dvc') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []
