"""CSR sparse linear layers on a GPU: the cuda backend's kernels vs dense cuBLAS and torch's CSR
(cuSPARSE), side by side, in one run.

Ops (Y = X·Wᵀ layer, X: (M, K), W: (N, K) with unstructured sparsity):
  fwd    Y = X·Wᵀ              cuda: spd_kernels_C::cuda_dds_t  dense: F.linear     cusparse: W_csr @ Xᵀ
  dgrad  dX = dY·W             cuda: spd_kernels_C::cuda_dds    dense: dY @ W       cusparse: Wᵀ_csr @ dYᵀ
  wgrad  dW = dYᵀ·X at W's     cuda: spd_kernels_C::cuda_sdd    dense: dYᵀ @ X      cusparse: sampled_addmm
         nonzeros                                               dense_gather: (dYᵀ @ X)[pattern]
dense_compile: the dense product under torch.compile; reference: the spd_kernels reference backend
(dense weight scattered from the values, then cuBLAS), what the automatic choice falls back to.

Shapes: BERT-base (768->768, 768->3072, 3072->768) and BERT-large (1024->4096, 4096->1024) at
M = 128 (latency, memory-bound) and M = 16384 (throughput), bf16 and fp16, 90 % sparsity, plus
a sparsity sweep on one shape. Timing: CUDA events around each call with the L2 cache flushed
before it (as triton.testing.do_bench does; the flush also hides the host-side launch cost),
median and p20/p80 over the repetitions (the profiler's timer, ``spd_kernels.profiling``).
Every result is checked against the float64 dense product first (``max_rel_err``). Every row
carries the floor of its case (``spd_kernels.profiling.roofline``): minimum bytes moved / HBM
bandwidth and flops / peak (CUDA-core FP32 peak for the sparse kernels, tensor-core peak for
dense), so the M = 16384 ratio to dense can be read against what the hardware allows.

Writes OUT/gpu_csr_bench.csv (the profiler's long-format CSV; impl spd_kernels with backend
cuda or reference, dense_eager, dense_compiled, torch_sparse = cuSPARSE, dense_gather; the
floors and the layer in extra columns), OUT/gpu_csr_bench.png (the profiler's speedup plot),
OUT/gpu_csr_summary.md (machine line, command, speedups per case), and prints the summary.
With the cuda and reference backends in the sweep it also writes the crossover
table of the dispatch (density below which cuda beats the reference backend, per op, the minimum
over M and dtypes) to OUT/gpu_csr_crossover.py; ``--write-crossover`` installs it as
spd_kernels/backends/_gpu_crossover.py.

  python benchmarks/gpu_csr_bench.py --out benchmarks/results/gpu_csr
  python benchmarks/gpu_csr_bench.py --dry-run --device-name "NVIDIA H100 80GB HBM3"   # no GPU needed
"""

from __future__ import annotations

import argparse
import functools
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repo's spd_kernels

from spd_kernels.profiling import roofline  # noqa: E402
from spd_kernels.profiling.roofline import DEVICE_PEAKS, device_peaks  # noqa: E402, F401

SHAPES: Dict[str, List[Tuple[str, int, int]]] = {
    # model -> (layer, K = in_features, N = out_features)
    "bert-base": [
        ("attn 768->768", 768, 768),
        ("ffn-in 768->3072", 768, 3072),
        ("ffn-out 3072->768", 3072, 768),
    ],
    "bert-large": [("ffn-in 1024->4096", 1024, 4096), ("ffn-out 4096->1024", 4096, 1024)],
}
SWEEP_SHAPE = ("bert-base", "ffn-in 768->3072", 768, 3072)
OPS = ("fwd", "dgrad", "wgrad")
OP_NAMES = {"fwd": "forward", "dgrad": "input_grad", "wgrad": "weight_grad"}  # the CSV's op names
BACKENDS = ("cuda", "dense", "cusparse", "dense_gather", "dense_compile", "reference")
# --backends name -> (impl, backend) of the CSV rows
IMPLS = {
    "cuda": ("spd_kernels", "cuda"),
    "reference": ("spd_kernels", "reference"),
    "dense": ("dense_eager", "aten"),
    "dense_compile": ("dense_compiled", "inductor"),
    "cusparse": ("torch_sparse", "torch.sparse"),
    "dense_gather": ("dense_gather", "aten"),
}
CROSSOVER_FILE = ROOT / "spd_kernels" / "backends" / "_gpu_crossover.py"
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
EXTRA = (
    "model", "layer", "nnz", "bytes", "flops", "floor_bytes_us", "floor_flops_us", "floor_us", "floor_frac",
    "speedup_vs_torch_sparse", "commit",
)  # fmt: skip


