"""Build the callables for each implementation and run a validated grid through a timer.

Implementations (the ``impl`` column):

* ``spd_kernels``   — ``sk.sparse_linear`` / ``sk.sparse_input_grad`` / ``sk.sparse_weight_grad``
  (and autograd through ``sparse_linear`` for ``fwd_bwd``) on whichever backend is active;
* ``dense_eager``   — ``F.linear(x, W)``, ``dY·W``, ``dYᵀ·X`` (the full dense weight gradient a
  dense layer computes), and autograd through ``F.linear`` for ``fwd_bwd``;
* ``dense_compiled``— the same functions under ``torch.compile(dynamic=False)``;
* ``torch_sparse``  — ``torch.sparse`` CSR/BSR tensors built from the same pattern. Where torch
  has no kernel for a layout/dtype/op the row is kept with ``status=skipped`` and the reason.

Speedup (column ``speedup_vs_best_dense``) = best dense p50 / this row's p50, where best
dense = min(p50 of dense_eager, p50 of dense_compiled) for the same op, shape and dtype.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .. import ops as _ops
from ..backends import BACKENDS, use_backend
from ..formats import SparseMatrix
from ..nn.binarizers import topk_mask
from .grid import Layout, Plan, ProfileSpec, Shape, dtype_name, plan
from .report import CSV_COLUMNS, DENSE_IMPLS, add_speedups  # noqa: F401
from .timing import Timing, environment, time_callable, time_interleaved, torch_threads

SPD_IMPL = "spd_kernels"
TORCH_SPARSE_IMPL = "torch_sparse"

# max |out - ref| / max |ref| allowed by the one-off correctness check before timing
CHECK_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


class Unsupported(Exception):
    """This implementation cannot run the case (the message says why)."""


@dataclass
class Bench:
    """A timed callable plus how to read its result as dense tensors for the check."""

    fn: Callable[[], object]
    canon: Callable[[object], Tuple[torch.Tensor, ...]]
    backend: str
    note: str = ""


@dataclass
class Inputs:
    x: torch.Tensor  # (M, K)
    dy: torch.Tensor  # (M, N)
    w: torch.Tensor  # (N, K), dense, unmasked (the dense baselines' weight)


@dataclass
class SparseInputs:
    W: SparseMatrix  # the packed weight
    dense: torch.Tensor  # (N, K) W with the pruned entries zeroed
    mask: torch.Tensor  # (N, K) bool, the stored pattern


def make_inputs(shape: Shape, dtype: torch.dtype, device: torch.device, seed: int = 0) -> Inputs:
    """Random normal x, dY and W (never zeros), reproducible from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape.M, shape.K, generator=g)
    dy = torch.randn(shape.M, shape.N, generator=g)
    w = torch.randn(shape.N, shape.K, generator=g) / shape.K**0.5
    return Inputs(*(t.to(device=device, dtype=dtype) for t in (x, dy, w)))


