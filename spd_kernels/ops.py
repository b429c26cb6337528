"""The custom ops of a sparse linear layer and its autograd, registered with ``torch.library``.

=========================  ==========================================  ==================
op                         computes                                     autograd
=========================  ==========================================  ==================
``spd_kernels::dds_t``     ``y = act(x·Wᵀ + b)`` (and ``z = x·Wᵀ + b``)  to x, values, bias
``spd_kernels::dds``       ``dX = dY·W`` (walks W by its CSC metadata)   --
``spd_kernels::sdd``       ``dW = (dYᵀ·X)`` at the stored blocks only    --
=========================  ==========================================  ==================

Each op checks the weight's metadata (:func:`spd_kernels.formats.check_metadata`: the same
``ValueError`` on every device and backend, never an out-of-bounds read; once per metadata), then
picks its backend at run time (:mod:`spd_kernels.backends`); each has a fake implementation so
``torch.compile(fullgraph=True)`` and ``torch.export`` trace through it.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .activations import NEEDS_PREACT, activation_backward, check_activation
from .backends import BACKENDS, choose_backend, forced_backend, use_backend
from .formats import SparseMatrix, check_metadata


def _block(values: Tensor) -> Tuple[int, int]:
    return int(values.shape[1]), int(values.shape[2])


def _n(values: Tensor, row_offsets: Tensor) -> int:
    return (row_offsets.shape[0] - 1) * values.shape[1]


def _k(values: Tensor, col_offsets: Tensor) -> int:
    return (col_offsets.shape[0] - 1) * values.shape[2]


def _density(values: Tensor, row_offsets: Tensor, col_offsets: Tensor) -> float:
    """Stored blocks / all blocks, from the shapes alone (no device read)."""
    blocks = (row_offsets.shape[0] - 1) * (col_offsets.shape[0] - 1)
    return values.shape[0] / blocks if blocks else 0.0


def _check_operands(values: Tensor, row_offsets: Tensor, col_offsets: Tensor, **dense: Tensor) -> None:
    """The dense operands of an op (``x``: (M, K), ``dy``: (M, N), ``bias``: (N,)) against the
    weight, before any backend runs: the same error on every backend instead of a broadcast, a
    promotion or a shape error from inside one."""
    if not values.is_floating_point():
        raise TypeError(f"values must be a floating tensor, got {values.dtype}")
    n, k = _n(values, row_offsets), _k(values, col_offsets)
    want = {"x": (None, k), "dy": (None, n), "bias": (n,)}
    rows = {}
    for name, t in dense.items():
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        shape = want[name]
        if t.dim() != len(shape) or any(w is not None and w != g for w, g in zip(shape, t.shape)):
            spec = ", ".join("M" if w is None else str(w) for w in shape)
            raise ValueError(
                f"{name} must have shape ({spec}{',' if len(shape) == 1 else ''}), got {tuple(t.shape)}"
            )
        if t.dtype != values.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but the weight values have dtype {values.dtype}")
        if t.device != values.device:
            raise ValueError(f"{name} is on {t.device} but the weight values are on {values.device}")
        if len(shape) == 2:
            rows[name] = t.shape[0]
    if len(set(rows.values())) > 1:
        raise ValueError(f"dy and x must have the same number of rows, got {rows}")


# --------------------------------------------------------------------------- dds_t
@torch.library.custom_op("spd_kernels::dds_t", mutates_args=())
def dds_t(
    x: Tensor,
    values: Tensor,
    row_offsets: Tensor,
    col_indices: Tensor,
    block_rows: Tensor,
    col_offsets: Tensor,
    row_indices_t: Tensor,
    perm_t: Tensor,
    bias: Optional[Tensor],
    activation: str,
    save_preact: bool,
) -> Tuple[Tensor, Tensor]:
    """Forward: x (M, K), W (N, K) sparse -> (y (M, N), z (M, N) or empty)."""
    meta = (row_offsets, col_indices, block_rows, col_offsets, row_indices_t, perm_t)
    check_metadata(values, meta)
    _check_operands(values, row_offsets, col_offsets, x=x, bias=bias)
    check_activation(activation)
    backend = _backend("dds_t", x, values, row_offsets, col_offsets)
    y, z = backend.dds_t(x, values, meta, bias, activation, save_preact)
    if not save_preact:
        z = x.new_empty(0)
    return y, z


@dds_t.register_fake
def _(
    x,
    values,
    row_offsets,
    col_indices,
    block_rows,
    col_offsets,
    row_indices_t,
    perm_t,
    bias,
    activation,
    save_preact,
):
    n = _n(values, row_offsets)
    y = x.new_empty(x.shape[0], n)
    z = x.new_empty(x.shape[0], n) if save_preact else x.new_empty(0)
    return y, z


# --------------------------------------------------------------------------- dds
@torch.library.custom_op("spd_kernels::dds", mutates_args=())
def dds(
    dy: Tensor,
    values: Tensor,
    row_offsets: Tensor,
    col_indices: Tensor,
    block_rows: Tensor,
    col_offsets: Tensor,
    row_indices_t: Tensor,
    perm_t: Tensor,
) -> Tensor:
    """Input grad: dy (M, N), W (N, K) sparse -> dX (M, K) = dy · W."""
    meta = (row_offsets, col_indices, block_rows, col_offsets, row_indices_t, perm_t)
    check_metadata(values, meta)
    _check_operands(values, row_offsets, col_offsets, dy=dy)
    return _backend("dds", dy, values, row_offsets, col_offsets).dds(dy, values, meta)


@dds.register_fake
def _(dy, values, row_offsets, col_indices, block_rows, col_offsets, row_indices_t, perm_t):
    return dy.new_empty(dy.shape[0], _k(values, col_offsets))


# --------------------------------------------------------------------------- sdd
@torch.library.custom_op("spd_kernels::sdd", mutates_args=())
def sdd(
    dy: Tensor,
    x: Tensor,
    values: Tensor,
    row_offsets: Tensor,
    col_indices: Tensor,
    block_rows: Tensor,
    col_offsets: Tensor,
    row_indices_t: Tensor,
    perm_t: Tensor,
) -> Tensor:
    """Weight grad: (dyᵀ · x) sampled at W's stored blocks -> shaped like ``values``."""
    meta = (row_offsets, col_indices, block_rows, col_offsets, row_indices_t, perm_t)
    check_metadata(values, meta)
    _check_operands(values, row_offsets, col_offsets, dy=dy, x=x)
    return _backend("sdd", dy, values, row_offsets, col_offsets).sdd(dy, x, values, meta)


