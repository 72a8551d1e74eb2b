"""Run a recipe's stages (download .. report) in a project folder of its own, without DVC, timing
each: for a machine that lacks DVC (the GPU machine) or a run beside the repository's own.

    python benchmarks/run_recipe.py lgg_gpu /tmp/proj data.lgg.archive=/tmp/archive preprocess.seed=7

The recipe's settings and then the `key=value` overrides (values read as YAML) are applied to the
repository's params.yaml and checked as `bts-recipe` checks them; each stage runs as dvc.yaml runs
it (btseg.cli.stage_command), its log in PROJECT/logs/<stage>.log. PROJECT/times.json gets each
stage's seconds and the total, rewritten after every stage, so a run cut short still says how far it
got. Stops at the first stage that fails, with its log's last lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from btseg.cli import stage_command  # noqa: E402
from btseg.config import parse_params  # noqa: E402
from btseg.errors import PipelineError, run_stage  # noqa: E402
from btseg.recipes import apply, read_recipe  # noqa: E402


def stages(params: dict) -> list[tuple[str, dict[str, str]]]:
    """The stages of a single-dataset recipe in dvc.yaml's order, with their matrix items."""
    datasets, models = params["data"]["datasets"], params["train"]["models"]
    if len(datasets) != 1:
        raise PipelineError(f"data.datasets {datasets}: run_recipe.py runs one dataset")
    dataset = datasets[0]
    steps = [("download", {"dataset": dataset}), ("preprocess", {"dataset": dataset})]
    return steps + [(s, {"dataset": dataset, "model": m}) for m in models for s in ("train", "evaluate", "report")]


def main(argv: Sequence[str]) -> None:
    if len(argv) < 2 or argv[0].startswith("-"):
        raise PipelineError("usage: run_recipe.py RECIPE PROJECT [key=value ...]")
    name, project, overrides = argv[0], Path(argv[1]), argv[2:]
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise PipelineError(f"{bad[0]}: overrides are key=value")
    settings = {"recipe": name, **read_recipe(name, REPO / "recipes")["set"],
                **{k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in overrides)}}
    raw = apply(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")), settings, f"recipe {name}")
    parse_params(raw, source=f"params.yaml with recipe {name} and {overrides}")
    (project / "logs").mkdir(parents=True, exist_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "TQDM_DISABLE": "1"}
    times: dict[str, float] = {}
    start = time.time()
    for stage, items in stages(raw):
        label = "-".join([stage, *items.values()])
        began = time.time()
        with (project / "logs" / f"{label}.log").open("w") as log:
            code = subprocess.run(stage_command(stage, REPO, **items), cwd=project, env=env, stdout=log,
                                  stderr=subprocess.STDOUT).returncode
        times[label] = round(time.time() - began, 1)
        times["total"] = round(time.time() - start, 1)
        (project / "times.json").write_text(json.dumps(times, indent=1) + "\n")
        print(f"{label}: exit {code}, {times[label]:.0f} s", flush=True)
        if code:
            tail = (project / "logs" / f"{label}.log").read_text().splitlines()[-5:]
            raise PipelineError(f"{label} failed (exit {code}); {project / 'logs' / f'{label}.log'} ends: "
                                + " | ".join(tail))


if __name__ == "__main__":
    run_stage(main)
