#!/usr/bin/env python
"""GPU benchmark: the ``triton`` backend's block-sparse linear layer against dense and torch BSR.

One command on a CUDA machine (bf16, M = 16384 tokens, BERT-large FFN and BERT-base shapes)::

    python benchmarks/gpu_bsr_bench.py

For every shape (in_features x out_features), block and sparsity it times, side by side in one
run, with ``triton.testing.do_bench`` (median, p20, p80 in ms):

- ``forward``      ``y = x·Wᵀ``          ``input_grad``  ``dX = dY·W``
- ``weight_grad``  ``dW = dYᵀ·X``  (sparse: at the stored blocks only)
- ``fwd_bwd``      forward + backward of a whole linear layer (dX and dW)

for ``triton_bsr`` (``spd_kernels.sparse_linear`` & co. on the triton backend), ``dense_eager``
(cuBLAS through ``F.linear`` / ``torch.mm``), ``dense_compile`` (the same under
``torch.compile``), ``torch_bsr`` (a torch ``sparse_bsr`` tensor through ``F.linear`` /
``torch.sparse.mm`` / ``torch.sparse.sampled_addmm``: cuSPARSE) and ``torch_bsr_triton`` (torch's
own BSR Triton kernels, ``torch.sparse._triton_ops.bsr_dense_mm`` / ``sampled_addmm``);
``unsupported`` rows say why when torch cannot run one. Every sparse result is checked against
the dense product first (``rel_err``).

Writes ``<out>/gpu_bsr_bench.csv`` (long format), ``gpu_bsr_bench.png`` (speedup over the best
dense vs sparsity, one line per block size) and ``gpu_bsr_bench.md`` (tables with the machine
line and the command). ``<out>`` is ``--out``, else ``$OUT``, else ``benchmarks/results``.

``--smoke`` runs the same code path on tiny shapes; without a GPU it runs the Triton kernels on
the CPU interpreter (``TRITON_INTERPRET=1``), times with a CPU clock and compiles with the
``eager`` backend: a check that the script works, not a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
OPS = ("forward", "input_grad", "weight_grad", "fwd_bwd")
IMPLS = ("triton_bsr", "dense_eager", "dense_compile", "torch_bsr", "torch_bsr_triton")
FIELDS = (
    "op",
    "impl",
    "in_features",
    "out_features",
    "m",
    "block",
    "sparsity",
    "density",
    "dtype",
    "metric",
    "p50",
    "p20",
    "p80",
    "rel_err",
    "status",
    "device",
    "torch",
    "triton",
    "cuda",
    "timestamp",
    "command",
)
DEFAULT_SHAPES = "1024x4096,4096x1024,768x768,768x3072,3072x768"
DEFAULT_BLOCKS = "16,32,64,32x64"
DEFAULT_SPARSITIES = "0.5,0.75,0.9,0.95"
SMOKE_SHAPES = "64x128,128x64"
SMOKE_BLOCKS = "32,32x64"
SMOKE_SPARSITIES = "0.5,0.9"
# a sparse result further than this (relative Frobenius norm) from the dense product is wrong
TOLERANCE = {"bf16": 2e-2, "fp16": 5e-3, "fp32": 1e-3}


# ----------------------------------------------------------------------------- arguments
def _blocks(text: str) -> List[Tuple[int, int]]:
    out = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise argparse.ArgumentTypeError(f"block must look like 32 or 32x64, got {item!r}")
        out.append((int(parts[0]), int(parts[1])))
    return out


def _shapes(text: str) -> List[Tuple[int, int]]:
    out = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise argparse.ArgumentTypeError(f"shape must look like IN x OUT, e.g. 1024x4096, got {item!r}")
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
    p.add_argument("--shapes", type=_shapes, default=None, help=f"IN x OUT list (default {DEFAULT_SHAPES})")
    p.add_argument("--blocks", type=_blocks, default=None, help=f"bm x bk list (default {DEFAULT_BLOCKS})")
    p.add_argument(
        "--sparsities", type=_floats, default=None, help=f"block sparsities (default {DEFAULT_SPARSITIES})"
    )
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="default bf16")
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
        bad = [g for g in given if g not in known]
        if bad:
            p.error(f"unknown {name} {bad}; choose from {known}")
    if "triton_bsr" not in args.impls:
        p.error("--impls must include triton_bsr (speedups are relative to it)")
    smoke = args.smoke
    if args.shapes is None:
        args.shapes = _shapes(SMOKE_SHAPES if smoke else DEFAULT_SHAPES)
    if args.blocks is None:
        args.blocks = _blocks(SMOKE_BLOCKS if smoke else DEFAULT_BLOCKS)
    if args.sparsities is None:
        args.sparsities = _floats(SMOKE_SPARSITIES if smoke else DEFAULT_SPARSITIES)
    if smoke and args.m == 16384:
        args.m = 48
    for k, n in args.shapes:
        for bm, bk in args.blocks:
            if n % bm or k % bk:
                p.error(f"shape {k}x{n} (out {n}, in {k}) is not divisible by block {bm}x{bk}")
    if args.out is None:
        args.out = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "benchmarks" / "results"
    return args


# ----------------------------------------------------------------------------- timing
def _make_timer(torch, on_cuda: bool, warmup: int, rep: int):
    if on_cuda:
        from triton.testing import do_bench

        def bench(fn, grad_to_none=None):
            p50, p20, p80 = do_bench(
                fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8]
            )
            return p50, p20, p80

        return bench

    def bench_cpu(fn, grad_to_none=None, reps: int = 3):
        times = []
        for _ in range(reps):
            if grad_to_none:
                for t in grad_to_none:
                    t.grad = None
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        t = torch.tensor(times, dtype=torch.float64)
        q = t.quantile(torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
        return tuple(float(v) for v in q)

    return bench_cpu


# ----------------------------------------------------------------------------- the work
def _random_weight(torch, sk, n, k, block, sparsity, dtype, device, gen):
    """(SparseMatrix, dense masked weight) with exactly round((1-s)·blocks) random blocks kept."""
    bm, bk = block
    grid = (n // bm, k // bk)
    nb = grid[0] * grid[1]
    keep = int(round((1.0 - sparsity) * nb))
    flat = torch.zeros(nb, dtype=torch.bool)
    flat[torch.randperm(nb, generator=gen)[:keep]] = True
    bmask = flat.view(grid)
    w = torch.randn(n, k, generator=gen) / math.sqrt(k)
    emask = bmask.repeat_interleave(bm, 0).repeat_interleave(bk, 1)
    dense = torch.where(emask, w, torch.zeros(())).to(dtype)
    W = sk.SparseMatrix.from_dense(dense, mask=bmask, block=block).to(device)
    return W, dense.to(device)


def _rel_err(torch, got, want) -> float:
    got, want = got.double(), want.double()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def _torch_bsr_fns(torch, F, dense, block, x, dy) -> Dict[str, Callable]:
    """torch's own BSR path; each entry may raise (unsupported) when first called."""
    bm, bk = block
    fns: Dict[str, Callable] = {}
    w_bsr = dense.to_sparse_bsr((bm, bk))
    w_t_bsr = dense.t().contiguous().to_sparse_bsr((bk, bm))

    def forward():
        try:
            return F.linear(x, w_bsr)
        except (RuntimeError, NotImplementedError):
            return torch.sparse.mm(w_bsr, x.t()).t()

    fns["forward"] = forward
    fns["input_grad"] = lambda: torch.sparse.mm(w_t_bsr, dy.t()).t()
    fns["weight_grad"] = lambda: torch.sparse.sampled_addmm(w_bsr, dy.t(), x, beta=0.0)
    return fns