@sdd.register_fake
def _(dy, x, values, row_offsets, col_indices, block_rows, col_offsets, row_indices_t, perm_t):
    return torch.empty_like(values)


# --------------------------------------------------------------------------- autograd
def _setup_context(ctx, inputs, output):
    (x, values, *meta, bias, activation, save_preact) = inputs
    y, z = output
    ctx.activation = activation
    ctx.has_bias = bias is not None
    # autograd may run the backward on another thread (one per CUDA device), where the
    # use_backend() context of the forward is not visible: carry the choice over.
    ctx.forced_backend = forced_backend()
    ctx.save_for_backward(x, values, *meta, y, z)


def _backward(ctx, grad_y, grad_z):
    x, values, *rest = ctx.saved_tensors
    meta, y, z = rest[:6], rest[6], rest[7]
    needs = ctx.needs_input_grad
    dz = activation_backward(grad_y, y, z, ctx.activation)
    if grad_z is not None and z.numel():
        dz = dz + grad_z
    dx = dvalues = dbias = None
    with use_backend(ctx.forced_backend):
        if needs[0]:
            dx = dds(dz, values, *meta)
        if needs[1]:
            dvalues = sdd(dz, x, values, *meta)
    if ctx.has_bias and needs[8]:
        dbias = dz.sum(0)
    return (dx, dvalues, None, None, None, None, None, None, dbias, None, None)


dds_t.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- dispatch cache
# The backend of a call depends on (op, device, dtype, block, density, forced backend) only: it
# is chosen once per such key and remembered (by name, so a re-registered backend is picked up).
_DISPATCH_CACHE: Dict[tuple, str] = {}


def clear_dispatch_cache() -> None:
    """Forget the remembered backend decisions (after changing what a backend supports, e.g. in
    tests)."""
    _DISPATCH_CACHE.clear()


def _backend(op: str, t: Tensor, values: Tensor, row_offsets: Tensor, col_offsets: Tensor):
    density = _density(values, row_offsets, col_offsets)
    key = (op, t.device, t.dtype, _block(values), density, forced_backend())
    backend = BACKENDS.get(_DISPATCH_CACHE.get(key, ""))
    if backend is None:
        backend = choose_backend(op, t.device, t.dtype, key[3], density)
        _DISPATCH_CACHE[key] = backend.name
    return backend


# --------------------------------------------------------------------------- inference fast path
# An inference call (nothing needs a gradient, eager, plain tensors) skips the custom-op
# dispatcher and calls the backend's forward directly. The metadata check still runs (it is
# cached per metadata).
def _needs_grad(x: Tensor, values: Tensor, bias: Optional[Tensor]) -> bool:
    return torch.is_grad_enabled() and (
        x.requires_grad or values.requires_grad or (bias is not None and bias.requires_grad)
    )


