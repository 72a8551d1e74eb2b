"""Preprocess throughput and peak memory on generated full-size BraTS-like data.

    python benchmarks/preprocess_throughput.py --cases 4 12 --workers 1 2

For each case count, writes that many synthetic BraTS 2020 volumes as 155 h5 slices of
240 x 240 x 4 (the real archive's layout and size), then runs the real preprocess stage with
each worker count and reports slices/s and the peak resident memory of any of its processes.
Memory that stays flat as cases grow shows that preprocessing streams instead of holding the
dataset. Results go to stdout as a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from btseg.cli import stage_command

REPO = Path(__file__).resolve().parents[1]


def run(project: Path, stage: str, dataset: str) -> tuple[float, float]:
    """Seconds and peak RSS (MiB, largest single process) of a stage's dvc.yaml command in `project`."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    command = stage_command(stage, REPO, dataset=dataset)
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr}")
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # max over all reaped descendants so far
    return seconds, max(peak, before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[4, 12])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--size", type=int, default=128, help="preprocess.size (output pixels per side)")
    args = parser.parse_args()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source="sample", datasets=["brats2020"])
    print("| cases | slices | workers | seconds | slices/s | peak RSS (MiB) |\n|---|---|---|---|---|---|")
    # ascending case counts: RUSAGE_CHILDREN only grows, so a flat column means no growth with size
    for cases in sorted(args.cases):
        with tempfile.TemporaryDirectory() as folder:
            project = Path(folder)
            params["data"]["sample"]["brats2020"].update(cases=cases, slices_per_case=155, size=240)
            params["preprocess"]["size"] = args.size
            for workers in args.workers:
                params["preprocess"]["workers"] = workers
                (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
                if not (project / "data" / "raw" / "brats2020").exists():
                    run(project, "download", "brats2020")
                seconds, peak = run(project, "preprocess", "brats2020")
                slices = cases * 155
                print(f"| {cases} | {slices} | {workers} | {seconds:.1f} | {slices / seconds:.0f} "
                      f"| {peak:.0f} |", flush=True)


if __name__ == "__main__":
    main()