def _torch_bsr_triton_fns(torch, dense, block, x, dy) -> Dict[str, Callable]:
    """torch's BSR Triton kernels (torch.sparse._triton_ops); each entry may raise (unsupported)."""
    from torch.sparse import _triton_ops as tops

    bm, bk = block
    w_bsr = dense.to_sparse_bsr((bm, bk))
    w_t_bsr = dense.t().contiguous().to_sparse_bsr((bk, bm))
    x_t, dy_t = x.t(), dy.t()
    return {
        "forward": lambda: tops.bsr_dense_mm(w_bsr, x_t).t(),
        "input_grad": lambda: tops.bsr_dense_mm(w_t_bsr, dy_t).t(),
        "weight_grad": lambda: tops.sampled_addmm(w_bsr, dy_t, x, beta=0.0),
    }


def run(args: argparse.Namespace) -> List[dict]:
    if args.smoke and not _cuda_available():
        # Triton reads TRITON_INTERPRET when its decorators run; set it before triton is imported.
        os.environ["TRITON_INTERPRET"] = "1"
    os.environ["SPD_KERNELS_BACKEND"] = "triton"  # process-wide: autograd's backward threads see it too
    import torch
    import torch.nn.functional as F
    import triton

    sys.path.insert(0, str(ROOT))
    import spd_kernels as sk

    on_cuda = torch.cuda.is_available()
    if not on_cuda and not args.smoke:
        raise SystemExit("no CUDA device: this benchmark needs a GPU (--smoke checks the script on CPU)")
    device = torch.device("cuda" if on_cuda else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    bench = _make_timer(torch, on_cuda, args.warmup, args.rep)
    compile_backend = args.compile_backend or ("inductor" if on_cuda else "eager")
    gen = torch.Generator().manual_seed(args.seed)
    common = {
        "m": args.m,
        "dtype": args.dtype,
        "device": torch.cuda.get_device_name(device) if on_cuda else "cpu (Triton interpreter)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda or "",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/gpu_bsr_bench.py", *(shlex.quote(a) for a in args.argv)]),
    }
    rows: List[dict] = []

    def record(op, impl, k, n, block, sparsity, density, timing, rel_err=None, status="ok"):
        p50, p20, p80 = timing if timing else (float("nan"),) * 3
        rows.append(
            {
                **common,
                "op": op,
                "impl": impl,
                "in_features": k,
                "out_features": n,
                "block": "" if block is None else f"{block[0]}x{block[1]}",
                "sparsity": "" if sparsity is None else sparsity,
                "density": "" if density is None else round(density, 6),
                "metric": "time_ms",
                "p50": p50,
                "p20": p20,
                "p80": p80,
                "rel_err": "" if rel_err is None else rel_err,
                "status": status,
            }
        )
        shown = f"{p50:9.4f} ms" if timing else status
        tag = "dense" if block is None else f"block {block[0]}x{block[1]} s={sparsity}"
        print(f"  {op:11s} {impl:13s} {tag:24s} {shown}", flush=True)

    for k, n in args.shapes:
        print(f"shape in={k} out={n} M={args.m} {args.dtype} on {common['device']}", flush=True)
        x = torch.randn(args.m, k, generator=gen).to(device=device, dtype=dtype)
        dy = torch.randn(args.m, n, generator=gen).to(device=device, dtype=dtype)
        w_full = (torch.randn(n, k, generator=gen) / math.sqrt(k)).to(device=device, dtype=dtype)

        _bench_dense(torch, F, args, bench, record, compile_backend, k, n, x, dy, w_full)

        for block in args.blocks:
            for sparsity in args.sparsities:
                W, dense = _random_weight(torch, sk, n, k, block, sparsity, dtype, device, gen)
                _bench_sparse(torch, F, sk, args, bench, record, k, n, block, sparsity, W, dense, x, dy)
        if on_cuda:
            torch.cuda.empty_cache()
    return rows


