"""``spd compare``: a table of the results of several runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List

from ._common import fail

NAME = "compare"
HELP = "tabulate the results of runs (teacher, each method, each granularity)"
DESCRIPTION = (
    "Read RUN/results.json of each run directory and print one row per run: method, granularity, sparsity, "
    "the main metric on validation and test (of the best model), the teacher's test metric and the fraction "
    "of it kept, and the collapse guard's flag (the model answers (nearly) one class on validation: "
    "one_class, near_majority, never_predicted). --group averages runs that differ only in the seed "
    "(mean and count; collapse = how many of them were flagged)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run directories (shell globs such as runs/* work)")
    p.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown", help="table format")
    p.add_argument(
        "--group", action="store_true", help="average runs with the same task/method/granularity/sparsity"
    )
    p.add_argument("--which", choices=("best", "final"), default="best", help="model of each run to report")


def _row(path: str, which: str) -> Dict[str, Any]:
    with open(os.path.join(path, "results.json"), encoding="utf-8") as f:
        r = json.load(f)
    m = r["metric"]
    res = r[which]
    row = {
        "run": os.path.basename(os.path.normpath(path)),
        "task": r.get("task"),
        "method": r.get("method", "?") + ("+kd" if r.get("kd") and r.get("method") != "spd" else ""),
        "granularity": r.get("granularity", "-"),
        "sparsity": round(float(res.get("sparsity", 0.0)), 4),
        "metric": m,
        "validation": res["validation"].get(m),
        "test": res["test"].get(m),
        "teacher_test": (r.get("teacher") or {}).get("test", {}).get(m),
        "seed": r.get("seed"),
        "train_time_s": r.get("train_time_s"),
    }
    row["of_teacher"] = row["test"] / row["teacher_test"] if row["teacher_test"] else None
    check = res["validation"].get("collapse")
    if check is None and which == "best":
        check = r.get("collapse")
    row["collapse"] = collapse_cell(check)
    return row


def collapse_cell(check) -> str:
    """'-' when the guard passed, its reason codes when it flagged, '?' when the run predates it
    (or is a regression)."""
    if not check:
        return "?"
    return "+".join(check.get("reasons") or ["flagged"]) if check.get("flagged") else "-"


def _group(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"], r["granularity"], round(r["sparsity"], 2)), []).append(r)
    out = []
    for key, rs in groups.items():

        def mean(k):
            vals = [r[k] for r in rs if r[k] is not None]
            return sum(vals) / len(vals) if vals else None

        flagged = sum(r["collapse"] not in ("-", "?") for r in rs)
        out.append(
            {
                **rs[0],
                "run": ",".join(r["run"] for r in rs),
                "seed": f"{len(rs)} seeds",
                "collapse": f"{flagged}/{len(rs)} flagged" if flagged else rs[0]["collapse"],
                **{
                    k: mean(k)
                    for k in ("sparsity", "validation", "test", "teacher_test", "of_teacher", "train_time_s")
                },
            }
        )
    return out


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def run(args) -> int:
    rows = []
    for path in args.runs:
        if not os.path.isfile(os.path.join(path, "results.json")):
            print(f"skipping {path}: no results.json")
            continue
        try:
            rows.append(_row(path, args.which))
        except (OSError, ValueError, KeyError) as e:
            return fail(f"{path}/results.json: {e}")
    if not rows:
        return fail("no run with a results.json")
    flagged = [r["run"] for r in rows if r["collapse"] not in ("-", "?")]
    if flagged:
        print(
            f"warning: collapse: {', '.join(flagged)} answer (nearly) one class on validation "
            "(column collapse)",
            file=sys.stderr,
        )
    if args.group:
        rows = _group(rows)
    rows.sort(key=lambda r: (str(r["task"]), r["method"] != "dense", str(r["granularity"]), r["method"]))
    cols = [
        "run",
        "method",
        "granularity",
        "sparsity",
        "metric",
        "validation",
        "test",
        "teacher_test",
        "of_teacher",
        "collapse",
        "seed",
        "train_time_s",
    ]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    elif args.format == "csv":
        print(",".join(cols))
        for r in rows:
            print(",".join(_fmt(r[c]) for c in cols))
    else:
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for r in rows:
            print("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    return 0
