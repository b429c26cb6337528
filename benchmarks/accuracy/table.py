"""Markdown table of an accuracy grid (``benchmarks/accuracy/cpu_grid.sh``): one row per method
and granularity, mean test accuracy over seeds with each seed's value, % of the teacher, and a
CSV copy for the record.

    python benchmarks/accuracy/table.py runs/acc [--csv benchmarks/results/accuracy_cpu.csv]
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
            }
        )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_root", help="folder holding teacher/ and METHOD-GRANULARITY-sSEED/ runs")
    ap.add_argument("--csv", help="also write the per-run rows to this CSV")
    args = ap.parse_args(argv)
    rows = load(args.run_root)
    if not rows:
        raise SystemExit(f"no */results.json under {args.run_root}")
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
        times = statistics.mean(r["train_time_s"] for r in rs if r["train_time_s"])
        print(
            f"| {name} | {gran} | {rs[0]['sparsity']:.2f} | {mean_t:.4f} ({per}) | {pct} | "
            f"{statistics.mean(r['validation'] for r in rs):.4f} | {times:.0f} s |"
        )
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
