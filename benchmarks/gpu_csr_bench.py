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
median and p20/p80 over the repetitions. Every row carries the floor of its case: minimum
bytes moved / HBM bandwidth and flops / peak (CUDA-core FP32 peak for the sparse kernels,
tensor-core peak for dense), so the M = 16384 ratio to dense can be read against what the
hardware allows.

Writes OUT/gpu_csr_bench.csv (long format), OUT/gpu_csr_summary.csv (speedups per case),
OUT/gpu_csr_bench.png, OUT/gpu_csr_sweep.png, OUT/gpu_csr_summary.md, and prints the summary as a
Markdown table. With the cuda and reference backends in the sweep it also writes the crossover
table of the dispatch (density below which cuda beats the reference backend, per op, the minimum
over M and dtypes) to OUT/gpu_csr_crossover.py; ``--write-crossover`` installs it as
spd_kernels/backends/_gpu_crossover.py.

  python benchmarks/gpu_csr_bench.py --out benchmarks/results/gpu_csr
  python benchmarks/gpu_csr_bench.py --dry-run --device-name "NVIDIA H100 80GB HBM3"   # no GPU needed
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import math
import platform
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

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
BACKENDS = ("cuda", "dense", "cusparse", "dense_gather", "dense_compile", "reference")
CROSSOVER_FILE = Path(__file__).resolve().parent.parent / "spd_kernels" / "backends" / "_gpu_crossover.py"
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
ELEMENT_SIZE = {"bf16": 2, "fp16": 2, "fp32": 4}

# name match -> (HBM GB/s, CUDA-core FP32 TFLOPS, tensor-core dense bf16/fp16 TFLOPS), datasheet values
DEVICE_PEAKS: List[Tuple[Tuple[str, ...], Tuple[float, float, float]]] = [
    (("H200",), (4800.0, 67.0, 989.0)),
    (("H100", "NVL"), (3900.0, 60.0, 835.0)),
    (("H100", "PCIe"), (2000.0, 51.0, 756.0)),
    (("H100",), (3350.0, 67.0, 989.0)),  # SXM5 ("NVIDIA H100 80GB HBM3")
    (("A100", "80GB", "PCIe"), (1935.0, 19.5, 312.0)),
    (("A100", "80GB"), (2039.0, 19.5, 312.0)),
    (("A100",), (1555.0, 19.5, 312.0)),
]

FIELDS = [
    "op", "backend", "model", "layer", "m", "n", "k", "sparsity", "nnz", "dtype", "metric",
    "p50", "p20", "p80", "reps", "bytes", "flops", "floor_bytes_us", "floor_flops_us", "floor_us",
    "floor_frac", "max_rel_err", "status", "device", "torch", "cuda", "commit", "timestamp",
]  # fmt: skip


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


# ----------------------------------------------------------------------------- pure helpers
def device_peaks(name: str) -> Optional[Tuple[float, float, float]]:
    """(HBM GB/s, FP32 TFLOPS, tensor-core TFLOPS) for a device name, None if unknown."""
    for keys, peaks in DEVICE_PEAKS:
        if all(k in name for k in keys):
            return peaks
    return None


def min_bytes(op: str, kind: str, m: int, n: int, k: int, nnz: int, e: int) -> int:
    """Bytes a kernel must move at least: dense operands once, the weight once.
    kind "sparse": CSR values + int32 indices (+ offsets, + the CSC permutation for dgrad,
    + the COO rows for wgrad); kind "dense": the dense (N, K) weight."""
    acts = {"fwd": m * k * e + m * n * e, "dgrad": m * n * e + m * k * e, "wgrad": m * n * e + m * k * e}[op]
    if kind == "dense":
        return acts + n * k * e
    if op == "fwd":
        return acts + nnz * (e + 4) + (n + 1) * 4
    if op == "dgrad":
        return acts + nnz * (e + 8) + (k + 1) * 4
    return acts + nnz * (e + 8)  # wgrad: out values + rows + cols


def flops(kind: str, m: int, n: int, k: int, nnz: int) -> int:
    return 2 * m * (nnz if kind == "sparse" else n * k)


def backend_kind(backend: str, op: str) -> str:
    """Which floor applies: the sparse kernels (cuda, cusparse) or a dense GEMM."""
    return "sparse" if backend in ("cuda", "cusparse") else "dense"  # reference: a dense GEMM


