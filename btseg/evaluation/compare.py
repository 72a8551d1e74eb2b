"""`bts-compare`: is the new run really better? A paired comparison on the same test patients.

    bts-compare reports/lgg/unet/evaluation/per_case.csv@main reports/lgg/unet/evaluation/per_case.csv
    bts-compare old/per_case.csv new/per_case.csv --metric dice --target whole_tumor

Each run is a per_case.csv written by the evaluate stage: a file, or `PATH@REV` to read it from
any git revision or DVC experiment (`dvc exp show` names them) through DVC's cache. Prints the mean
per-case difference with its 95% bootstrap interval over patients and how many patients got
better or worse; an interval that holds 0 means the runs cannot be told apart on these patients.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Sequence

import pandas as pd

from btseg.errors import PipelineError, one_line, run_stage
from btseg.scoring.statistics import paired_difference


def read_per_case(spec: str) -> pd.DataFrame:
    """A per_case.csv from `PATH` or `PATH@REV` (a git revision or DVC experiment name)."""
    path, _, rev = spec.partition("@")
    try:
        if rev:
            import dvc.api  # noqa: PLC0415 - DVC's API is slow to import and only revisions need it

            with dvc.api.open(path, rev=rev, encoding="utf-8") as handle:
                text = handle.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        table = pd.read_csv(io.StringIO(text), dtype={"case_id": str})
    except Exception as error:  # missing file, unknown revision, not a CSV: all mean "cannot read this run"
        raise PipelineError(f"{spec}: cannot read a per_case.csv ({one_line(error, 160)})") from None
    missing = {"case_id", "target"} - set(table.columns)
    if missing:
        raise PipelineError(f"{spec}: not an evaluate stage per_case.csv (no {sorted(missing)} column)")
    return table


def compare(base: pd.DataFrame, new: pd.DataFrame, metric: str, target: str | None) -> dict:
    target = target or str(base.target.iloc[0])
    series = []
    for name, table in (("base", base), ("new", new)):
        if metric not in table.columns:
            raise PipelineError(f"--metric {metric}: not a column of the {name} run's per_case.csv")
        rows = table[table.target == target]
        if rows.empty:
            raise PipelineError(f"--target {target}: the {name} run has targets {sorted(table.target.unique())}")
        series.append(rows.set_index("case_id")[metric])
    try:
        return {"metric": metric, "target": target, **paired_difference(*series)}
    except ValueError as error:
        raise PipelineError(str(error)) from None


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="bts-compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="per_case.csv of the reference run (PATH or PATH@REV)")
    parser.add_argument("new", help="per_case.csv of the run to judge (PATH or PATH@REV)")
    parser.add_argument("--metric", default="dice", help="a per-case column: dice, iou, precision, recall, hd95_px, ...")
    parser.add_argument("--target", help="target to compare (default: the first, whole tumor / WT)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = compare(read_per_case(args.base), read_per_case(args.new), args.metric, args.target)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    verdict = ("the runs cannot be told apart on these patients" if result["ci_low"] <= 0 <= result["ci_high"]
               else "new is better" if result["ci_low"] > 0 else "new is worse")
    print(f"{result['target']} per-case {result['metric']} on {result['cases']} paired test cases: "
          f"base {result['base_mean']:.4f}, new {result['new_mean']:.4f}\n"
          f"difference {result['mean_difference']:+.4f} (95% CI {result['ci_low']:+.4f} to {result['ci_high']:+.4f}); "
          f"{result['better']} better, {result['worse']} worse, {result['same']} unchanged: {verdict}")


def console() -> None:
    run_stage(main, sys.argv[1:])


if __name__ == "__main__":
    console()