def _bench_dense(torch, F, args, bench, record, compile_backend, k, n, x, dy, w_full):
    """Dense baselines, once per shape (they do not depend on the pattern)."""
    xg = x.detach().clone().requires_grad_(True)
    wg = w_full.detach().clone().requires_grad_(True)
    dense_fns = {
        "forward": lambda: F.linear(x, w_full),
        "input_grad": lambda: torch.mm(dy, w_full),
        "weight_grad": lambda: torch.mm(dy.t(), x),
    }
    lin_c = torch.compile(lambda a, b: F.linear(a, b), backend=compile_backend, dynamic=False)
    mm_c = torch.compile(lambda a, b: torch.mm(a, b), backend=compile_backend, dynamic=False)
    mm_t_c = torch.compile(lambda a, b: torch.mm(a.t(), b), backend=compile_backend, dynamic=False)
    compiled_fns = {
        "forward": lambda: lin_c(x, w_full),
        "input_grad": lambda: mm_c(dy, w_full),
        "weight_grad": lambda: mm_t_c(dy, x),
    }

    def dense_fb(lin=F.linear):
        lin(xg, wg).backward(dy)

    dense_fns["fwd_bwd"] = dense_fb
    compiled_fns["fwd_bwd"] = lambda: dense_fb(lin_c)
    for impl, fns in (("dense_eager", dense_fns), ("dense_compile", compiled_fns)):
        if impl not in args.impls:
            continue
        for op in args.ops:
            fn = fns[op]
            grads = [xg, wg] if op == "fwd_bwd" else None
            try:
                with torch.no_grad() if op != "fwd_bwd" else contextlib.nullcontext():
                    fn()  # compiles / warms up outside the timing
                    timing = bench(fn, grads)
                record(op, impl, k, n, None, None, 1.0, timing)
            except Exception as exc:  # a baseline that fails is reported, not fatal
                record(op, impl, k, n, None, None, 1.0, None, status=f"failed: {_short(exc)}")


