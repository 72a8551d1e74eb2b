"""`bts-recipe`: named settings for real data, applied in one command as a DVC experiment.

    bts-recipe --list
    bts-recipe lgg_cpu                      # = dvc exp run -S recipe=lgg_cpu -S data.source=kaggle -S ...
    bts-recipe lgg_gpu --queue -S train.epochs=60
    bts-recipe coco_cpu --dry-run           # print the dvc command only

A recipe is recipes/<name>.yaml in the repository: a `description` and the params it `set`s, by
dotted key. Each setting becomes a `dvc exp run -S` override, so `dvc exp show` records every value
that differs from params.yaml (and `recipe` names the recipe), `dvc repro` and further `-S` work
as usual (given after the recipe's, they win), and params.yaml itself is left as it is. The
recipe, with any further `-S`, is checked against params validation before DVC starts.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from btseg.cli import run_stage
from btseg.config import load_raw_params, parse_params
from btseg.errors import PipelineError, one_line

RECIPES = Path("recipes")  # beside params.yaml, in the repository root where DVC runs


def available(folder: Path = RECIPES) -> dict[str, str]:
    """Recipe name -> description."""
    return {path.stem: read_recipe(path.stem, folder)["description"] for path in sorted(folder.glob("*.yaml"))}


def read_recipe(name: str, folder: Path = RECIPES) -> dict:
    path = folder / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in folder.glob("*.yaml"))
        raise PipelineError(f"recipe {name!r}: no {path}; available: {names}")
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise PipelineError(f"{path}: not valid YAML ({one_line(error, 160)})") from None
    if not isinstance(recipe, dict) or set(recipe) != {"description", "set"} or not isinstance(recipe["set"], dict):
        raise PipelineError(f"{path}: expected the keys `description` and `set` (params by dotted key)")
    return recipe


def apply(raw: dict, settings: dict, source: str) -> dict:
    """params (as read from params.yaml) with the dotted-key `settings` applied; unknown keys refused."""
    result = copy.deepcopy(raw)
    for key, value in settings.items():
        *parents, leaf = key.split(".")
        node = result
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise PipelineError(f"{source}: {key}: no such section in params.yaml")
            node = node[part]
        if leaf not in node:
            raise PipelineError(f"{source}: {key}: no such key in params.yaml")
        node[leaf] = value
    return result


def command(name: str, params: Path = Path("params.yaml"), folder: Path = RECIPES, overrides: Sequence[str] = (),
            extra: Sequence[str] = ()) -> list[str]:
    """The `dvc exp run` command line of recipe `name`, the further `-S` `overrides` after its own (so they
    win), then `extra`; the recipe and each experiment the overrides make are checked first."""
    recipe = read_recipe(name, folder)
    source = str(folder / f"{name}.yaml")
    raw = apply(load_raw_params(params), {"recipe": name, **recipe["set"]}, source)
    parse_params(raw, source=f"{params} with {source}")
    for settings in _set_params(overrides):
        if settings:
            parse_params(apply(raw, settings, "bts-recipe -S"), source=f"{params} with {source} and -S")
    sets = [f"recipe={name}"] + [f"{key}={_value(value)}" for key, value in recipe["set"].items()] + list(overrides)
    return ["dvc", "exp", "run", *(part for o in sets for part in ("-S", o)), *extra]


def _set_params(overrides: Sequence[str]) -> list[dict]:
    """The experiments `-S` overrides stand for (a sweep `train.epochs=5,10` is two), each {dotted key: value},
    read by DVC's own parser (Hydra's grammar: `[lgg]` a list, `1e-3` a float). Deletions (`~key`) and
    keys of other params files (`file.yaml:key=...`) are left to DVC and check_params."""
    mine = [o for o in overrides if ":" not in o.partition("=")[0]]
    if not mine:
        return []
    from dvc.exceptions import InvalidArgumentError  # noqa: PLC0415 - only overrides need DVC
    from dvc.utils.hydra import get_hydra_sweeps, to_hydra_overrides  # noqa: PLC0415
    from hydra.core.override_parser.types import OverrideType  # noqa: PLC0415
    from hydra.errors import HydraException  # noqa: PLC0415

    try:
        return [{o.key_or_group: o.value() for o in to_hydra_overrides(experiment["params.yaml"])
                 if o.type != OverrideType.DEL}
                for experiment in get_hydra_sweeps({"params.yaml": mine})]
    except (HydraException, InvalidArgumentError) as error:
        raise PipelineError(f"-S {' '.join(mine)}: not an override DVC can read ({one_line(error, 160)})") from None


def _value(value) -> str:
    """A value as `-S key=value` reads it (YAML): lists in brackets, booleans as true/false."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="bts-recipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="recipe name (recipes/<name>.yaml)")
    parser.add_argument("--list", action="store_true", help="list the recipes")
    parser.add_argument("--dry-run", action="store_true", help="print the dvc command, run nothing")
    parser.add_argument("--queue", action="store_true", help="queue the experiment (dvc exp run --queue)")
    parser.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                        help="a further override after the recipe's (wins over it)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    if args.list or not args.name:
        for name, description in available().items():
            print(f"{name:<12} {description}")
        return
    dvc = command(args.name, args.params, overrides=args.set_param, extra=["--queue"] if args.queue else [])
    print(" ".join(dvc), flush=True)
    if not args.dry_run:
        if not args.queue:
            check_workspace_free(args.params.parent)
        code = subprocess.run([sys.executable, "-m", *dvc]).returncode
        if code:
            raise PipelineError(f"dvc exp run of recipe {args.name} failed with exit code {code}; see above")


def check_workspace_free(root: Path) -> None:
    """Refuse to start an experiment while DVC runs one in this workspace: a second `dvc exp run` would
    write its values into params.yaml and then fail on DVC's stage locks, leaving params.yaml saying
    one experiment and the outputs another. DVC's own locks tell: the repository lock (held between
    stages) and the stage locks in .dvc/tmp/rwlock (held while a stage runs)."""
    tmp = root / ".dvc" / "tmp"
    busy = _stage_lock_holder(tmp / "rwlock") or _repository_lock_holder(tmp / "lock")
    if busy:
        raise PipelineError(f"another experiment is running in this workspace ({busy}); use --queue, "
                            "or wait for it to end")


def _stage_lock_holder(path: Path) -> str | None:
    """The live process holding one of DVC's stage locks (.dvc/tmp/rwlock: JSON of read and write locks)."""
    try:
        locks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    holders = [*locks.get("write", {}).values(), *(h for hs in locks.get("read", {}).values() for h in hs)]
    for holder in holders:
        pid = holder.get("pid") if isinstance(holder, dict) else None
        if isinstance(pid, int) and _alive(pid):
            return f"PID {pid}: {holder.get('cmd', 'dvc')}"
    return None


def _repository_lock_holder(path: Path) -> str | None:
    """'DVC' when another process holds DVC's repository lock (.dvc/tmp/lock, an flock'ed file)."""
    if not path.is_file():
        return None
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return "DVC holds its repository lock"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def console() -> None:
    run_stage(main, sys.argv[1:])


if __name__ == "__main__":
    console()
