"""Which test slices to show in the failure analysis: worst and best cases, missed tumors, false alarms.

Pure table logic on the evaluate stage's per_slice / per_case tables (one target's rows); each
function returns per-slice rows (their index is the slice's row in the test arrays) with a
`title` column for the panel: Dice and tumor size.
"""

from __future__ import annotations

import pandas as pd


def _slice_title(row) -> str:
    return (f"slice {row.slice_index}: Dice {row.dice:.2f}\n"
            f"tumor {row.truth_pixels} px, predicted {row.predicted_pixels} px")


def _case_slices(per_case: pd.DataFrame, per_slice: pd.DataFrame, order: list[str],
                 slice_key: list[str]) -> pd.DataFrame:
    """For each case in `order`, its slice ranked first by `slice_key` (descending), titled with the case's numbers."""
    rows = []
    for case_id in order:
        case = per_case.loc[per_case.case_id == case_id].iloc[0]
        candidates = per_slice[per_slice.case_id == case_id]
        row = candidates.sort_values(slice_key, ascending=False, kind="stable").iloc[[0]].copy()
        row["title"] = (f"case {case_id}\ncase Dice {case.dice:.2f}, tumor {case.tp + case.fn} px\n"
                        + _slice_title(row.iloc[0]))
        rows.append(row)
    return pd.concat(rows) if rows else per_slice.iloc[:0].assign(title=[])


def worst_cases(per_case: pd.DataFrame, per_slice: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k cases with the lowest per-case Dice (tumor in truth or prediction; ties: larger tumor first),
    each shown by its slice with the most wrong pixels (false positives + false negatives)."""
    scored = per_case[(per_case.tp + per_case.fn + per_case.fp) > 0].assign(tumor=lambda t: t.tp + t.fn)
    order = scored.sort_values(["dice", "tumor"], ascending=[True, False], kind="stable").case_id.head(k).tolist()
    return _case_slices(per_case, per_slice.assign(errors=per_slice.fp + per_slice.fn), order,
                        ["errors", "truth_pixels"])


def best_cases(per_case: pd.DataFrame, per_slice: pd.DataFrame, k: int,
               exclude: set[str] = frozenset()) -> pd.DataFrame:
    """The k cases with tumor and the highest per-case Dice, each shown by its slice with the most tumor;
    cases in `exclude` (those already shown as the worst) are left out, so no case appears twice."""
    scored = per_case[((per_case.tp + per_case.fn) > 0)
                      & ~per_case.case_id.isin(exclude)].assign(tumor=lambda t: t.tp + t.fn)
    order = scored.sort_values(["dice", "tumor"], ascending=[False, False], kind="stable").case_id.head(k).tolist()
    return _case_slices(per_case, per_slice, order, ["truth_pixels"])


def missed_tumors(per_slice: pd.DataFrame, k: int) -> pd.DataFrame:
    """Up to k slices with tumor where nothing was predicted, largest tumor first."""
    missed = per_slice[(per_slice.truth_pixels > 0) & (per_slice.predicted_pixels == 0)]
    rows = missed.sort_values("truth_pixels", ascending=False, kind="stable").head(k).copy()
    rows["title"] = [f"case {r.case_id}\n" + _slice_title(r) for r in rows.itertuples()]
    return rows


def false_alarms(per_slice: pd.DataFrame, k: int) -> pd.DataFrame:
    """Up to k tumor-free slices where tumor was predicted, largest prediction first."""
    alarms = per_slice[(per_slice.truth_pixels == 0) & (per_slice.predicted_pixels > 0)]
    rows = alarms.sort_values("predicted_pixels", ascending=False, kind="stable").head(k).copy()
    rows["title"] = [f"case {r.case_id}\n" + _slice_title(r) for r in rows.itertuples()]
    return rows