def floor_us(
    case: Case, backend: str, peaks: Optional[Tuple[float, float, float]]
) -> Tuple[int, int, float, float, float]:
    """(bytes, flops, bytes floor µs, flops floor µs, floor µs); NaN floors when peaks is None.
    Sparse kernels run on CUDA cores (FP32 FMA peak), dense GEMMs on tensor cores."""
    kind = backend_kind(backend, case.op)
    e = ELEMENT_SIZE[case.dtype]
    b = min_bytes(case.op, kind, case.m, case.n, case.k, case.nnz, e)
    f = flops(kind, case.m, case.n, case.k, case.nnz)
    if peaks is None:
        return b, f, math.nan, math.nan, math.nan
    hbm, fp32, tc = peaks
    fb = b / (hbm * 1e9) * 1e6
    peak = fp32 if kind == "sparse" else (tc if case.dtype != "fp32" else fp32)
    ff = f / (peak * 1e12) * 1e6
    return b, f, fb, ff, max(fb, ff)


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


def quantiles(times_ms: List[float]) -> Tuple[float, float, float]:
    """(p50, p20, p80) in µs."""
    xs = sorted(times_ms)

    def q(p: float) -> float:
        if len(xs) == 1:
            return xs[0]
        pos = p * (len(xs) - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return q(0.5) * 1e3, q(0.2) * 1e3, q(0.8) * 1e3


def summarize(rows: List[dict]) -> List[dict]:
    """Per case: cuda time, speedup vs best dense (dense, dense_compile) and vs cusparse, and the
    fraction of the floor cuda reaches."""
    by_case: Dict[tuple, Dict[str, dict]] = {}
    for r in rows:
        if r["status"] != "ok" or r["metric"] != "time_us":
            continue
        key = (r["op"], r["model"], r["layer"], int(r["m"]), float(r["sparsity"]), r["dtype"])
        by_case.setdefault(key, {})[r["backend"]] = r
    out = []
    for key, b in sorted(by_case.items()):
        if "cuda" not in b:
            continue
        t = float(b["cuda"]["p50"])
        dense = [float(b[x]["p50"]) for x in ("dense", "dense_compile") if x in b]
        best_dense = min(dense) if dense else math.nan
        cus = float(b["cusparse"]["p50"]) if "cusparse" in b else math.nan
        dense_floor = float(b["dense"]["floor_us"]) if "dense" in b else math.nan
        out.append(
            {
                "op": key[0],
                "model": key[1],
                "layer": key[2],
                "m": key[3],
                "sparsity": key[4],
                "dtype": key[5],
                "cuda_us": t,
                "dense_us": best_dense,
                "cusparse_us": cus,
                "speedup_vs_dense": best_dense / t,
                "speedup_vs_cusparse": cus / t,
                "cuda_floor_us": float(b["cuda"]["floor_us"]),
                "cuda_floor_frac": float(b["cuda"]["floor_frac"]),
                "dense_floor_us": dense_floor,
                "ideal_speedup_vs_dense": best_dense / float(b["cuda"]["floor_us"]),
            }
        )
    return out


def crossover(rows: List[dict], against: str = "reference") -> Dict[str, float]:
    """op -> density below which cuda beats ``against`` on the sweep shape, the minimum over
    every M and dtype measured (only ops with at least two densities)."""
    from spd_kernels.nn.crossover import crossing

    model, layer = SWEEP_SHAPE[0], SWEEP_SHAPE[1]
    times: Dict[tuple, Dict[str, float]] = {}
    for r in rows:
        if r["status"] != "ok" or r["model"] != model or r["layer"] != layer:
            continue
        key = (r["op"], int(r["m"]), r["dtype"], 1.0 - float(r["sparsity"]))
        times.setdefault(key, {})[r["backend"]] = float(r["p50"])
    curves: Dict[tuple, List[Tuple[float, float]]] = {}
    for (op, m, dtype, density), t in times.items():
        if "cuda" in t and against in t and t[against] > 0:
            curves.setdefault((op, m, dtype), []).append((density, t["cuda"] / t[against]))
    out: Dict[str, float] = {}
    for (op, _, _), pts in curves.items():
        if len(pts) >= 2:
            out[op] = min(out.get(op, 1.0), crossing(pts))
    return {op: out[op] for op in sorted(out)}


def crossover_source(table: Dict[str, float], header: List[str]) -> str:
    """The dispatch's crossover table (spd_kernels/backends/_gpu_crossover.py) as Python source."""
    lines = ["# Written by benchmarks/gpu_csr_bench.py --write-crossover -- do not edit by hand; re-run it."]
    lines += [f"# {h}" for h in header]
    lines.append("# backend -> layout -> op -> density below which the sparse kernel beats the dense product")
    if not table:
        return "\n".join(lines + ["CROSSOVER = {}", ""])
    inner = ", ".join(f'"{op}": {v!r}' for op, v in table.items())
    return "\n".join(lines + ["CROSSOVER = {", f'    "cuda": {{"csr": {{{inner}}}}},', "}", ""])


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


def write_csv(path: Path, rows: List[dict], fields: Optional[List[str]] = None) -> None:
    fields = fields or (list(rows[0].keys()) if rows else FIELDS)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def read_csv(path: Path) -> List[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot(csv_path: Path, out_png: Path, sweep_png: Optional[Path] = None, dtype: str = "bf16") -> List[Path]:
    """Bars (time per layer, per backend) for each op × M at the main sparsity, and the sweep
    (time vs sparsity); drawn from the CSV alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_csv(csv_path) if r["status"] == "ok" and r["dtype"] == dtype]
    written = []
    if not rows:
        return written
    sparsities = sorted({float(r["sparsity"]) for r in rows})
    main_s = 0.9 if 0.9 in sparsities else sparsities[len(sparsities) // 2]
    ops = [o for o in OPS if any(r["op"] == o for r in rows)]
    ms = sorted({int(r["m"]) for r in rows})
    backends = [b for b in BACKENDS if any(r["backend"] == b for r in rows)]
    fig, axes = plt.subplots(len(ops), len(ms), figsize=(6 * len(ms), 3.6 * len(ops)), squeeze=False)
    for i, op in enumerate(ops):
        for j, m in enumerate(ms):
            ax = axes[i][j]
            sel = [r for r in rows if r["op"] == op and int(r["m"]) == m and float(r["sparsity"]) == main_s]
            layers = sorted({(r["model"], r["layer"]) for r in sel})
            width = 0.8 / max(1, len(backends))
            for bi, b in enumerate(backends):
                ys = []
                for lay in layers:
                    hit = [r for r in sel if (r["model"], r["layer"]) == lay and r["backend"] == b]
                    ys.append(float(hit[0]["p50"]) if hit else math.nan)
                ax.bar([x + bi * width for x in range(len(layers))], ys, width, label=b)
            ax.set_xticks([x + 0.4 - width / 2 for x in range(len(layers))])
            ax.set_xticklabels([f"{a}\n{b}" for a, b in layers], fontsize=7)
            ax.set_yscale("log")
            ax.set_ylabel("µs (p50)")
            ax.set_title(f"{op}, M={m}, {dtype}, sparsity {main_s:.0%}", fontsize=9)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    written.append(out_png)
    model, layer = SWEEP_SHAPE[0], SWEEP_SHAPE[1]
    sw = [r for r in rows if r["model"] == model and r["layer"] == layer]
    if sweep_png is not None and len({float(r["sparsity"]) for r in sw}) > 1:
        fig, axes = plt.subplots(len(ops), len(ms), figsize=(6 * len(ms), 3.6 * len(ops)), squeeze=False)
        for i, op in enumerate(ops):
            for j, m in enumerate(ms):
                ax = axes[i][j]
                for b in backends:
                    pts = sorted(
                        (float(r["sparsity"]), float(r["p50"]))
                        for r in sw
                        if r["op"] == op and int(r["m"]) == m and r["backend"] == b
                    )
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=b)
                ax.set_yscale("log")
                ax.set_xlabel("sparsity")
                ax.set_ylabel("µs (p50)")
                ax.set_title(f"{op}, {model} {layer}, M={m}, {dtype}", fontsize=9)
                if i == 0 and j == 0:
                    ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(sweep_png, dpi=120)
        plt.close(fig)
        written.append(sweep_png)
    return written


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
def bench_cuda(fn: Callable[[], object], warmup_ms: float, rep_ms: float, flush: bool = True) -> List[float]:
    """Per-call times in ms: CUDA events around each call, the L2 cache flushed (a 256 MiB
    write) before each, so weights are read from HBM and the host launch overlaps the flush."""
    import torch

    cache = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda")
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        if flush:
            cache.zero_()
        fn()
    end.record()
    torch.cuda.synchronize()
    est = max(start.elapsed_time(end) / 5, 1e-3)
    n_warm, n_rep = max(1, int(warmup_ms / est)), max(5, min(10000, int(rep_ms / est)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    for _ in range(n_warm):
        fn()
    for i in range(n_rep):
        if flush:
            cache.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def make_operands(case: Case, seed: int):
    """Random unstructured weight with exactly `nnz` entries, its CSR forms, and X, dY."""
    import torch

    import spd_kernels as sk

    dtype = getattr(torch, DTYPES[case.dtype])
    gen = torch.Generator(device="cuda").manual_seed(seed)
    n, k, m = case.n, case.k, case.m
    mask = torch.zeros(n * k, dtype=torch.bool, device="cuda")
    mask[torch.randperm(n * k, device="cuda", generator=gen)[: case.nnz]] = True
    mask = mask.view(n, k)
    w = torch.randn(n, k, device="cuda", generator=gen).to(dtype)
    dense = torch.where(mask, w, torch.zeros((), dtype=dtype, device="cuda"))
    W = sk.SparseMatrix.from_dense(dense, mask=mask, block=(1, 1))
    x = torch.randn(m, k, device="cuda", generator=gen).to(dtype)
    dy = torch.randn(m, n, device="cuda", generator=gen).to(dtype)
    return W, dense, x, dy


def op_fns(case: Case, backend: str, W, dense, x, dy, compiled: dict) -> Optional[Callable[[], object]]:
    """The callable timed for (case.op, backend); None when the backend has no such op."""
    import torch
    import torch.nn.functional as F

    C = torch.ops.spd_kernels_C
    meta = W.metadata()
    vals = W.values
    if backend == "cuda":
        return {
            "fwd": lambda: C.cuda_dds_t(x, vals, *meta, None, "none", False),
            "dgrad": lambda: C.cuda_dds(dy, vals, *meta),
            "wgrad": lambda: C.cuda_sdd(dy, x, vals, *meta),
        }[case.op]
    if backend == "dense":
        return {"fwd": lambda: F.linear(x, dense), "dgrad": lambda: dy @ dense, "wgrad": lambda: dy.t() @ x}[
            case.op
        ]
    if backend == "dense_compile":
        if case.op not in compiled:
            fn = {
                "fwd": lambda a, b: F.linear(a, b),
                "dgrad": lambda a, b: a @ b,
                "wgrad": lambda a, b: a.t() @ b,
            }
            compiled[case.op] = torch.compile(fn[case.op], dynamic=False)
        g = compiled[case.op]
        return {"fwd": lambda: g(x, dense), "dgrad": lambda: g(dy, dense), "wgrad": lambda: g(dy, x)}[case.op]
    if backend == "reference":
        from spd_kernels.backends import BACKENDS as SK_BACKENDS

        ref = SK_BACKENDS["reference"]
        return {
            "fwd": lambda: ref.dds_t(x, vals, meta, None, "none", False),
            "dgrad": lambda: ref.dds(dy, vals, meta),
            "wgrad": lambda: ref.sdd(dy, x, vals, meta),
        }[case.op]
    if backend == "dense_gather":
        if case.op != "wgrad":
            return None
        rows, cols = W.block_rows.long(), W.col_indices.long()
        return lambda: (dy.t() @ x)[rows, cols]
    if backend == "cusparse":
        n, k = case.n, case.k
        if case.op == "fwd":
            csr = torch.sparse_csr_tensor(W.row_offsets, W.col_indices, vals.view(-1), (n, k))
            return lambda: torch.mm(csr, x.t()).t()
        if case.op == "dgrad":
            csr_t = torch.sparse_csr_tensor(
                W.col_offsets, W.row_indices_t, vals.view(-1)[W.perm_t.long()].contiguous(), (k, n)
            )
            return lambda: torch.mm(csr_t, dy.t()).t()
        pattern = torch.sparse_csr_tensor(W.row_offsets, W.col_indices, vals.view(-1), (n, k))
        return lambda: torch.sparse.sampled_addmm(pattern, dy.t(), x, beta=0.0)
    raise ValueError(f"unknown backend {backend!r}")


def reference(case: Case, W, dense, x, dy):
    """The dense float32 result to compare the cuda output with (relative max error)."""
    if case.op == "fwd":
        return x.float() @ dense.float().t()
    if case.op == "dgrad":
        return dy.float() @ dense.float()
    return (dy.float().t() @ x.float())[W.block_rows.long(), W.col_indices.long()]


def rel_err(got, want) -> float:
    got = got.reshape(-1).float() if not got.is_sparse_csr else got.values().float()
    want = want.reshape(-1).float()
    if want.numel() == 0:
        return 0.0
    return ((got - want).abs().max() / (want.abs().max() + 1e-6)).item()


def run(args) -> int:
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: use --dry-run to list the cases and floors", file=sys.stderr)
        return 2
    import spd_kernels as sk

    reasons = sk.available_backends()["cuda"]
    if reasons and "cuda" in args.backends:
        print(f"the cuda backend is unavailable: {reasons}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name()
    peaks = resolve_peaks(args, name)
    cases = build_cases(args.models, args.ms, args.dtypes, args.sparsity, args.sweep, args.ops)
    common = {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "",
        "commit": git_commit(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    (out / "command.txt").write_text(
        " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv)
        + f"\n# {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, {platform.node()}, "
        f"peaks {peaks}\n"
    )
    rows: List[dict] = []
    compiled: dict = {}
    operands_key = None
    for i, case in enumerate(cases):
        key = (case.model, case.layer, case.m, case.sparsity, case.dtype)
        if key != operands_key:
            W = dense = x = dy = None
            torch.cuda.empty_cache()
            W, dense, x, dy = make_operands(case, args.seed)
            operands_key = key
        for backend in args.backends:
            b, f, fb, ff, fl = floor_us(case, backend, peaks)
            row = dict(asdict(case), backend=backend, nnz=case.nnz, metric="time_us", bytes=b, flops=f)
            row.update(floor_bytes_us=fb, floor_flops_us=ff, floor_us=fl, max_rel_err="", **common)
            try:
                fn = op_fns(case, backend, W, dense, x, dy, compiled)
                if fn is None:
                    continue
                if backend == "cuda":
                    err = rel_err(fn() if case.op != "fwd" else fn()[0], reference(case, W, dense, x, dy))
                    row["max_rel_err"] = f"{err:.3e}"
                    tol = 2e-2 if case.dtype != "fp32" else 1e-4
                    if not err <= tol:
                        row.update(status=f"MISMATCH rel err {err:.3e}", p50="", p20="", p80="", reps=0)
                        rows.append(row)
                        continue
                times = bench_cuda(fn, args.warmup_ms, args.rep_ms, flush=not args.no_flush)
                p50, p20, p80 = quantiles(times)
                row.update(p50=p50, p20=p20, p80=p80, reps=len(times), status="ok")
                row["floor_frac"] = fl / p50 if p50 > 0 and not math.isnan(fl) else math.nan
            except Exception as exc:  # a baseline that cannot run this dtype/shape is a row, not a crash
                msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                row.update(status=f"unsupported: {msg}", p50="", p20="", p80="", reps=0)
                torch.cuda.synchronize()
            rows.append(row)
        done = rows[-1] if rows else {}
        print(f"[{i + 1}/{len(cases)}] {case.op} {case.model} {case.layer} M={case.m} s={case.sparsity} "
              f"{case.dtype}: last {done.get('backend')} {done.get('status')}", flush=True)  # fmt: skip
    write_csv(out / "gpu_csr_bench.csv", rows, FIELDS)
    summary = summarize(rows)
    if summary:
        write_csv(out / "gpu_csr_summary.csv", summary)
    written = plot(
        out / "gpu_csr_bench.csv", out / "gpu_csr_bench.png", out / "gpu_csr_sweep.png", args.plot_dtype
    )
    table = markdown(summary, args.sparsity)
    (out / "gpu_csr_summary.md").write_text(
        f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}; command: "
        f"`{(out / 'command.txt').read_text().splitlines()[0]}`\n\n" + table
    )
    print(table)
    written = [out / "gpu_csr_bench.csv", out / "gpu_csr_summary.csv", *written, out / "gpu_csr_summary.md"]
    cross = crossover(rows)
    if cross:
        source = crossover_source(
            cross,
            [
                f"measured on {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, commit "
                f"{common['commit']}, {common['timestamp']}",
                f"sweep {SWEEP_SHAPE[0]} {SWEEP_SHAPE[1]}, M {sorted(set(args.ms))}, dtypes {args.dtypes}; "
                "cuda vs the reference backend, minimum over M and dtypes",
            ],
        )
        (out / "gpu_csr_crossover.py").write_text(source)
        written.append(out / "gpu_csr_crossover.py")
        print(f"crossover (density below which cuda beats dense): {cross}")
        if args.write_crossover:
            CROSSOVER_FILE.write_text(source)
            written.append(CROSSOVER_FILE)
    print("wrote", ", ".join(str(p) for p in written))
    bad = [r for r in rows if str(r["status"]).startswith("MISMATCH")]
    return 1 if bad else 0


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
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo's spd_kernels
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