def _bench_sparse(torch, F, sk, args, bench, record, k, n, block, sparsity, W, dense, x, dy):
    density = W.density
    tol = TOLERANCE[args.dtype]
    values = W.values.detach().clone().requires_grad_(True)
    Wv = W.with_values(values)
    xg = x.detach().clone().requires_grad_(True)

    def fwd_bwd():
        sk.sparse_linear(xg, Wv).backward(dy)

    sparse_fns = {
        "forward": lambda: sk.sparse_linear(x, W),
        "input_grad": lambda: sk.sparse_input_grad(dy, W),
        "weight_grad": lambda: sk.sparse_weight_grad(dy, x, W),
        "fwd_bwd": fwd_bwd,
    }
    # what each sparse product must equal (dense masked, same dtype; dW at the stored blocks)
    want = {
        "forward": lambda: F.linear(x, dense),
        "input_grad": lambda: torch.mm(dy, dense),
        "weight_grad": lambda: (
            sk.SparseMatrix.from_dense(torch.mm(dy.t(), x), mask=W.block_mask(), block=block).values
        ),
    }
    baselines = {}
    for impl, make in (
        ("torch_bsr", lambda: _torch_bsr_fns(torch, F, dense, block, x, dy)),
        ("torch_bsr_triton", lambda: _torch_bsr_triton_fns(torch, dense, block, x, dy)),
    ):
        if impl in args.impls:
            try:
                baselines[impl] = make()
            except Exception as exc:  # e.g. a block torch cannot convert to
                baselines[impl] = exc
    for op in args.ops:
        fn = sparse_fns[op]
        try:
            err = None
            if op == "fwd_bwd":
                fn()
                timing = bench(fn, [xg, values])
            else:
                with torch.no_grad():
                    err = _rel_err(torch, fn(), want[op]())
                    timing = bench(fn)
            status = "ok" if err is None or err <= tol else f"wrong result: rel_err {err:.2e} > {tol:.0e}"
            timing = timing if status == "ok" else None
            record(op, "triton_bsr", k, n, block, sparsity, density, timing, err, status)
        except Exception as exc:
            record(op, "triton_bsr", k, n, block, sparsity, density, None, status=f"failed: {_short(exc)}")
        for impl, fns in baselines.items():
            if isinstance(fns, Exception):
                status = f"unsupported: {_short(fns)}"
                record(op, impl, k, n, block, sparsity, density, None, status=status)
                continue
            if op not in fns:
                continue
            try:
                with torch.no_grad():
                    got = fns[op]()
                    if op == "weight_grad":
                        got = sk.SparseMatrix.from_dense(got.to_dense(), mask=W.block_mask(), block=block)
                        got = got.values
                    err = _rel_err(torch, got, want[op]())
                    timing = bench(fns[op])
                status = "ok" if err <= tol else f"wrong result: rel_err {err:.2e} > {tol:.0e}"
                record(
                    op, impl, k, n, block, sparsity, density, timing if status == "ok" else None, err, status
                )
            except Exception as exc:
                status = f"unsupported: {_short(exc)}"
                record(op, impl, k, n, block, sparsity, density, None, status=status)


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text[:200]


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# ----------------------------------------------------------------------------- outputs
def write_csv(rows: List[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in FIELDS})