def _fast_path_ok(x: Tensor, values: Tensor, bias: Optional[Tensor]) -> bool:
    if type(x) is not Tensor or type(values) not in (Tensor, torch.nn.Parameter):
        return False  # subclasses: fake / functional tensors of a tracer
    return not torch.compiler.is_compiling() and not _needs_grad(x, values, bias)


def linear_forward(
    x2: Tensor, values: Tensor, meta: Tuple[Tensor, ...], bias: Optional[Tensor], activation: str
) -> Tensor:
    """``act(x2 · Wᵀ + b)`` for 2-D ``x2`` (checked by the caller) and a weight given as its values
    and the six metadata arrays: the backend directly when no gradient is needed, the
    differentiable custom op otherwise."""
    if _fast_path_ok(x2, values, bias):
        check_metadata(values, meta)
        return _backend("dds_t", x2, values, meta[0], meta[3]).dds_t(
            x2, values, meta, bias, activation, False
        )[0]
    save_preact = activation in NEEDS_PREACT and _needs_grad(x2, values, bias)
    return dds_t(x2, values, *meta, bias, activation, save_preact)[0]


# --------------------------------------------------------------------------- public API
def _check_dense(t: Tensor, name: str, weight: SparseMatrix, dim: int) -> None:
    """``t`` is a floating (..., W.shape[dim]) tensor on the weight's device and dtype."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not isinstance(weight, SparseMatrix):
        raise TypeError(f"weight must be a spd_kernels.SparseMatrix, got {type(weight).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
    width, what = weight.shape[dim], "NK"[dim]
    if t.dim() < 1:
        raise ValueError(f"{name} must have shape (..., {what}), got a 0-d tensor")
    if t.shape[-1] != width:
        raise ValueError(
            f"{name} has {t.shape[-1]} features (last dim of shape {tuple(t.shape)}) "
            f"but the weight {weight.shape} expects {what}={width}"
        )
    if t.device != weight.device:
        raise ValueError(f"{name} is on {t.device} but the weight is on {weight.device}")
    if t.dtype != weight.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but the weight has dtype {weight.dtype}")


def _check_inputs(x: Tensor, weight: SparseMatrix, bias: Optional[Tensor]) -> None:
    _check_dense(x, "x", weight, 1)
    n = weight.shape[0]
    if bias is not None:
        if not isinstance(bias, Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if tuple(bias.shape) != (n,):
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
        if bias.device != x.device:
            raise ValueError(f"bias is on {bias.device} but x is on {x.device}")
        if bias.dtype != x.dtype:
            raise TypeError(f"bias has dtype {bias.dtype} but x has dtype {x.dtype}")


def sparse_linear(
    x: Tensor,
    weight: SparseMatrix,
    bias: Optional[Tensor] = None,
    activation: Optional[str] = None,
) -> Tensor:
    """``act(x · Wᵀ + bias)`` for a sparse ``W`` of shape (N, K).

    x: (..., K) floating, same dtype and device as ``weight``; bias: (N,) or None;
    activation: None/"none", "relu", "gelu" (erf), "gelu_tanh". Returns (..., N).
    Differentiable w.r.t. ``x``, ``weight.values`` and ``bias``; the weight gradient is
    computed only at the stored blocks.
    """
    _check_inputs(x, weight, bias)
    activation = check_activation(activation)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, weight.shape[1])
    y = linear_forward(x2, weight.values, weight.metadata(), bias, activation)
    return y.reshape(*lead, weight.shape[0])


def sparse_input_grad(dy: Tensor, weight: SparseMatrix) -> Tensor:
    """``dY · W``: (..., N) -> (..., K). The op behind the input gradient, for benchmarks."""
    _check_dense(dy, "dy", weight, 0)
    lead = dy.shape[:-1]
    return dds(dy.reshape(-1, weight.shape[0]), weight.values, *weight.metadata()).reshape(
        *lead, weight.shape[1]
    )


def sparse_weight_grad(dy: Tensor, x: Tensor, weight: SparseMatrix) -> Tensor:
    """``(dYᵀ · X)`` at the stored blocks of ``weight``, shaped like ``weight.values``."""
    _check_dense(dy, "dy", weight, 0)
    _check_dense(x, "x", weight, 1)
    if dy.shape[:-1] != x.shape[:-1]:
        raise ValueError(f"dy {tuple(dy.shape)} and x {tuple(x.shape)} must have the same leading dims")
    return sdd(
        dy.reshape(-1, weight.shape[0]),
        x.reshape(-1, weight.shape[1]),
        weight.values,
        *weight.metadata(),
    )


__all__: List[str] = [
    "clear_dispatch_cache",
    "dds_t",
    "dds",
    "sdd",
    "sparse_linear",
    "sparse_input_grad",
    "sparse_weight_grad",
]
