"""The ``cpu`` backend's three products against dense ``torch`` and ``torch.sparse``, side by side.

For each shape (in -> out features), layout and sparsity it times, on the same random
block-masked weight, through the profiler's harness (``spd_kernels.profiling``):

==============  ============================  ==================  ============================
op              cpu backend (spd_kernels)     dense_eager         torch_sparse
==============  ============================  ==================  ============================
forward         ``cpu_dds_t``  y = x·Wᵀ       ``F.linear(x, W)``  CSR/BSR ``F.linear``
input_grad      ``cpu_dds``    dx = dy·W      ``dy @ W``          ``dy @ W`` or ``(Wᵀ·dyᵀ)ᵀ``
weight_grad     ``cpu_sdd``    (dyᵀ·x)|W      ``dy.t() @ x``      ``sampled_addmm``
==============  ============================  ==================  ============================

The cpu backend's kernels are called directly (``ProfileSpec(direct=True)``), as the dense
baselines are; torch.sparse gets the first form that runs (the transposed weight for the input
grad is built before timing; torch has no BSR ``sampled_addmm``, so those rows are skipped with
the reason). Every sparse result is checked against the float64 dense product before it is
timed. Timing (``ProfileSpec(interleave=True)``): for each shape and op, dense and every sparse
case of that shape are timed side by side, ``--samples`` rounds (default 15) of one sample of
each, a sample being the mean of as many back-to-back calls as last ``--min-run-time /
--samples`` seconds; median with p20/p80. Writes
the profiler's long-format CSV (plus ``speedup_vs_torch_sparse`` and ``gflops``) and prints a
markdown table with the machine line and the command.

    python benchmarks/bench_cpu_kernels.py                 # full grid -> benchmarks/results/cpu_kernels.csv
    python benchmarks/bench_cpu_kernels.py --preset minilm --out /tmp/m.csv   # MiniLM, M 128 and 4096
    python benchmarks/bench_cpu_kernels.py --quick --out /tmp/q.csv   # seconds: tiny shapes
    python benchmarks/bench_cpu_kernels.py --threads 1 --out benchmarks/results/cpu_kernels_1thread.csv
    python benchmarks/bench_cpu_kernels.py --preset minilm --sparsities 0.9 --layouts csr,bsr8,bsr16,bsr32 \\
        --out benchmarks/results/cpu_kernels_minilm.csv
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from typing import List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import spd_kernels as sk  # noqa: E402
from spd_kernels.profiling import (  # noqa: E402
    PRESETS,
    ProfileSpec,
    Shape,
    add_speedups_vs,
    command_line,
    markdown_report,
    preset_shapes,
    read_csv,
    run_profile,
    write_csv,
)

SHAPES = ((768, 768), (768, 3072), (3072, 768))  # (K, N): in_features -> out_features (BERT-base)
SPARSITIES = (0.5, 0.7, 0.9, 0.95, 0.99)
LAYOUTS = ("csr", "bsr8x1", "bsr16x1", "bsr4", "bsr16", "bsr32", "bsr64")
PRESET_LAYOUTS = ("csr", "bsr8x1", "bsr16x1", "bsr4", "bsr32", "bsr16")
PRESET_MS = (128, 4096)
OPS = ("forward", "input_grad", "weight_grad")
EXTRA = ("speedup_vs_torch_sparse", "gflops")


def add_extras(rows: List[dict]) -> List[dict]:
    """torch.sparse p50 / p50 of the same case (spd_kernels rows) and GFLOP/s of every row."""
    add_speedups_vs(rows, "torch_sparse", "speedup_vs_torch_sparse")
    for r in rows:
        if r["status"] == "ok":
            nnz = float(r["density"] or 1.0) * int(r["N"]) * int(r["K"])
            r["gflops"] = 2.0 * int(r["M"]) * nnz / (float(r["p50_ms"]) * 1e-3) / 1e9
    return rows


def _fmt(v, unit: str = "") -> str:
    return "–" if v in ("", None) or math.isnan(float(v)) else f"{float(v):.2f}{unit}"


def markdown(rows: List[dict]) -> str:
    """One table per shape: the cpu backend's median per op, and its speedups over dense and
    torch.sparse (same layout)."""
    out = []
    keys = sorted({(int(r["K"]), int(r["N"]), int(r["M"]), r["shape"]) for r in rows})
    for k, n, m, shape in keys:
        sel = [r for r in rows if r["shape"] == shape and int(r["M"]) == m]
        dense = {r["op"]: r for r in sel if r["impl"] == "dense_eager"}
        head = ", ".join(
            f"{op.replace('_', ' ')} {_fmt(dense[op]['p50_ms'])} ms" for op in OPS if op in dense
        )
        gf = (
            f" ({float(dense['forward']['gflops']):.0f} GFLOP/s)"
            if dense.get("forward", {}).get("gflops")
            else ""
        )
        out.append(f"\n**{k} → {n}, M = {m}** ({shape}) — dense: {head}{gf}\n")
        out.append(
            "| layout | sparsity | forward ms | × dense | × torch.sparse | input grad ms | × dense "
            "| × torch.sparse | weight grad ms | × dense | × torch.sparse |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        ours = {(r["layout"], float(r["sparsity"]), r["op"]): r for r in sel if r["impl"] == "spd_kernels"}
        order = {lay: i for i, lay in enumerate(LAYOUTS)}
        for layout, sp in sorted({key[:2] for key in ours}, key=lambda t: (order.get(t[0], 99), t[0], t[1])):
            cells = [layout, f"{sp:.2f}"]
            for op in OPS:
                r = ours.get((layout, sp, op), {})
                ok = r.get("status") == "ok"
                cells += [_fmt(r.get("p50_ms") if ok else "")]
                cells += [
                    _fmt(r.get(c) if ok else "", "×")
                    for c in ("speedup_vs_best_dense", "speedup_vs_torch_sparse")
                ]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Time the cpu backend (forward, input grad, weight grad) against dense F.linear and "
        "torch.sparse CSR/BSR; write a long-format CSV and print a markdown table.",
    )
    p.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads (default 2)")
    p.add_argument("--m", default=None, help="rows of x, i.e. tokens; a comma list times each (default 2048)")
    p.add_argument(
        "--shapes",
        default=",".join(f"{k}x{n}" for k, n in SHAPES),
        help="comma-separated in x out features (default 768x768,768x3072,3072x768)",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="the encoder layer shapes of a model instead of --shapes (q/k/v/out, FFN in, FFN out); "
        f"default M {','.join(map(str, PRESET_MS))} and layouts {','.join(PRESET_LAYOUTS)}",
    )
    p.add_argument("--sparsities", default=",".join(map(str, SPARSITIES)), help="comma-separated")
    p.add_argument("--layouts", default=None, help=f"comma-separated, e.g. {','.join(LAYOUTS)} (the default)")
    p.add_argument(
        "--min-run-time", type=float, default=0.5, help="seconds per implementation and case (default 0.5)"
    )
    p.add_argument("--samples", type=int, default=15, help="interleaved samples per implementation (15)")
    p.add_argument("--no-torch-sparse", action="store_true", help="skip the torch.sparse baselines")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(HERE, "results", "cpu_kernels.csv"), help="CSV path")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny shapes, short runs (seconds)")
    p.add_argument(
        "--from-csv", metavar="PATH", help="print the markdown table of an existing CSV; no timing"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show a progress bar on stderr")
    args = p.parse_args(argv)
    ms = args.m or (",".join(map(str, PRESET_MS)) if args.preset else "2048")
    layouts = args.layouts or ",".join(PRESET_LAYOUTS if args.preset else LAYOUTS)
    if args.quick:
        ms, args.shapes, args.sparsities, args.preset = "64", "64x128", "0.5", None
        args.min_run_time = min(args.min_run_time, 0.005)
        args.samples = min(args.samples, 3)
    if args.samples < 1:
        p.error(f"--samples must be >= 1, got {args.samples}")
    args.ms = [int(v) for v in ms.split(",")]
    if args.preset:
        args.shapes = [s for m in args.ms for s in preset_shapes(args.preset, m)]
    else:
        kn = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
        args.shapes = [Shape(f"{k}->{n}", m, n, k) for m in args.ms for k, n in kn]
    args.sparsities = [float(s) for s in args.sparsities.split(",")]
    args.layouts = [s.strip() for s in layouts.split(",")]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_csv:
        rows = read_csv(args.from_csv)
        print(markdown_report(rows, table=markdown(rows), legend=""))
        return 0
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    reasons = sk.available_backends()["cpu"]
    if reasons:
        print(f"the cpu backend is not available: {'; '.join(reasons)}", file=sys.stderr)
        return 2
    spec = ProfileSpec(
        shapes=args.shapes,
        ops=OPS,
        layouts=args.layouts,
        sparsities=args.sparsities,
        backend="cpu",
        baselines=("eager",) if args.no_torch_sparse else ("eager", "torch-sparse"),
        threads=args.threads,
        warmup=1,
        min_run_time=args.min_run_time,
        min_samples=args.samples,
        seed=args.seed,
        direct=True,
        interleave=True,
    )
    try:
        rows = run_profile(spec, progress=args.verbose)
    except ValueError as exc:
        print(f"bench_cpu_kernels: {exc}", file=sys.stderr)
        return 2
    command = command_line("benchmarks/bench_cpu_kernels.py", argv)
    for r in rows:
        r["command"] = command
    add_extras(rows)
    write_csv(rows, args.out, extra=EXTRA)
    print(markdown_report(rows, table=markdown(rows), legend=""))
    print(f"\nwrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
