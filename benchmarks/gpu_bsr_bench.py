#!/usr/bin/env python
"""GPU benchmark: the ``triton`` backend's block-sparse linear layer against dense and torch BSR.

One command on a CUDA machine (bf16, M = 16384 tokens, BERT-large FFN and BERT-base shapes)::

    python benchmarks/gpu_bsr_bench.py

For every shape (in_features x out_features), block and sparsity it times, side by side in one
run, through the profiler's harness (``spd_kernels.profiling``: ``triton.testing.do_bench``,
median, p20, p80 in ms):

- ``forward``      ``y = x·Wᵀ``          ``input_grad``  ``dX = dY·W``
- ``weight_grad``  ``dW = dYᵀ·X``  (sparse: at the stored blocks only)
- ``fwd_bwd``      forward + backward of a whole linear layer (dX and dW)

for ``triton_bsr`` (impl ``spd_kernels``: ``sparse_linear`` & co. on the triton backend),
``dense_eager`` (cuBLAS through ``F.linear`` / ``torch.mm``), ``dense_compile`` (impl
``dense_compiled``: the same under ``torch.compile``), ``torch_bsr`` (impl ``torch_sparse``: a
torch ``sparse_bsr`` tensor, cuSPARSE) and ``torch_bsr_triton`` (impl ``torch_sparse_triton``:
torch's own BSR Triton kernels, ``torch.sparse._triton_ops``); rows that torch cannot run are
``skipped`` with the reason. Every sparse result is checked against the float64 dense product
first (``max_rel_err``).

Writes ``<out>/gpu_bsr_bench.csv`` (the profiler's long-format CSV), ``gpu_bsr_bench.png`` (the
profiler's speedup-vs-sparsity plot) and ``gpu_bsr_bench.md`` (tables with the machine line and
the command). ``<out>`` is ``--out``, else ``$OUT``, else ``benchmarks/results``.

``--smoke`` runs the same code path on tiny shapes; without a GPU it runs the Triton kernels on
the CPU interpreter (``TRITON_INTERPRET=1``), times with a CPU clock and compiles with the
``eager`` backend: a check that the script works, not a measurement.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
OPS = ("forward", "input_grad", "weight_grad", "fwd_bwd")
IMPLS = ("triton_bsr", "dense_eager", "dense_compile", "torch_bsr", "torch_bsr_triton")
BASELINES = {"dense_eager": "eager", "dense_compile": "compiled", "torch_bsr": "torch-sparse"}
DEFAULTS = {  # option: (default, --smoke default)
    "shapes": ("1024x4096,4096x1024,768x768,768x3072,3072x768", "64x128,128x64"),
    "blocks": ("16,32,64,32x64", "32,32x64"),
    "sparsities": ("0.5,0.75,0.9,0.95", "0.5,0.9"),
}
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
TARGETS = (  # (op, layout, sparsity, compared with, minimum speedup) from the issue
    ("forward", "bsr64", 0.9, "dense", 5.0),
    ("forward", "bsr64", 0.5, "dense", 1.0),
    ("forward", "bsr32", 0.9, "dense", 4.0),
    ("forward", "bsr64", 0.9, "torch_sparse", 1.5),
    ("input_grad", "bsr64", 0.9, "dense", 3.0),
    ("weight_grad", "bsr64", 0.9, "dense", 3.0),
    ("fwd_bwd", "bsr64", 0.9, "dense", 3.0),
)


def _pairs(text: str, what: str, square: bool) -> List[tuple]:
    out = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        parts = parts * 2 if square and len(parts) == 1 else parts
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise argparse.ArgumentTypeError(f"{what} must look like {'32 or ' * square}AxB, got {item!r}")
        out.append((int(parts[0]), int(parts[1])))
    return out


def _floats(text: str) -> List[float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc
    if any(not 0.0 <= v < 1.0 for v in vals):
        raise argparse.ArgumentTypeError(f"sparsities must lie in [0, 1), got {text!r}")
    return vals


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="gpu_bsr_bench.py",
        description="Time the triton block-sparse linear (forward, input grad, weight grad, fwd+bwd) "
        "against dense cuBLAS (eager and torch.compile) and torch's BSR path; write CSV, plot, tables.",
    )
    p.add_argument("--m", type=int, default=16384, help="tokens, rows of x (default 16384; 48 with --smoke)")
    p.add_argument(
        "--shapes", type=lambda t: _pairs(t, "shape", False), help=f"IN x OUT list ({DEFAULTS['shapes'][0]})"
    )
    p.add_argument(
        "--blocks", type=lambda t: _pairs(t, "block", True), help=f"bm x bk list ({DEFAULTS['blocks'][0]})"
    )
    p.add_argument(
        "--sparsities", type=_floats, help=f"block sparsities (default {DEFAULTS['sparsities'][0]})"
    )
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16", help="default bf16")
    p.add_argument("--ops", default=",".join(OPS), help=f"subset of {','.join(OPS)} (default all)")
    p.add_argument("--impls", default=",".join(IMPLS), help=f"subset of {','.join(IMPLS)} (default all)")
    p.add_argument("--warmup", type=int, default=25, help="do_bench warm-up time in ms (default 25)")
    p.add_argument("--rep", type=int, default=100, help="do_bench measuring time in ms (default 100)")
    p.add_argument(
        "--compile-backend", default=None, help="torch.compile backend (default inductor; eager on CPU)"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default $OUT, else benchmarks/results)"
    )
    p.add_argument("--smoke", action="store_true", help="tiny shapes; on CPU via the Triton interpreter")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    args.impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    for name, given, known in (("op", args.ops, OPS), ("impl", args.impls, IMPLS)):
        if [g for g in given if g not in known]:
            p.error(f"unknown {name} {[g for g in given if g not in known]}; choose from {known}")
    if "triton_bsr" not in args.impls:
        p.error("--impls must include triton_bsr (speedups are relative to it)")
    if args.shapes is None:
        args.shapes = _pairs(DEFAULTS["shapes"][args.smoke], "shape", False)
    if args.blocks is None:
        args.blocks = _pairs(DEFAULTS["blocks"][args.smoke], "block", True)
    if args.sparsities is None:
        args.sparsities = _floats(DEFAULTS["sparsities"][args.smoke])
    if args.smoke and args.m == 16384:
        args.m = 48
    for k, n in args.shapes:
        for bm, bk in args.blocks:
            if n % bm or k % bk:
                p.error(f"shape {k}x{n} (out {n}, in {k}) is not divisible by block {bm}x{bk}")
    if args.out is None:
        args.out = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "benchmarks" / "results"
    return args


def torch_bsr_triton_bench(op, inp, W):
    """torch's BSR Triton kernels (torch.sparse._triton_ops) for one op."""
    from torch.sparse import _triton_ops as tops

    from spd_kernels.profiling.runner import Bench, torch_sparse_weight

    w, w_t = torch_sparse_weight(W), torch_sparse_weight(W, transposed=True)
    x, dy = inp.x, inp.dy
    fns = {
        "forward": lambda: tops.bsr_dense_mm(w, x.t()).t(),
        "input_grad": lambda: tops.bsr_dense_mm(w_t, dy.t()).t(),
        "weight_grad": lambda: tops.sampled_addmm(w, dy.t(), x, beta=0.0),
    }
    canon = (lambda dw: (dw.to_dense(),)) if op == "weight_grad" else (lambda y: (y,))
    return Bench(fns[op], canon, "torch.sparse._triton_ops")