def speedups(rows: List[dict]) -> List[dict]:
    """Per (op, shape, block, sparsity): best dense p50 / triton p50, and torch BSR p50 / triton p50."""
    dense: Dict[Tuple, float] = {}
    torch_bsr: Dict[Tuple, float] = {}
    torch_bsr_triton: Dict[Tuple, float] = {}
    for r in rows:
        if r["status"] != "ok":
            continue
        shape = (r["op"], r["in_features"], r["out_features"])
        if r["impl"] in ("dense_eager", "dense_compile"):
            dense[shape] = min(dense.get(shape, math.inf), r["p50"])
        elif r["impl"] == "torch_bsr":
            torch_bsr[shape + (r["block"], r["sparsity"])] = r["p50"]
        elif r["impl"] == "torch_bsr_triton":
            torch_bsr_triton[shape + (r["block"], r["sparsity"])] = r["p50"]
    out = []
    for r in rows:
        if r["impl"] != "triton_bsr" or r["status"] != "ok":
            continue
        shape = (r["op"], r["in_features"], r["out_features"])
        key = shape + (r["block"], r["sparsity"])
        best = dense.get(shape)
        tb = torch_bsr.get(key)
        tt = torch_bsr_triton.get(key)
        out.append(
            {
                "op": r["op"],
                "in_features": r["in_features"],
                "out_features": r["out_features"],
                "block": r["block"],
                "sparsity": r["sparsity"],
                "triton_ms": r["p50"],
                "vs_dense": best / r["p50"] if best else float("nan"),
                "vs_torch_bsr": tb / r["p50"] if tb else float("nan"),
                "vs_torch_bsr_triton": tt / r["p50"] if tt else float("nan"),
            }
        )
    return out


TARGETS = (  # (op, block, sparsity, compared with, minimum speedup) from the issue
    ("forward", "64x64", 0.9, "vs_dense", 5.0),
    ("forward", "64x64", 0.5, "vs_dense", 1.0),
    ("forward", "32x32", 0.9, "vs_dense", 4.0),
    ("forward", "64x64", 0.9, "vs_torch_bsr", 1.5),
    ("input_grad", "64x64", 0.9, "vs_dense", 3.0),
    ("weight_grad", "64x64", 0.9, "vs_dense", 3.0),
    ("fwd_bwd", "64x64", 0.9, "vs_dense", 3.0),
)


