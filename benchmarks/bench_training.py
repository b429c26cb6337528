"""Training throughput on the embedded model and data: each method with and without each
throughput change, side by side in one run.

Every case is a real ``spd`` command (in this process) on the embedded MiniLM-L6 and Rotten
Tomatoes data (batch 32, max length 64, 2 threads, --train-samples examples, so one epoch is
train-samples / 32 optimizer steps); the per-step times come from its ``metrics.jsonl``
(logged every step), skipping the first --warmup steps of each phase. Phases timed:

    finetune          dense fine-tuning                      (spd finetune)
    magnitude-final   magnitude + KD at the final mask        (spd prune --method magnitude --kd, stage 3)
    movement          movement + KD pruning phase             (stage 2)
    soft-movement     soft movement + KD pruning phase        (stage 2)
    spd-stage2        SPD pruning + grafting phase
    spd-stage3        SPD fixed-mask distillation

Variants: ``new`` (the defaults), ``today`` (every change switched off: random batches, the
teacher run live, eager attention, dense masked products while scores train, every parameter
trained) and, for the SPD and soft-movement runs, each change switched off alone.

    python benchmarks/bench_training.py                 # the README table (~15 min on 2 cores)
    python benchmarks/bench_training.py --quick         # a smoke run

Writes benchmarks/results/training_cpu.csv (the profiler's long-format CSV: op = case, impl =
variant, p20/p50/p80 of the per-step time, then the columns of EXTRA) and prints a markdown
table with the machine line and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TODAY = [
    "--no-group-by-length",
    "--teacher-cache",
    "none",
    "--attention",
    "eager",
    "--sparse-kernels",
    "fixed-only",
    "--trainable",
    "all",
]
TOGGLES = {
    "no-grouping": ["--no-group-by-length"],
    "no-cache": ["--teacher-cache", "none"],
    "eager": ["--attention", "eager"],
    "sparse-fixed-only": ["--sparse-kernels", "fixed-only"],
    "train-all": ["--trainable", "all"],
}
# run name -> (command args, {phase name in metrics.jsonl: case name})
RUNS = {
    "finetune": (["finetune", "--epochs", "1"], {"finetune": "finetune"}),
    "magnitude": (["prune", "--method", "magnitude", "--kd"], {"sparse-finetune": "magnitude-final"}),
    "movement": (["prune", "--method", "movement", "--kd", "--final-epochs", "0"], {"prune": "movement"}),
    "soft-movement": (
        ["prune", "--method", "soft-movement", "--kd", "--final-epochs", "0"],
        {"prune": "soft-movement"},
    ),
    "spd": (["prune", "--method", "spd"], {"spd": "spd-stage2", "distill": "spd-stage3"}),
}
TOGGLED_RUNS = ("spd", "soft-movement")
# columns after the profiler's schema (spd_kernels.profiling.CSV_COLUMNS); p20/p50/p80_ms are
# the per-step times of the phase, s_per_step their mean (what the README table shows)
EXTRA = ("steps", "s_per_step", "steps_per_s", "tokens_per_s", "padding", "cache_hits", "speedup_vs_today")
SHAPE = "all-MiniLM-L6-v2, batch 32, max length 64"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--train-samples", type=int, default=512, help="training examples (one epoch)")
    p.add_argument("--warmup", type=int, default=2, help="steps skipped at the start of each phase")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma list of {list(RUNS)}")
    p.add_argument("--no-toggles", action="store_true", help="only the new and today variants")
    p.add_argument("--quick", action="store_true", help="smoke run: 160 examples, finetune + spd only")
    p.add_argument(
        "--workdir", default=None, help="where runs and the teacher cache go (default: a temp dir)"
    )
    p.add_argument("--csv", type=Path, default=ROOT / "benchmarks" / "results" / "training_cpu.csv")
    return p.parse_args(argv)


def phase_stats(metrics_path: str, phase: str, warmup: int) -> dict:
    """Per-step time percentiles (ms) and mean seconds per step after ``warmup`` steps, real
    tokens/s, mean padding, cache hits."""
    from spd_kernels.profiling import percentiles

    recs = [json.loads(x) for x in open(metrics_path, encoding="utf-8")]
    steps = [r for r in recs if r.get("phase") == phase and "loss" in r]
    if len(steps) <= warmup + 1:
        raise ValueError(f"phase {phase}: {len(steps)} logged steps, need more than warmup + 1")
    a, b = steps[warmup], steps[-1]
    n = b["step"] - a["step"]
    dt = b["time_s"] - a["time_s"]
    tokens = sum(r.get("tokens", 0) for r in steps[warmup + 1 :])
    per_step = [
        (q["time_s"] - p["time_s"]) / (q["step"] - p["step"])
        for p, q in zip(steps[warmup:], steps[warmup + 1 :])
        if q["step"] > p["step"]
    ]
    p20, p50, p80 = percentiles(per_step)
    return {
        "p20_ms": p20 * 1e3,
        "p50_ms": p50 * 1e3,
        "p80_ms": p80 * 1e3,
        "samples": len(per_step),
        "steps": n,
        "s_per_step": dt / n,
        "steps_per_s": n / dt,
        "tokens_per_s": tokens / dt,
        "padding": statistics.mean(r.get("padding", 0.0) for r in steps),
        "cache_hits": sum(r.get("teacher_cache_hits", 0) for r in steps),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT / "python"))
    sys.path.insert(0, str(ROOT))
    from spd.cli import main as spd_main
    from spd_kernels.profiling import base_row, command_line, environment, markdown_report, write_csv

    runs = ["finetune", "spd"] if args.quick else [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; choose from {list(RUNS)}")
    n_train = 160 if args.quick else args.train_samples
    work = args.workdir or tempfile.mkdtemp(prefix="spd-bench-training-")
    cache = os.path.join(work, "teacher-cache")
    data = [
        "--max-train-samples", str(n_train), "--max-eval-samples", "64", "--max-length", "64",
        "--batch-size", "32", "--threads", str(args.threads), "--seed", "1", "--log-every", "1",
        "--no-progress", "--resume", "never",
    ]  # fmt: skip
    teacher = os.path.join(work, "teacher")
    if spd_main(["finetune", "--epochs", "1", "--output-dir", teacher, *data]) != 0:
        raise SystemExit("teacher fine-tuning failed")
    teacher = os.path.join(teacher, "best")
    env = environment("cpu", args.threads)
    rows = []
    for run in runs:
        cmd, phases = RUNS[run]
        variants = {"new": [], "today": TODAY}
        if run in TOGGLED_RUNS and not args.no_toggles:
            variants.update(TOGGLES)
        for variant, flags in variants.items():
            if run == "finetune" and variant not in ("new", "today"):
                continue
            out = os.path.join(work, f"{run}-{variant}")
            extra = (
                []
                if cmd[0] == "finetune"
                else ["--teacher", teacher, "--sparsity", "0.9", "--update-every", "2"]
            )
            if "--teacher-cache" not in flags:
                flags = [*flags, "--teacher-cache", cache]
            full = [*cmd, *extra, "--output-dir", out, *data, *flags]
            t0 = time.time()
            if spd_main(full) != 0:
                raise SystemExit(f"run failed: spd {' '.join(full)}")
            wall = time.time() - t0
            for phase, case in phases.items():
                st = phase_stats(os.path.join(out, "metrics.jsonl"), phase, args.warmup)
                cmd_row = "spd " + " ".join(full).replace(work, "$WORK")
                rows.append(
                    base_row(
                        env, cmd_row, op=case, impl=variant, dtype="float32", shape=SHAPE, status="ok",
                        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), **st,
                    )
                )  # fmt: skip
                print(
                    f"{case:16s} {variant:18s} {st['s_per_step']:.3f} s/step (run {wall:.0f} s)", flush=True
                )
    today = {r["op"]: r["s_per_step"] for r in rows if r["impl"] == "today"}
    for r in rows:
        r["speedup_vs_today"] = today[r["op"]] / r["s_per_step"] if r["op"] in today else ""
    write_csv(rows, args.csv, extra=EXTRA)
    legend = "s/step: mean over the phase's steps after the warm-up (p20/p50/p80 per step in the CSV)."
    command = command_line("benchmarks/bench_training.py", argv)
    print(markdown_report(rows, command, table=markdown(rows), legend=legend))
    return 0


def markdown(rows) -> str:
    lines = [
        "| case | variant | s/step | steps/s | tokens/s | padding | cache hits | × today |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        x = r["speedup_vs_today"]
        lines.append(
            f"| {r['op']} | {r['impl']} | {float(r['s_per_step']):.3f} | {float(r['steps_per_s']):.2f} | "
            f"{float(r['tokens_per_s']):.0f} | {float(r['padding']):.1%} | {r['cache_hits']} | "
            + (f"{float(x):.2f} |" if x != "" else "- |")
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