def make_sparse(w: torch.Tensor, layout: Layout, sparsity: float, seed: int = 0) -> SparseInputs:
    """Keep ``round((1 - sparsity) * blocks)`` random blocks of ``w`` in ``layout``."""
    n, k = w.shape
    bm, bk = layout.block
    g = torch.Generator().manual_seed(seed + 1)
    scores = torch.rand(n // bm, k // bk, generator=g)
    block_mask = topk_mask(scores, 1.0 - sparsity).to(w.device)
    W = SparseMatrix.from_dense(w, mask=block_mask, block=layout.block)
    mask = block_mask.repeat_interleave(bm, 0).repeat_interleave(bk, 1)
    return SparseInputs(W, W.to_dense(), mask)


# ------------------------------------------------------------------ reference for the check
def reference(op: str, inp: Inputs, sp: SparseInputs) -> Tuple[torch.Tensor, ...]:
    """float64 dense products with the masked weight, in each op's canonical form."""
    x, dy, w = inp.x.double(), inp.dy.double(), sp.dense.double()
    y = x @ w.t()
    dx = dy @ w
    dw = (dy.t() @ x) * sp.mask
    return {"forward": (y,), "input_grad": (dx,), "weight_grad": (dw,), "fwd_bwd": (dx, dw)}[op]


def rel_errors(outs: Sequence[torch.Tensor], refs: Sequence[torch.Tensor]) -> List[float]:
    """max |out - ref| / max |ref| of each output (NaN for a shape mismatch)."""
    errs = []
    for o, r in zip(outs, refs):
        if tuple(o.shape) != tuple(r.shape):
            errs.append(math.nan)
        elif r.numel() == 0:
            errs.append(0.0)
        else:
            top = r.abs().max().item()
            errs.append((o.double() - r).abs().max().item() / (top if top > 0 else 1.0))
    return errs


def check(outs: Sequence[torch.Tensor], refs: Sequence[torch.Tensor], dtype: torch.dtype) -> Optional[str]:
    """None when every output is within ``CHECK_RTOL[dtype]`` of its float64 reference (relative
    to the reference's max magnitude), else a one-line description of the worst error."""
    tol = CHECK_RTOL[dtype]
    for i, ((o, r), err) in enumerate(zip(zip(outs, refs), rel_errors(outs, refs))):
        if tuple(o.shape) != tuple(r.shape):
            return f"output {i}: shape {tuple(o.shape)} != reference {tuple(r.shape)}"
        if not err <= tol:
            return f"output {i}: max error {err:.3g} (relative to max |ref|) > {tol:g}"
    return None


# ------------------------------------------------------------------ our kernels
def spd_bench(op: str, inp: Inputs, W: SparseMatrix, backend: str) -> Bench:
    x, dy = inp.x, inp.dy
    if op == "forward":
        return Bench(lambda: _ops.sparse_linear(x, W), lambda y: (y,), backend)
    if op == "input_grad":
        return Bench(lambda: _ops.sparse_input_grad(dy, W), lambda dx: (dx,), backend)
    if op == "weight_grad":
        return Bench(
            lambda: _ops.sparse_weight_grad(dy, x, W), lambda dv: (W.with_values(dv).to_dense(),), backend
        )
    xg = x.detach().clone().requires_grad_(True)
    vals = W.values.detach().clone().requires_grad_(True)
    Wg = W.with_values(vals)

    def fwd_bwd():
        return torch.autograd.grad(_ops.sparse_linear(xg, Wg), (xg, vals), dy)

    return Bench(fwd_bwd, lambda g: (g[0], W.with_values(g[1]).to_dense()), backend)


def kernel_bench(op: str, inp: Inputs, W: SparseMatrix, backend: str) -> Bench:
    """The backend's kernels called directly (no dispatch, no autograd): what a benchmark of
    the kernels alone times. ``fwd_bwd`` composes the three products."""
    b = BACKENDS[backend]
    x, dy, vals, meta = inp.x, inp.dy, W.values, W.metadata()
    fns = {
        "forward": lambda: b.dds_t(x, vals, meta, None, "none", False)[0],
        "input_grad": lambda: b.dds(dy, vals, meta),
        "weight_grad": lambda: b.sdd(dy, x, vals, meta),
    }
    if op == "fwd_bwd":
        f1, f2, f3 = fns.values()
        return Bench(lambda: (f1(), f2(), f3()), lambda o: (o[1], W.with_values(o[2]).to_dense()), backend)
    canon = (lambda dv: (W.with_values(dv).to_dense(),)) if op == "weight_grad" else (lambda t: (t,))
    return Bench(fns[op], canon, backend, "kernel called directly")


# ------------------------------------------------------------------ dense baselines
def _dense_fns(op: str, inp: Inputs):
    x, dy, w = inp.x, inp.dy, inp.w
    if op == "forward":
        return (lambda a, b: F.linear(a, b)), (x, w), None
    if op == "input_grad":
        return (lambda a, b: a @ b), (dy, w), None
    if op == "weight_grad":
        return (lambda a, b: a.t() @ b), (dy, x), None
    xg = x.detach().clone().requires_grad_(True)
    wg = w.detach().clone().requires_grad_(True)
    return (lambda a, b: F.linear(a, b)), (xg, wg), dy


def dense_bench(op: str, inp: Inputs, compiled: bool, compile_backend: str = "inductor") -> Bench:
    f, args, grad_out = _dense_fns(op, inp)
    note = ""
    if compiled:
        # a fresh dynamo cache per case: dynamic=False and no recompile limit across shapes
        torch._dynamo.reset()
        f = torch.compile(f, dynamic=False, backend=compile_backend)
        note = "torch.compile(dynamic=False), compile time excluded"
    backend = compile_backend if compiled else "aten"
    if grad_out is None:
        return Bench(lambda: f(*args), lambda out: (out,), backend, note)

    def fwd_bwd():
        return torch.autograd.grad(f(*args), args, grad_out)

    return Bench(fwd_bwd, lambda g: tuple(g), backend, note)


# ------------------------------------------------------------------ torch.sparse
def torch_sparse_weight(W: SparseMatrix, transposed: bool = False) -> torch.Tensor:
    """W (or Wᵀ) as a torch.sparse CSR/BSR tensor with exactly W's pattern (from its metadata;
    the transpose from the CSC metadata, no dense round trip)."""
    bm, bk = W.block
    with warnings.catch_warnings():  # "sparse CSR support is in beta": known, once is enough
        warnings.simplefilter("ignore", UserWarning)
        return _torch_sparse_weight(W, transposed, bm, bk)


def _torch_sparse_weight(W: SparseMatrix, transposed: bool, bm: int, bk: int) -> torch.Tensor:
    if transposed:
        values = W.values[W.perm_t.long()].transpose(1, 2)
        crow, col, size, block = W.col_offsets, W.row_indices_t, (W.shape[1], W.shape[0]), (bk, bm)
    else:
        values, crow, col, size, block = W.values, W.row_offsets, W.col_indices, W.shape, (bm, bk)
    if block == (1, 1):
        return torch.sparse_csr_tensor(crow, col, values.reshape(-1), size)
    return torch.sparse_bsr_tensor(crow, col, values.contiguous(), size)


def _first_working(candidates, what: str):
    """Run each (note, fn) once; return the first that works, or raise Unsupported with the reasons."""
    reasons = []
    for note, fn in candidates:
        try:
            out = fn()
        except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
            reasons.append(f"{note}: {type(exc).__name__}: {_short(exc)}")
            continue
        return note, fn, out
    raise Unsupported(f"torch.sparse has no {what}: " + " | ".join(reasons))


def _short(exc: BaseException, n: int = 160) -> str:
    msg = " ".join(str(exc).split())
    return msg if len(msg) <= n else msg[: n - 3] + "..."


def torch_sparse_bench(op: str, inp: Inputs, W: SparseMatrix) -> Bench:
    x, dy = inp.x, inp.dy
    try:
        ws = torch_sparse_weight(W)
        wts = torch_sparse_weight(W, transposed=True)
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
        raise Unsupported(f"cannot build the torch.sparse tensor: {_short(exc)}") from None
    dyt = dy.t().contiguous()
    fwd = [("F.linear(x, W_sparse)", lambda: F.linear(x, ws)), ("(W_sparse @ xᵀ)ᵀ", lambda: (ws @ x.t()).t())]
    dxs = [
        ("dY @ W_sparse", lambda: dy @ ws),
        ("(W_sparseᵀ @ dYᵀ)ᵀ with a transposed sparse copy of W", lambda: (wts @ dyt).t()),
    ]
    dws = [
        ("sampled_addmm(W_sparse, dYᵀ, X)", lambda: torch.sparse.sampled_addmm(ws, dy.t(), x, beta=0.0)),
        (
            "sampled_addmm(W_sparse, dYᵀ, X), dYᵀ made contiguous outside the timed call",
            lambda: torch.sparse.sampled_addmm(ws, dyt, x, beta=0.0),
        ),
    ]
    if op == "forward":
        note, fn, _ = _first_working(fwd, "forward product for this layout/dtype")
        return Bench(fn, lambda y: (y,), "torch.sparse", note)
    if op == "input_grad":
        note, fn, _ = _first_working(dxs, "dense @ sparse (input grad) for this layout/dtype")
        return Bench(fn, lambda dx: (dx,), "torch.sparse", note)
    if op == "weight_grad":
        note, fn, _ = _first_working(dws, "sampled dense·dense (weight grad) for this layout/dtype")
        return Bench(fn, lambda dw: (dw.to_dense(),), "torch.sparse", note)
    n1, f1, _ = _first_working(fwd, "forward product for this layout/dtype")
    n2, f2, _ = _first_working(dxs, "dense @ sparse (input grad) for this layout/dtype")
    n3, f3, _ = _first_working(dws, "sampled dense·dense (weight grad) for this layout/dtype")

    def fwd_bwd():
        return f1(), f2(), f3()

    # torch.sparse autograd would produce a dense (N, K) weight gradient; compose the three
    # products a sparse layer needs instead
    note = f"forward + input grad + weight grad composed: {n1}; {n2}; {n3}"
    return Bench(fwd_bwd, lambda o: (o[1], o[2].to_dense()), "torch.sparse", note)


# ------------------------------------------------------------------ the run
Timer = Callable[..., Timing]


def _base_row(op: str, shape: Shape, dtype: torch.dtype, env: Dict[str, str]) -> Dict[str, object]:
    row: Dict[str, object] = {c: "" for c in CSV_COLUMNS}
    row.update(op=op, dtype=dtype_name(dtype), shape=shape.name, M=shape.M, N=shape.N, K=shape.K)
    row.update(env)
    return row


def prepare_case(row, bench_fn: Callable[[], Bench], refs, dtype, spec: ProfileSpec):
    """Build the bench and run it once (checked against ``refs``, the float64 results, unless
    None); the bench, or None with ``row``'s ``status`` (skipped, error or mismatch) and
    ``note`` filled in."""
    try:
        bench = bench_fn()
    except Unsupported as exc:
        row.update(status="skipped", note=str(exc))
        return None
    row["backend"] = bench.backend
    row["note"] = bench.note
    try:
        out = bench.fn()
    except Exception as exc:  # noqa: BLE001  (a failing kernel is reported, the grid goes on)
        row.update(status="error", note=f"{type(exc).__name__}: {_short(exc, 300)}")
        return None
    if refs is not None and spec.check:
        outs = bench.canon(out)
        row["max_rel_err"] = max(rel_errors(outs, refs), default=0.0)
        bad = check(outs, refs, dtype)
        if bad is not None:
            row.update(status="mismatch", note=(bench.note + "; " if bench.note else "") + bad)
            return None
    return bench


def _record(row, t: Timing):
    row.update(t.ms())
    row.update(samples=t.samples, status="ok")
    return row


def measure_case(
    row, bench_fn: Callable[[], Bench], refs, dtype, timer: Timer, spec: ProfileSpec, device, context=None
):
    """Build the bench, run it once (and check it against ``refs``, the float64 results, unless
    None), then time it on ``device`` with ``spec``'s settings; fills ``row`` in place (``status`` ok,
    skipped, error or mismatch, with the reason in ``note``)."""
    with context if context is not None else contextlib.nullcontext():
        bench = prepare_case(row, bench_fn, refs, dtype, spec)
        if bench is None:
            return row
        t = timer(
            bench.fn,
            device=device,
            warmup=spec.warmup,
            min_run_time=spec.min_run_time,
            min_samples=spec.min_samples,
            threads=spec.threads,
        )
    return _record(row, t)


def run_plan(plan_: Plan, *, timer: Timer = time_callable, progress: bool = True) -> List[Dict[str, object]]:
    """Time every implementation of every case of a validated plan; rows with speedups filled.

    With ``spec.interleave`` (CPU), the dense baselines and every sparse case of one (shape,
    dtype, op) are checked first and then timed side by side
    (:func:`~spd_kernels.profiling.timing.time_interleaved`: ``min_samples`` rounds, one sample
    of each implementation a round, each sample at least ``min_run_time / min_samples`` seconds
    of back-to-back calls), so a drift of the machine cannot favour the dense row timed once
    before twenty sparse ones; otherwise each is timed on its own with ``timer``, in order.
    """
    from tqdm.auto import tqdm

    spec = plan_.spec
    env = environment(plan_.device, spec.threads)
    rows: List[Dict[str, object]] = []
    forced = None if plan_.backend == "auto" else plan_.backend
    bar = tqdm(total=plan_.n_timings(), desc="spd profile", unit="timing", disable=not progress)
    bench_of = kernel_bench if spec.direct else spd_bench
    interleave = bool(spec.interleave) and plan_.device.type == "cpu"

    def step(desc: str):
        bar.set_postfix_str(desc, refresh=False)

    pending: List[Tuple[Dict[str, object], Bench]] = []

    def measure(row, bench_fn, refs, dtype, context=None):
        if not interleave:
            measure_case(row, bench_fn, refs, dtype, timer, spec, plan_.device, context=context)
            return
        bench = prepare_case(row, bench_fn, refs, dtype, spec)  # inside use_backend(forced)
        if bench is not None:
            pending.append((row, bench))

    def flush():
        """Time the prepared benches of one (shape, dtype, op) side by side."""
        if not pending:
            return
        timings = time_interleaved(
            {i: b.fn for i, (_, b) in enumerate(pending)},
            rounds=int(spec.min_samples),
            calls=1,
            warmup=max(int(spec.warmup), 1),
            threads=spec.threads,
            min_block_time=float(spec.min_run_time) / int(spec.min_samples),
        )
        for i, (row, _) in enumerate(pending):
            _record(row, timings[i])
        pending.clear()

    with torch_threads(spec.threads), use_backend(forced) if interleave else contextlib.nullcontext():
        for shape in plan_.shapes:
            for dtype in plan_.dtypes:
                inp = make_inputs(shape, dtype, plan_.device, spec.seed)
                sps = {
                    (lay, s): make_sparse(inp.w, lay, s, spec.seed)
                    for lay in plan_.layouts
                    for s in plan_.sparsities
                }
                for op in plan_.ops:
                    for impl, compiled in (("dense_eager", False), ("dense_compiled", True)):
                        if (impl == "dense_eager" and "eager" not in plan_.baselines) or (
                            impl == "dense_compiled" and "compiled" not in plan_.baselines
                        ):
                            continue
                        step(f"{shape.name} {op} {impl}")
                        row = _base_row(op, shape, dtype, env)
                        row.update(impl=impl, layout="dense", block="", sparsity="", density=1.0)
                        rows.append(row)
                        bench_fn = lambda: dense_bench(op, inp, compiled, spec.compile_backend)  # noqa: E731
                        measure(row, bench_fn, None, dtype)
                        bar.update(1)
                    for layout in plan_.layouts:
                        for s in plan_.sparsities:
                            sp = sps[(layout, s)]
                            refs = reference(op, inp, sp) if spec.check else None
                            common = dict(
                                layout=layout.name,
                                block=layout.block_str,
                                sparsity=s,
                                density=round(sp.W.density, 6),
                            )
                            step(f"{shape.name} {op} {layout.name} s={s:g}")
                            row = _base_row(op, shape, dtype, env)
                            row.update(impl=SPD_IMPL, **common)
                            backend = plan_.backend_names[(op, dtype, layout.block)]
                            rows.append(row)
                            measure(
                                row,
                                lambda: bench_of(op, inp, sp.W, backend),
                                refs,
                                dtype,
                                context=use_backend(forced),
                            )
                            bar.update(1)
                            if "torch-sparse" in plan_.baselines:
                                row = _base_row(op, shape, dtype, env)
                                row.update(impl=TORCH_SPARSE_IMPL, **common)
                                rows.append(row)
                                measure(row, lambda: torch_sparse_bench(op, inp, sp.W), refs, dtype)
                                bar.update(1)
                    flush()
    bar.close()
    return add_speedups(rows)


def run_profile(
    spec: ProfileSpec, *, timer: Timer = time_callable, progress: bool = True
) -> List[Dict[str, object]]:
    """Validate ``spec`` (errors raise before anything is timed), then run it."""
    return run_plan(plan(spec), timer=timer, progress=progress)
