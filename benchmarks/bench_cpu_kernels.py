"""The ``cpu`` backend's three products against dense ``torch`` and ``torch.sparse``, side by side.

For each shape (in -> out features), layout and sparsity it times, on the same random
block-masked weight:

==============  ===========================  ============================  =========================
op              cpu backend                  dense baseline                torch.sparse baseline
==============  ===========================  ============================  =========================
forward         ``cpu_dds_t``  y = x·Wᵀ      ``F.linear(x, W)``            ``sparse.mm(W, xᵀ)ᵀ``
input_grad      ``cpu_dds``    dx = dy·W     ``dy @ W``                    ``sparse.mm(Wᵀ, dyᵀ)ᵀ``
weight_grad     ``cpu_sdd``    (dyᵀ·x)|W     ``dy.t() @ x``                ``sampled_addmm(W, dyᵀ, x)``
==============  ===========================  ============================  =========================

torch.sparse gets its best CPU form: the transposed weight for the input grad is built before
timing (CPU has no BSC @ dense), and the BSR weight grad uses ``sampled_addmm`` on the CSR of
the same pattern (there is no BSR ``sampled_addmm`` on CPU). The cpu-backend ops are called
directly (``torch.ops.spd_kernels_C.cpu_*``), as the dense baselines are.

Timing: ``torch.utils.benchmark`` (``blocked_autorange``), median with p20/p80 of the runs.
Writes a long-format CSV (one row per op x backend x layout x sparsity x shape) and prints a
markdown table.

    python benchmarks/bench_cpu_kernels.py                 # full grid -> benchmarks/results/cpu_kernels.csv
    python benchmarks/bench_cpu_kernels.py --quick --out /tmp/q.csv   # seconds: tiny shapes
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import platform
import statistics
import sys
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils import benchmark as tbench

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import spd_kernels as sk  # noqa: E402
from spd_kernels import _ext  # noqa: E402

SHAPES = ((768, 768), (768, 3072), (3072, 768))  # (K, N): in_features -> out_features (BERT-base)
SPARSITIES = (0.5, 0.7, 0.9, 0.95, 0.99)
LAYOUTS = {"csr": (1, 1), "bsr16": (16, 16), "bsr32": (32, 32), "bsr64": (64, 64)}
OPS = ("forward", "input_grad", "weight_grad")
FIELDS = [
    "op",
    "backend",
    "layout",
    "block",
    "sparsity",
    "dtype",
    "M",
    "N",
    "K",
    "p20_ms",
    "p50_ms",
    "p80_ms",
    "speedup_vs_dense",
    "speedup_vs_torch_sparse",
    "gflops",
    "device",
    "torch_version",
    "timestamp",
    "threads",
]


def device_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} logical CPUs)"


def random_block_weight(n: int, k: int, block: Tuple[int, int], sparsity: float, gen: torch.Generator):
    """(SparseMatrix, dense masked weight) with round((1 - sparsity) * blocks) random blocks kept."""
    bm, bk = block
    nb = (n // bm) * (k // bk)
    keep = int(round((1.0 - sparsity) * nb))
    flat = torch.zeros(nb, dtype=torch.bool)
    flat[torch.randperm(nb, generator=gen)[:keep]] = True
    bmask = flat.view(n // bm, k // bk)
    w = torch.randn(n, k, generator=gen)
    dense = w * bmask.repeat_interleave(bm, 0).repeat_interleave(bk, 1)
    return sk.SparseMatrix.from_dense(dense, mask=bmask, block=block), dense


def measure(fn: Callable[[], object], threads: int, min_run_time: float) -> Tuple[float, float, float]:
    """(p20, p50, p80) in milliseconds."""
    fn()  # warm-up (scratch buffers, lazy init)
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    times = sorted(t * 1e3 for t in m.times)
    if len(times) == 1:
        return times[0], times[0], times[0]
    q = statistics.quantiles(times, n=10, method="inclusive")
    return q[1], statistics.median(times), q[7]


def torch_sparse_fns(layout: str, block, dense: torch.Tensor, x, dy) -> Dict[str, Optional[Callable]]:
    """The torch.sparse form of each op (None where this torch cannot run it on CPU)."""
    if layout == "csr":
        w = dense.to_sparse_csr()
        wt = dense.t().contiguous().to_sparse_csr()
    else:
        w = dense.to_sparse_bsr(block)
        wt = dense.t().contiguous().to_sparse_bsr((block[1], block[0]))
    # sampled_addmm takes CSR only: the pattern of the stored blocks, as element CSR
    mask_csr = (dense != 0).to(dense.dtype).to_sparse_csr()
    fns: Dict[str, Optional[Callable]] = {
        "forward": lambda: torch.sparse.mm(w, x.t()).t(),
        "input_grad": lambda: torch.sparse.mm(wt, dy.t()).t(),
        "weight_grad": lambda: torch.sparse.sampled_addmm(mask_csr, dy.t(), x, beta=0.0),
    }
    for op, fn in list(fns.items()):
        try:
            fn()
        except RuntimeError:
            fns[op] = None
    return fns


def run(args) -> List[dict]:
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    common = dict(
        dtype="float32",
        device=device_name(),
        torch_version=torch.__version__,
        timestamp=stamp,
        threads=args.threads,
    )
    c_dds_t, c_dds, c_sdd = (_ext.c_op(n) for n in ("cpu_dds_t", "cpu_dds", "cpu_sdd"))
    rows: List[dict] = []

    def row(op, backend, layout, block, sp, shape, q, flops, vs_dense, vs_sparse):
        p20, p50, p80 = q
        rows.append(
            dict(
                op=op,
                backend=backend,
                layout=layout,
                block=f"{block[0]}x{block[1]}" if block else "",
                sparsity=sp,
                **shape,
                p20_ms=p20,
                p50_ms=p50,
                p80_ms=p80,
                speedup_vs_dense=vs_dense,
                speedup_vs_torch_sparse=vs_sparse,
                gflops=flops / (p50 * 1e-3) / 1e9 if p50 > 0 else math.nan,
                **common,
            )
        )

    for k, n in args.shapes:
        m = args.m
        x = torch.randn(m, k, generator=gen)
        dy = torch.randn(m, n, generator=gen)
        w_full = torch.randn(n, k, generator=gen)
        shape = dict(M=m, N=n, K=k)
        dense_fns = {
            "forward": lambda: F.linear(x, w_full),
            "input_grad": lambda: dy @ w_full,
            "weight_grad": lambda: dy.t() @ x,
        }
        dense_t = {}
        for op in OPS:
            q = measure(dense_fns[op], args.threads, args.min_run_time)
            dense_t[op] = q[1]
            row(op, "dense", "dense", None, 0.0, shape, q, 2.0 * m * n * k, 1.0, math.nan)
            log(args, f"{k}->{n} dense {op}: {q[1]:.3f} ms")
        for layout in args.layouts:
            block = LAYOUTS[layout]
            for sp in args.sparsities:
                W, dense = random_block_weight(n, k, block, sp, gen)
                meta = W.metadata()
                ours = {
                    "forward": lambda: c_dds_t(x, W.values, *meta, None, "none", False),
                    "input_grad": lambda: c_dds(dy, W.values, *meta),
                    "weight_grad": lambda: c_sdd(dy, x, W.values, *meta),
                }
                theirs = torch_sparse_fns(layout, block, dense, x, dy)
                flops = 2.0 * m * W.nnz
                for op in OPS:
                    q = measure(ours[op], args.threads, args.min_run_time)
                    ts = math.nan
                    if theirs[op] is not None and not args.no_torch_sparse:
                        qs = measure(theirs[op], args.threads, args.min_run_time)
                        ts = qs[1]
                        row(op, "torch.sparse", layout, block, sp, shape, qs, flops, dense_t[op] / ts, 1.0)
                    row(op, "cpu", layout, block, sp, shape, q, flops, dense_t[op] / q[1], ts / q[1])
                    log(
                        args,
                        f"{k}->{n} {layout} {sp:.2f} {op}: {q[1]:.3f} ms, x{dense_t[op] / q[1]:.2f} dense",
                    )
    return rows


def log(args, msg: str) -> None:
    if args.verbose:
        print(msg, file=sys.stderr, flush=True)


def write_csv(rows: List[dict], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def _fmt(v: float, unit: str = "") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}{unit}"


def markdown(rows: List[dict]) -> str:
    """One table per shape: the cpu backend's median per op, and its speedups over dense and
    torch.sparse (same layout)."""
    out = []
    shapes = sorted({(r["K"], r["N"], r["M"]) for r in rows}, key=lambda s: (s[0], s[1]))
    for k, n, m in shapes:
        sel = [r for r in rows if (r["K"], r["N"], r["M"]) == (k, n, m)]
        dense = {r["op"]: r for r in sel if r["backend"] == "dense"}
        out.append(
            f"\n**{k} → {n}, M = {m}** — dense: forward {dense['forward']['p50_ms']:.2f} ms "
            f"({dense['forward']['gflops']:.0f} GFLOP/s), input grad {dense['input_grad']['p50_ms']:.2f} ms, "
            f"weight grad {dense['weight_grad']['p50_ms']:.2f} ms\n"
        )
        out.append(
            "| layout | sparsity | forward ms | × dense | × torch.sparse | input grad ms | × dense "
            "| × torch.sparse | weight grad ms | × dense | × torch.sparse |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        ours = {(r["layout"], r["sparsity"], r["op"]): r for r in sel if r["backend"] == "cpu"}
        keys = {(r["layout"], r["sparsity"]) for r in sel if r["backend"] == "cpu"}
        keys = sorted(keys, key=lambda t: (list(LAYOUTS).index(t[0]), t[1]))
        for layout, sp in keys:
            cells = [layout, f"{sp:.2f}"]
            for op in OPS:
                r = ours.get((layout, sp, op))
                if r is None:
                    cells += ["–", "–", "–"]
                    continue
                cells += [r["p50_ms"], r["speedup_vs_dense"], r["speedup_vs_torch_sparse"]]
                cells[-3:] = [_fmt(cells[-3]), _fmt(cells[-2], "×"), _fmt(cells[-1], "×")]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Time the cpu backend (forward, input grad, weight grad) against dense F.linear and "
        "torch.sparse CSR/BSR; write a long-format CSV and print a markdown table.",
    )
    p.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads (default 2)")
    p.add_argument("--m", type=int, default=2048, help="rows of x, i.e. tokens (default 2048)")
    p.add_argument(
        "--shapes",
        default=",".join(f"{k}x{n}" for k, n in SHAPES),
        help="comma-separated in x out features (default 768x768,768x3072,3072x768)",
    )
    p.add_argument("--sparsities", default=",".join(map(str, SPARSITIES)), help="comma-separated")
    p.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma-separated subset of {list(LAYOUTS)}")
    p.add_argument("--min-run-time", type=float, default=0.5, help="seconds per measurement (default 0.5)")
    p.add_argument("--no-torch-sparse", action="store_true", help="skip the torch.sparse baselines")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(HERE, "results", "cpu_kernels.csv"), help="CSV path")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny shapes, short runs (seconds)")
    p.add_argument(
        "--from-csv", metavar="PATH", help="print the markdown table of an existing CSV; no timing"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log each measurement to stderr")
    args = p.parse_args(argv)
    if args.quick:
        args.m, args.shapes, args.sparsities = 64, "64x128", "0.5"
        args.min_run_time = min(args.min_run_time, 0.005)
    args.shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
    args.sparsities = [float(s) for s in args.sparsities.split(",")]
    args.layouts = [s.strip() for s in args.layouts.split(",")]
    for lay in args.layouts:
        if lay not in LAYOUTS:
            p.error(f"unknown layout {lay!r}; choose from {list(LAYOUTS)}")
    return args


def machine_line(device, torch_version, threads, dtype, stamp) -> str:
    return f"{device}, torch {torch_version}, {threads} threads, {dtype}, {stamp}"


def read_csv(path: str) -> List[dict]:
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            for k in ("M", "N", "K"):
                r[k] = int(r[k])
            for k in (
                "sparsity",
                "p20_ms",
                "p50_ms",
                "p80_ms",
                "speedup_vs_dense",
                "speedup_vs_torch_sparse",
                "gflops",
            ):
                r[k] = float(r[k])
            rows.append(r)
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_csv:
        rows = read_csv(args.from_csv)
        r0 = rows[0]
        print(machine_line(r0["device"], r0["torch_version"], r0["threads"], r0["dtype"], r0["timestamp"]))
        print(markdown(rows))
        return 0
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    reasons = sk.available_backends()["cpu"]
    if reasons:
        print(f"the cpu backend is not available: {'; '.join(reasons)}", file=sys.stderr)
        return 2
    rows = run(args)
    write_csv(rows, args.out)
    print(machine_line(rows[0]["device"], torch.__version__, args.threads, "float32", rows[0]["timestamp"]))
    print(markdown(rows))
    print(f"\nwrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