def write_markdown(rows: List[dict], sp: List[dict], path: Path) -> None:
    r0 = rows[0] if rows else {}
    lines = [
        "# triton block-sparse linear vs dense",
        "",
        f"Machine: {r0.get('device', '?')}; torch {r0.get('torch', '?')}, triton {r0.get('triton', '?')}, "
        f"CUDA {r0.get('cuda', '') or '-'}; {r0.get('dtype', '?')}, M = {r0.get('m', '?')}; "
        f"{r0.get('timestamp', '')}",
        "",
        f"Command: `{r0.get('command', '')}`",
        "",
        "Speedup = best dense (cuBLAS eager or torch.compile) median / triton median; "
        "`vs torch BSR` = torch's BSR (cuSPARSE) median / triton median, `vs torch BSR triton` = torch's "
        "own BSR Triton kernel median / triton median (forward).",
        "",
        "| in→out | block | sparsity | forward | input grad | weight grad | fwd+bwd | forward vs torch BSR "
        "| forward vs torch BSR triton |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    table: Dict[Tuple, Dict[str, dict]] = {}
    for s in sp:
        table.setdefault((s["in_features"], s["out_features"], s["block"], s["sparsity"]), {})[s["op"]] = s

    def fmt(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}×"

    for (k, n, block, sparsity), ops in table.items():
        cells = [fmt(ops[o]["vs_dense"]) if o in ops else "-" for o in OPS]
        fwd_t = fmt(ops["forward"]["vs_torch_bsr"]) if "forward" in ops else "-"
        fwd_tt = fmt(ops["forward"]["vs_torch_bsr_triton"]) if "forward" in ops else "-"
        lines.append(f"| {k}→{n} | {block} | {sparsity} | " + " | ".join(cells) + f" | {fwd_t} | {fwd_tt} |")
    lines += ["", "Targets (worst shape):", "", "| op | block | sparsity | vs | target | measured | met |"]
    lines.append("|---|---|---|---|---|---|---|")
    for op, block, sparsity, what, goal in TARGETS:
        vals = [
            s[what]
            for s in sp
            if s["op"] == op and s["block"] == block and s["sparsity"] == sparsity and not math.isnan(s[what])
        ]
        worst = min(vals) if vals else float("nan")
        met = "-" if not vals else ("yes" if worst >= goal else "no")
        lines.append(f"| {op} | {block} | {sparsity} | {what} | {goal}× | {fmt(worst)} | {met} |")
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        lines += ["", "Not measured:", ""]
        seen = set()
        for r in bad:
            key = (r["op"], r["impl"], r["status"])
            if key not in seen:
                seen.add(key)
                lines.append(f"- {r['op']} / {r['impl']}: {r['status']}")
    path.write_text("\n".join(lines) + "\n")


def plot(sp: List[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({(s["in_features"], s["out_features"]) for s in sp})
    ops = [o for o in OPS if any(s["op"] == o for s in sp)]
    blocks = sorted({s["block"] for s in sp}, key=lambda b: tuple(int(v) for v in b.split("x")))
    if not shapes or not ops:
        return
    fig, axes = plt.subplots(
        len(ops), len(shapes), figsize=(3.2 * len(shapes), 2.6 * len(ops)), squeeze=False, sharex=True
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, op in enumerate(ops):
        for j, (k, n) in enumerate(shapes):
            ax = axes[i][j]
            for c, block in enumerate(blocks):
                pts = sorted(
                    (s["sparsity"], s["vs_dense"])
                    for s in sp
                    if s["op"] == op
                    and s["block"] == block
                    and (s["in_features"], s["out_features"]) == (k, n)
                )
                if pts:
                    ax.plot(*zip(*pts), marker="o", color=colors[c % len(colors)], label=f"block {block}")
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
            ax.set_title(f"{op}  {k}→{n}", fontsize=9)
            if i == len(ops) - 1:
                ax.set_xlabel("sparsity")
            if j == 0:
                ax.set_ylabel("speedup vs best dense")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    rows = run(args)
    stem = "gpu_bsr_bench_smoke" if args.smoke else "gpu_bsr_bench"
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path, md_path = (args.out / f"{stem}.{ext}" for ext in ("csv", "png", "md"))
    write_csv(rows, csv_path)
    sp = speedups(rows)
    write_markdown(rows, sp, md_path)
    r0 = rows[0] if rows else {}
    plot(sp, png_path, f"{r0.get('device', '')} · {args.dtype} · M={args.m}")
    print(f"wrote {csv_path}, {png_path}, {md_path}")
    print(md_path.read_text())
    failed = [r for r in rows if r["impl"] == "triton_bsr" and r["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