def bench_name(row: dict) -> str:
    """The --backends name of a CSV row."""
    if row["impl"] == "spd_kernels":
        return row["backend"]
    return next(name for name, (impl, _) in IMPLS.items() if impl == row["impl"])


@dataclass(frozen=True)
class Case:
    op: str
    model: str
    layer: str
    m: int
    n: int
    k: int
    sparsity: float
    dtype: str  # key of DTYPES

    @property
    def nnz(self) -> int:
        return int(round((1.0 - self.sparsity) * self.n * self.k))


def floor_us(case: Case, backend: str, peaks) -> Tuple[int, int, float, float, float]:
    """(bytes, flops, bytes floor µs, flops floor µs, floor µs) of a case for a --backends name:
    the sparse kernels (cuda, cusparse) or a dense GEMM (the rest; reference too)."""
    kind = "sparse" if backend in ("cuda", "cusparse") else "dense"
    return roofline.floor_us(
        OP_NAMES[case.op], kind, DTYPES[case.dtype], case.m, case.n, case.k, case.nnz, peaks
    )


def build_cases(
    models: Iterable[str],
    ms: Iterable[int],
    dtypes: Iterable[str],
    sparsity: float,
    sweep: Iterable[float],
    ops: Iterable[str],
) -> List[Case]:
    """The main grid (every shape at `sparsity`) plus the sweep (one shape, each sparsity)."""
    cases: List[Case] = []
    ops, ms, dtypes, sweep = list(ops), list(ms), list(dtypes), list(sweep)
    for dtype in dtypes:
        for m in ms:
            for model in models:
                for layer, k, n in SHAPES[model]:
                    for op in ops:
                        cases.append(Case(op, model, layer, m, n, k, sparsity, dtype))
            model, layer, k, n = SWEEP_SHAPE
            for s in sweep:
                if s == sparsity and model in models:
                    continue  # already in the main grid
                for op in ops:
                    cases.append(Case(op, model, layer, m, n, k, s, dtype))
    return cases


def _by_case(rows: List[dict]) -> Dict[tuple, Dict[str, dict]]:
    """(op, model, layer, M, sparsity, dtype) -> --backends name -> the row, for rows that ran."""
    out: Dict[tuple, Dict[str, dict]] = {}
    for r in rows:
        if r["status"] == "ok":
            key = (r["op"], r["model"], r["layer"], int(r["M"]), float(r["sparsity"]), r["dtype"])
            out.setdefault(key, {})[bench_name(r)] = r
    return out


def summarize(rows: List[dict]) -> List[dict]:
    """Per case: cuda time (µs), speedup vs best dense (dense, dense_compile) and vs cusparse, and
    the fraction of the floor cuda reaches."""
    out = []
    for key, b in sorted(_by_case(rows).items()):
        if "cuda" not in b:
            continue
        us = {name: float(r["p50_ms"]) * 1e3 for name, r in b.items()}
        t = us["cuda"]
        best_dense = min([us[x] for x in ("dense", "dense_compile") if x in us], default=math.nan)
        cus = us.get("cusparse", math.nan)
        cuda_floor = float(b["cuda"]["floor_us"])
        out.append(
            dict(zip(("op", "model", "layer", "m", "sparsity", "dtype"), key))
            | {
                "cuda_us": t,
                "dense_us": best_dense,
                "cusparse_us": cus,
                "speedup_vs_dense": best_dense / t,
                "speedup_vs_cusparse": cus / t,
                "cuda_floor_us": cuda_floor,
                "cuda_floor_frac": float(b["cuda"]["floor_frac"]),
                "dense_floor_us": float(b["dense"]["floor_us"]) if "dense" in b else math.nan,
                "ideal_speedup_vs_dense": best_dense / cuda_floor,
            }
        )
    return out


