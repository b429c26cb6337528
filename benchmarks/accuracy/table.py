"""Markdown table of an accuracy grid (``benchmarks/accuracy/cpu_grid.sh``): one row per method
and granularity, mean test accuracy over seeds with each seed's value, % of the teacher, and a
CSV copy for the record.

    python benchmarks/accuracy/table.py runs/acc [--csv benchmarks/results/accuracy_cpu.csv]
    python benchmarks/accuracy/table.py runs/acc --csv CSV --append   # merge into CSV (grid in parts)
    python benchmarks/accuracy/table.py --from-csv benchmarks/results/accuracy_cpu.csv
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import re
import statistics
from collections import defaultdict

FIELDS = [
    "run",
    "method",
    "granularity",
    "seed",
    "sparsity",
    "validation",
    "test",
    "train_time_s",
    "top_class_share",
]


def load(run_root: str):
    rows = []
    for path in sorted(glob.glob(os.path.join(run_root, "*", "results.json"))):
        with open(path) as f:
            r = json.load(f)
        name = os.path.basename(os.path.dirname(path))
        seed = re.search(r"-s(\d+)$", name)
        rows.append(
            {
                "run": name,
                "method": r.get("method", "?"),
                "granularity": r.get("granularity") or "-",
                "seed": int(seed.group(1)) if seed else r.get("seed"),
                "sparsity": r["best"]["sparsity"],
                "validation": r["best"]["validation"]["accuracy"],
                "test": r["best"]["test"]["accuracy"],
                "train_time_s": r.get("train_time_s"),
                "top_class_share": r["best"]["test"].get("top_class_share"),
            }
        )
    return rows


def read_csv(path: str):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("sparsity", "validation", "test", "train_time_s", "top_class_share"):
            r[k] = float(r[k]) if r.get(k) not in (None, "") else None
        r["seed"] = int(r["seed"]) if r.get("seed") not in (None, "") else None
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_root", nargs="?", help="folder holding teacher/ and METHOD-GRANULARITY-sSEED/ runs")
    ap.add_argument("--csv", help="also write the per-run rows to this CSV")
    ap.add_argument("--append", action="store_true", help="merge into --csv (same run name: replaced)")
    ap.add_argument("--from-csv", help="print the table of a CSV written before (no run folders)")
    args = ap.parse_args(argv)
    if args.from_csv:
        rows = read_csv(args.from_csv)
    elif args.run_root:
        rows = load(args.run_root)
    else:
        ap.error("give a run folder or --from-csv")
    if not rows:
        raise SystemExit(f"no */results.json under {args.run_root}")
    if args.csv and args.append and os.path.exists(args.csv):
        new = {r["run"] for r in rows}
        rows = [r for r in read_csv(args.csv) if r["run"] not in new] + rows
    teacher = [r for r in rows if r["method"] == "dense"]
    t_acc = teacher[0]["test"] if teacher else None
    groups = defaultdict(list)
    for r in rows:
        groups[(r["method"], r["granularity"])].append(r)
    order = {"dense": 0, "spd": 1, "soft-movement": 2, "movement": 3, "magnitude": 4}
    print(
        "| model | granularity | sparsity | test acc, mean (per seed) | % of teacher "
        "| validation acc, mean | time per run |"
    )
    print("|---|---|---:|---|---:|---:|---:|")

    def key(kv):
        (method, gran), _ = kv
        return (gran != "-", gran != "element", gran, order.get(method, 9))

    for (method, gran), rs in sorted(groups.items(), key=key):
        rs = sorted(rs, key=lambda r: r["seed"] or 0)
        mean_t = statistics.mean(r["test"] for r in rs)
        per = ", ".join(f"{r['test']:.4f}" for r in rs)
        pct = f"{100 * mean_t / t_acc:.1f}" if t_acc else "-"
        name = "teacher (dense)" if method == "dense" else method
        ts = [r["train_time_s"] for r in rs if r["train_time_s"]]
        times = statistics.mean(ts) if ts else float("nan")
        print(
            f"| {name} | {gran} | {rs[0]['sparsity']:.2f} | {mean_t:.4f} ({per}) | {pct} | "
            f"{statistics.mean(r['validation'] for r in rs):.4f} | {times:.0f} s |"
        )
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