def run(args: argparse.Namespace) -> List[dict]:
    if args.smoke and not _cuda_available():
        # Triton reads TRITON_INTERPRET when its decorators run; set it before triton is imported.
        os.environ["TRITON_INTERPRET"] = "1"
    os.environ["SPD_KERNELS_BACKEND"] = "triton"  # process-wide: autograd's backward threads see it too
    import torch

    sys.path.insert(0, str(ROOT))
    from spd_kernels.profiling import (
        ProfileSpec,
        Shape,
        add_speedups,
        command_line,
        plan,
        run_plan,
        time_callable,
    )
    from spd_kernels.profiling.runner import make_inputs, make_sparse, measure_case, reference

    on_cuda = torch.cuda.is_available()
    if not on_cuda and not args.smoke:
        raise SystemExit("no CUDA device: this benchmark needs a GPU (--smoke checks the script on CPU)")
    spec = ProfileSpec(
        shapes=[Shape(f"{k}->{n}", args.m, n, k) for k, n in args.shapes],
        ops=args.ops,
        layouts=[f"bsr{bm}x{bk}" for bm, bk in args.blocks],
        sparsities=args.sparsities,
        dtypes=[DTYPES[args.dtype]],
        backend="triton",
        baselines=[BASELINES[i] for i in args.impls if i in BASELINES],
        device="cuda" if on_cuda else "cpu",
        warmup=1,
        min_run_time=args.rep / 1e3 if on_cuda else 1e-3,
        min_samples=5 if on_cuda else 3,
        seed=args.seed,
        compile_backend=args.compile_backend or ("inductor" if on_cuda else "eager"),
    )
    plan_ = plan(spec)
    timer = functools.partial(time_callable, warmup_ms=args.warmup)
    rows = run_plan(plan_, timer=timer, progress=False)
    if "torch_bsr_triton" in args.impls:
        extra = []
        for r in (r for r in rows if r["impl"] == "spd_kernels" and r["op"] != "fwd_bwd"):
            shape = Shape(r["shape"], int(r["M"]), int(r["N"]), int(r["K"]))
            layout = next(lay for lay in plan_.layouts if lay.name == r["layout"])
            inp = make_inputs(shape, plan_.dtypes[0], plan_.device, spec.seed)
            sp = make_sparse(inp.w, layout, float(r["sparsity"]), spec.seed)
            row = {**r, "impl": "torch_sparse_triton", "status": ""}
            row.update(
                dict.fromkeys(("backend", "note", "max_rel_err", "p20_ms", "p50_ms", "p80_ms", "samples"), "")
            )
            bench = functools.partial(torch_bsr_triton_bench, r["op"], inp, sp.W)
            refs = reference(r["op"], inp, sp)
            extra.append(measure_case(row, bench, refs, plan_.dtypes[0], timer, spec, plan_.device))
        rows = add_speedups(rows + extra)
    command = command_line("benchmarks/gpu_bsr_bench.py", args.argv)
    for r in rows:
        r["command"] = command
        print(f"  {r['op']:11s} {r['impl']:19s} {r['shape']:10s} {r['layout']:8s} s={r['sparsity']!s:5s} "
              f"{r['p50_ms'] or r['status']}")  # fmt: skip
    return rows


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def tables(rows: List[dict]) -> str:
    """Speedups of triton over the best dense per (shape, block, sparsity) and op; the targets."""
    ours = {
        (r["shape"], r["layout"], float(r["sparsity"]), r["op"]): r
        for r in rows
        if r["impl"] == "spd_kernels"
    }
    p50 = {
        (r["impl"], r["shape"], r["layout"], r["sparsity"], r["op"]): float(r["p50_ms"])
        for r in rows
        if r["status"] == "ok"
    }

    def speedup(key, vs):
        r = ours.get(key)
        if r is None or r["status"] != "ok":
            return math.nan
        if vs == "dense":
            return float(r["speedup_vs_best_dense"] or "nan")
        return p50.get((vs, r["shape"], r["layout"], r["sparsity"], r["op"]), math.nan) / float(r["p50_ms"])

    def fmt(v):
        return "-" if math.isnan(v) else f"{v:.2f}×"

    lines = [
        "| in→out | block | sparsity | forward | input grad | weight grad | fwd+bwd | forward vs torch BSR "
        "| forward vs torch BSR triton |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, layout, s in dict.fromkeys(k[:3] for k in ours):
        block = next(r["block"] for k, r in ours.items() if k[:3] == (shape, layout, s))
        cells = [fmt(speedup((shape, layout, s, op), "dense")) for op in OPS]
        vs = [fmt(speedup((shape, layout, s, "forward"), i)) for i in ("torch_sparse", "torch_sparse_triton")]
        lines.append(f"| {shape.replace('->', '→')} | {block} | {s:g} | " + " | ".join(cells + vs) + " |")
    lines += ["", "Targets (worst shape):", "", "| op | layout | sparsity | vs | target | measured | met |"]
    lines.append("|---|---|---|---|---|---|---|")
    for op, layout, s, vs, goal in TARGETS:
        vals = [v for k in ours if k[1:] == (layout, s, op) and not math.isnan(v := speedup(k, vs))]
        met = "-" if not vals else ("yes" if min(vals) >= goal else "no")
        lines.append(
            f"| {op} | {layout} | {s} | {vs} | {goal}× | {fmt(min(vals, default=math.nan))} | {met} |"
        )
    bad = dict.fromkeys(
        f"- {r['op']} / {r['impl']}: {r['status']}: {r['note']}" for r in rows if r["status"] != "ok"
    )
    return "\n".join(lines + (["", "Not measured:", "", *bad] if bad else []))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    rows = run(args)
    from spd_kernels.profiling import markdown_report, plot_speedup, write_csv

    stem = "gpu_bsr_bench_smoke" if args.smoke else "gpu_bsr_bench"
    csv_path, png_path, md_path = (args.out / f"{stem}.{ext}" for ext in ("csv", "png", "md"))
    write_csv(rows, csv_path)
    legend = (
        "triton block-sparse linear vs dense. Speedup = best dense (cuBLAS eager or torch.compile) median "
        "/ triton median; `vs torch BSR` = torch's BSR (cuSPARSE, or its Triton kernels) median "
        "/ triton median."
    )
    md_path.write_text(markdown_report(rows, table=tables(rows), legend=legend))
    plot_speedup(rows, str(png_path))
    print(f"wrote {csv_path}, {png_path}, {md_path}")
    print(md_path.read_text())
    return 1 if [r for r in rows if r["impl"] == "spd_kernels" and r["status"] != "ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