def crossover(rows: List[dict], against: str = "reference") -> Dict[str, float]:
    """Kernel op (dds_t, dds, sdd: what the dispatch asks for) -> density below which cuda beats
    ``against`` on the sweep shape, the minimum over every M and dtype measured (only ops with at
    least two densities)."""
    from spd_kernels.nn.crossover import crossing
    from spd_kernels.profiling.grid import OP_KERNELS

    curves: Dict[tuple, List[Tuple[float, float]]] = {}
    for (op, model, layer, m, s, dtype), b in _by_case(rows).items():
        if (model, layer) == SWEEP_SHAPE[:2] and "cuda" in b and against in b:
            t_cuda, t_other = float(b["cuda"]["p50_ms"]), float(b[against]["p50_ms"])
            if t_other > 0:
                curves.setdefault((op, m, dtype), []).append((1.0 - s, t_cuda / t_other))
    out: Dict[str, float] = {}
    for (op, _, _), pts in curves.items():
        if len(pts) >= 2:
            kernel = OP_KERNELS[op][0]
            out[kernel] = min(out.get(kernel, 1.0), crossing(sorted(pts)))
    return {op: out[op] for op in sorted(out)}


def crossover_source(table: Dict[str, float], header: List[str]) -> str:
    """The dispatch's crossover table (spd_kernels/backends/_gpu_crossover.py) as Python source."""
    from spd_kernels.nn.crossover import table_source

    first = "Written by benchmarks/gpu_csr_bench.py --write-crossover -- do not edit by hand; re-run it."
    last = "backend -> layout -> op -> density below which the sparse kernel beats the dense product"
    return table_source({"cuda": {"csr": table}} if table else {}, [first, *header, last])


def markdown(summary: List[dict], sparsity: float) -> str:
    head = (
        "| op | layer | M | dtype | cuda µs | dense µs | cuSPARSE µs | vs dense | vs cuSPARSE | "
        "cuda floor µs | % of floor |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for s in summary:
        if abs(s["sparsity"] - sparsity) > 1e-9:
            continue
        lines.append(
            f"| {s['op']} | {s['model']} {s['layer']} | {s['m']} | {s['dtype']} | {s['cuda_us']:.1f} | "
            f"{s['dense_us']:.1f} | {s['cusparse_us']:.1f} | {s['speedup_vs_dense']:.2f}x | "
            f"{s['speedup_vs_cusparse']:.2f}x | {s['cuda_floor_us']:.1f} | "
            f"{100 * s['cuda_floor_frac']:.0f}% |"
        )
    return head + "\n".join(lines) + "\n"


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


# ----------------------------------------------------------------------------- GPU side
def dense_gather_bench(op: str, inp, W):
    """The dense weight gradient, then gathered at W's entries: what a masked dense layer does."""
    from spd_kernels.profiling.runner import Bench, Unsupported

    if op != "weight_grad":
        raise Unsupported("dense_gather is a weight-grad baseline")
    rows, cols = W.block_rows.long(), W.col_indices.long()
    return Bench(
        lambda: (inp.dy.t() @ inp.x)[rows, cols],
        lambda v: (W.with_values(v.view(-1, 1, 1)).to_dense(),),
        "aten",
    )


def run(args, device: str = "cuda") -> int:
    """The benchmark on ``device`` (another device than cuda: a check of this code, e.g. the
    reference, dense, cusparse and dense_gather backends on the CPU in the tests)."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: use --dry-run to list the cases and floors", file=sys.stderr)
        return 2
    import spd_kernels as sk
    from spd_kernels.profiling import (
        ProfileSpec,
        Shape,
        add_speedups,
        add_speedups_vs,
        base_row,
        command_line,
        environment,
        markdown_report,
        parse_layout,
        plot_speedup,
        time_callable,
        write_csv,
    )
    from spd_kernels.profiling.report import DENSE_IMPLS
    from spd_kernels.profiling.runner import (
        dense_bench,
        kernel_bench,
        make_inputs,
        make_sparse,
        measure_case,
        reference,
        torch_sparse_bench,
    )

    reasons = sk.available_backends()["cuda"]
    if reasons and "cuda" in args.backends:
        print(f"the cuda backend is unavailable: {reasons}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    env = environment(device)
    name = env["device"]
    peaks = resolve_peaks(args, name)
    command = command_line("benchmarks/gpu_csr_bench.py", args.argv)
    spec = ProfileSpec(
        device=device.type, warmup=1, min_run_time=args.rep_ms / 1e3, min_samples=5, seed=args.seed
    )
    timer = functools.partial(time_callable, flush=not args.no_flush, warmup_ms=args.warmup_ms)
    benches = {
        "cuda": lambda op, inp, W: kernel_bench(op, inp, W, "cuda"),
        "reference": lambda op, inp, W: kernel_bench(op, inp, W, "reference"),
        "dense": lambda op, inp, W: dense_bench(op, inp, False),
        "dense_compile": lambda op, inp, W: dense_bench(op, inp, True),
        "cusparse": torch_sparse_bench,
        "dense_gather": dense_gather_bench,
    }
    cases = build_cases(args.models, args.ms, args.dtypes, args.sparsity, args.sweep, args.ops)
    rows: List[dict] = []
    operands_key = operands = None
    commit = git_commit()
    for i, case in enumerate(cases):
        op, dtype = OP_NAMES[case.op], getattr(torch, DTYPES[case.dtype])
        shape = Shape(f"{case.model} {case.layer}", case.m, case.n, case.k)
        if (shape, case.sparsity, dtype) != operands_key:
            operands = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            inp = make_inputs(shape, dtype, device, args.seed)
            operands = inp, make_sparse(inp.w, parse_layout("csr"), case.sparsity, args.seed)
            operands_key = (shape, case.sparsity, dtype)
        inp, sp = operands
        refs = reference(op, inp, sp)
        for backend in args.backends:
            if backend == "dense_gather" and op != "weight_grad":
                continue
            b, f, fb, ff, fl = floor_us(case, backend, peaks)
            impl, be = IMPLS[backend]
            row = base_row(
                env, command, op=op, impl=impl, backend=be, layout="csr", block="1x1", sparsity=case.sparsity,
                density=round(sp.W.density, 6), dtype=DTYPES[case.dtype], shape=shape.name, M=case.m,
                N=case.n, K=case.k, model=case.model, layer=case.layer, nnz=sp.W.nnz, bytes=b, flops=f,
                floor_bytes_us=fb, floor_flops_us=ff, floor_us=fl, commit=commit,
            )  # fmt: skip
            bench = functools.partial(benches[backend], op, inp, sp.W)
            if impl in DENSE_IMPLS:  # the full dense product: nothing sparse to check
                row.update(layout="dense", block="")
            checked = None if impl in DENSE_IMPLS else refs
            rows.append(measure_case(row, bench, checked, dtype, timer, spec, device))
            if row["status"] == "ok":
                row["floor_frac"] = fl / (float(row["p50_ms"]) * 1e3)
        print(f"[{i + 1}/{len(cases)}] {case.op} {case.model} {case.layer} M={case.m} s={case.sparsity} "
              f"{case.dtype}: last {rows[-1]['impl']} {rows[-1]['status']}", flush=True)  # fmt: skip
    add_speedups_vs(add_speedups(rows), "torch_sparse", "speedup_vs_torch_sparse")
    written = [write_csv(rows, out / "gpu_csr_bench.csv", extra=EXTRA)]
    written.append(
        plot_speedup(
            [r for r in rows if r["dtype"] == DTYPES[args.plot_dtype]], str(out / "gpu_csr_bench.png")
        )
    )
    table = markdown(summarize(rows), args.sparsity)
    (out / "gpu_csr_summary.md").write_text(markdown_report(rows, table=table, legend=f"peaks {peaks}"))
    written.append(out / "gpu_csr_summary.md")
    print(table)
    cross = crossover(rows)
    if cross:
        header = [
            f"measured on {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, commit {commit}, "
            f"{env['timestamp']}",
            f"sweep {SWEEP_SHAPE[0]} {SWEEP_SHAPE[1]}, M {sorted(set(args.ms))}, dtypes {args.dtypes}; "
            "cuda vs the reference backend, minimum over M and dtypes",
        ]
        source = crossover_source(cross, header)
        (out / "gpu_csr_crossover.py").write_text(source)
        written.append(out / "gpu_csr_crossover.py")
        print(f"crossover (density below which cuda beats dense): {cross}")
        if args.write_crossover:
            CROSSOVER_FILE.write_text(source)
            written.append(CROSSOVER_FILE)
    print("wrote", ", ".join(str(p) for p in written))
    return 1 if [r for r in rows if r["impl"] == "spd_kernels" and r["status"] == "mismatch"] else 0


def resolve_peaks(args, name: str) -> Optional[Tuple[float, float, float]]:
    table = device_peaks(name)
    given = (args.hbm_gbps, args.peak_fp32_tflops, args.peak_tc_tflops)
    if table is None and None in given:
        print(f"unknown device {name!r}: pass --hbm-gbps, --peak-fp32-tflops and --peak-tc-tflops for floors")
        return None
    base = table or (0.0, 0.0, 0.0)
    return tuple(g if g is not None else t for g, t in zip(given, base))  # type: ignore[return-value]


def dry_run(args) -> int:
    name = args.device_name or "unknown"
    peaks = resolve_peaks(args, name)
    cases = build_cases(args.models, args.ms, args.dtypes, args.sparsity, args.sweep, args.ops)
    print(f"{len(cases)} cases x backends {args.backends} on {name!r} (peaks {peaks})")
    for c in cases:
        parts = []
        for b in ("cuda", "dense"):
            _, _, fb, ff, fl = floor_us(c, b, peaks)
            parts.append(f"{b} floor {fl:.2f}us (bytes {fb:.2f}, flops {ff:.2f})")
        print(
            f"{c.op:5s} {c.model:10s} {c.layer:18s} M={c.m:<6d} s={c.sparsity:<5} {c.dtype}: "
            + "; ".join(parts)
        )
    return 0


def _csv_list(conv):
    return lambda s: [conv(v) for v in s.split(",") if v.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="gpu_csr_bench.py",
        description=(
            "CSR sparse linear kernels (the cuda backend) vs dense cuBLAS and torch CSR (cuSPARSE) on a "
            "GPU, BERT shapes, M=128 and M=16384, with bytes/flops floors. Writes CSVs, a Markdown table "
            "and plots."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="benchmarks/results/gpu_csr", help="output folder")
    p.add_argument(
        "--models", type=_csv_list(str), default=list(SHAPES), help=f"comma list of {list(SHAPES)}"
    )
    p.add_argument("--ms", type=_csv_list(int), default=[128, 16384], help="tokens M (comma list)")
    p.add_argument(
        "--dtypes", type=_csv_list(str), default=["bf16", "fp16"], help=f"comma list of {list(DTYPES)}"
    )
    p.add_argument("--sparsity", type=float, default=0.9, help="sparsity of the main grid")
    p.add_argument(
        "--sweep",
        type=_csv_list(float),
        default=[0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99],
        help=f"sparsities of the sweep on {SWEEP_SHAPE[0]} {SWEEP_SHAPE[1]} (empty string: no sweep)",
    )
    p.add_argument("--ops", type=_csv_list(str), default=list(OPS), help=f"comma list of {list(OPS)}")
    p.add_argument(
        "--backends",
        type=_csv_list(str),
        default=["cuda", "dense", "dense_compile", "cusparse", "dense_gather", "reference"],
        help=f"comma list of {list(BACKENDS)} (dense_compile: torch.compile'd dense, slow to warm up)",
    )
    p.add_argument("--warmup-ms", type=float, default=25.0)
    p.add_argument("--rep-ms", type=float, default=100.0)
    p.add_argument("--no-flush", action="store_true", help="keep the L2 cache warm between calls")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot-dtype", default="bf16", help="dtype drawn in the plots")
    p.add_argument("--hbm-gbps", type=float, default=None, help="override the HBM bandwidth (GB/s)")
    p.add_argument("--peak-fp32-tflops", type=float, default=None, help="override the CUDA-core FP32 peak")
    p.add_argument(
        "--peak-tc-tflops", type=float, default=None, help="override the tensor-core bf16/fp16 peak"
    )
    p.add_argument(
        "--write-crossover",
        action="store_true",
        help="also install the crossover as spd_kernels/backends/_gpu_crossover.py (the dispatch reads it)",
    )
    p.add_argument("--dry-run", action="store_true", help="list cases and floors without a GPU")
    p.add_argument("--device-name", default=None, help="device name for --dry-run floors, e.g. 'NVIDIA H200'")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for name, allowed in (("models", SHAPES), ("dtypes", DTYPES), ("ops", OPS), ("backends", BACKENDS)):
        bad = [v for v in getattr(args, name) if v not in allowed]
        if bad:
            p.error(f"--{name}: unknown {bad}; choose from {list(allowed)}")
    for s in [args.sparsity, *args.sweep]:
        if not 0.0 <= s < 1.0:
            p.error(f"sparsities must lie in [0, 1), got {s}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
