"""Block-sparse (BSR) linear layer in Triton: forward, input grad, sampled weight grad.

``W`` is ``(N, K)``, stored as ``(nnz_blocks, bm, bk)`` blocks with CSR-of-blocks metadata and
its CSC (transposed) metadata (see :mod:`spd_kernels.formats`). ``X`` is ``(M, K)``, ``dY`` is
``(M, N)``; any ``M`` (tiles are masked on M, the caller pads nothing), any strides.

=============  ===================================================================================
kernel         what one program computes
=============  ===================================================================================
``dds_t``      ``Y[m-tile, block row r] = act(X[m-tile, :]·W[r, :]ᵀ + b)``: walks the stored blocks
               of block row ``r`` (row_offsets / col_indices); bias, activation and the optional
               pre-activation store are fused in the epilogue.
``dds``        ``dX[m-tile, block col c] = dY[m-tile, :]·W[:, c]``: walks block column ``c`` through
               col_offsets / row_indices_t / perm_t, reading the values in place (no transposed copy).
``sdd``        ``dW_j = dY[m-chunk, rows_j]ᵀ·X[m-chunk, cols_j]`` for one stored block ``j`` and one
               chunk of M. With more than one chunk (``split``), every program writes a float32
               partial to its own slot and the partials are summed by ``torch.sum`` over the chunk
               axis: deterministic, no atomics.
=============  ===================================================================================

Products accumulate in float32. float16/bfloat16 operands go to the tensor cores as they are;
float32 operands use TF32 when torch allows it for matmuls (``torch.set_float32_matmul_precision``
other than ``"highest"``), IEEE float32 otherwise, so they match torch's own dense product.
Under the interpreter (``TRITON_INTERPRET=1``, CPU tensors) float32 is IEEE, bfloat16 operands
are upcast to float32 inside the kernel (the interpreter cannot multiply bfloat16), and the
autotuner has a single config, so nothing is benchmarked.

Tile order: programs are grouped ``GROUP_M`` M-tiles at a time over the block rows (columns),
so a group re-reads the same X (dY) tiles and W blocks while they are in L2. Autotuning is keyed
on (M bucket, N/bm, K/bk, bm, bk, density bucket, dtypes, input precision, upcast) and, for the
forward, the epilogue (bias, activation, pre-activation store). Offsets that scale with M·K are
int64; the bias may be strided.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources


def _interpret_requested() -> bool:
    """Whether triton's decorators will build interpreted kernels (as triton itself reads it)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


_INTERPRET_AT_IMPORT = _interpret_requested()

ACTIVATION_CODES = {"none": 0, "relu": 1, "gelu": 2, "gelu_tanh": 3}
# Autotune key. Triton adds the dtypes of the tensor arguments and silently skips names that are
# not kernel arguments (tests check they all are). The epilogue and the input precision change
# the best config, so they are part of it.
_KEY = ["M_BUCKET", "NBR", "NBC", "BM", "BK", "DENSITY_BUCKET", "UPCAST", "INPUT_PRECISION"]
_KEY_DDS_T = _KEY + ["HAS_BIAS", "ACTIVATION", "SAVE_PREACT"]
# Arguments a kernel receives only for the key (M_BUCKET, DENSITY_BUCKET, and the grid sizes or
# SPLIT a kernel does not read) must not be specialised on (value 1, divisibility by 16): each
# value class would compile another variant of the same code.
_KEY_ONLY = ["M_BUCKET", "DENSITY_BUCKET"]


# ----------------------------------------------------------------------------- autotune configs
def _mm_configs() -> List[triton.Config]:
    if _INTERPRET_AT_IMPORT:
        # one config: nothing to benchmark; 32 rows so that small test shapes span several tiles
        return [triton.Config({"BLOCK_M": 32, "GROUP_M": 2}, num_warps=4, num_stages=1)]
    # the first config that fits is also the fixed choice under SPD_TRITON_AUTOTUNE=0
    return [
        triton.Config({"BLOCK_M": 128, "GROUP_M": 8}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 256, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 64, "GROUP_M": 8}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_M": 32, "GROUP_M": 8}, num_warps=4, num_stages=2),  # small M, big fp32 blocks
    ]


def _sdd_configs() -> List[triton.Config]:
    if _INTERPRET_AT_IMPORT:
        return [triton.Config({"BLOCK_M": 32}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 32}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 128}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 32}, num_warps=4, num_stages=2),
    ]


def _smem_limit() -> int:
    try:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return int(getattr(props, "shared_memory_per_block_optin", 0)) or 99 * 1024
    except Exception:  # no device (interpreter): nothing to prune
        return 1 << 30


class _Prune:
    """Drop configs whose pipelined tiles cannot fit in shared memory (keeps the smallest).

    Estimate: buffers x (elements of one stage's tiles) x element size; the buffer counts
    (num_stages - 1 for the row/column walks, num_stages for the weight grad) match what Triton
    3.7 allocates for these kernels on sm_80 / sm_90, or overestimate it.
    """

    def __init__(self, per_stage_elems, buffers):
        self.per_stage_elems = per_stage_elems
        self.buffers = buffers

    def need(self, cfg: triton.Config, named_args: dict) -> int:
        """Estimated shared memory (bytes) of ``cfg`` for these arguments (v_ptr, BM, BK)."""
        esize = named_args["v_ptr"].element_size()
        n_buf = max(1, self.buffers(cfg.num_stages))
        return (
            n_buf
            * self.per_stage_elems(cfg.kwargs["BLOCK_M"], int(named_args["BM"]), int(named_args["BK"]))
            * esize
        )

    def __call__(self, configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        limit = _smem_limit()
        kept = [c for c in configs if self.need(c, args) <= limit]
        return kept or [min(configs, key=lambda c: self.need(c, args))]


_prune_dds_t = _Prune(lambda block_m, bm, bk: block_m * bk + bm * bk, lambda stages: stages - 1)
_prune_dds = _Prune(lambda block_m, bm, bk: block_m * bm + bm * bk, lambda stages: stages - 1)
_prune_sdd = _Prune(lambda block_m, bm, bk: block_m * (bm + bk), lambda stages: stages)


# ----------------------------------------------------------------------------- kernels
# Written flat (no nested @triton.jit helpers, pointer tiles built once outside the loops): the
# interpreter pays per call and per tensor op, and CI runs these kernels under it. Only builtins of
# triton.language are used (tl.full, not the @jit tl.zeros / tl.cdiv of triton.language.standard):
# those are interpreted only when triton itself was imported under TRITON_INTERPRET=1, and the
# interpreted copy of this module must work whatever the order of imports was.


@triton.autotune(configs=_mm_configs(), key=_KEY_DDS_T, prune_configs_by={"early_config_prune": _prune_dds_t})
@triton.jit(do_not_specialize=_KEY_ONLY + ["NBC"])
def _bsr_dds_t_kernel(
    x_ptr,
    v_ptr,
    row_offsets_ptr,
    col_indices_ptr,
    bias_ptr,
    y_ptr,
    z_ptr,
    M,
    NBR,
    NBC,
    M_BUCKET,
    DENSITY_BUCKET,
    stride_xm,
    stride_xk,
    stride_vb,
    stride_vm,
    stride_vk,
    stride_ym,
    stride_yn,
    stride_zm,
    stride_zn,
    stride_b,
    BM: tl.constexpr,
    BK: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    SAVE_PREACT: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """y (M, NBR·BM) = act(x (M, NBC·BK) · Wᵀ + bias); z = the pre-activation if SAVE_PREACT.

    ACTIVATION codes as in ACTIVATION_CODES.
    """
    # tile (pid_m, block row pid_n), GROUP_M M-tiles at a time
    pid = tl.program_id(0)
    num_pid_m = (M + BLOCK_M - 1) // BLOCK_M
    group = GROUP_M * NBR
    first_pid_m = (pid // group) * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % group) % group_size_m
    pid_n = (pid % group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = (offs_m < M)[:, None]
    offs_m64 = offs_m.to(tl.int64)[:, None]
    offs_bm = tl.arange(0, BM)
    offs_bk = tl.arange(0, BK)
    x_ptrs = x_ptr + offs_m64 * stride_xm + offs_bk[None, :] * stride_xk
    # Wᵀ block read straight from the row-major block: (BK, BM)
    w_t_ptrs = v_ptr + (offs_bk[:, None] * stride_vk + offs_bm[None, :] * stride_vm)
    x_step = BK * stride_xk

    start = tl.load(row_offsets_ptr + pid_n)
    end = tl.load(row_offsets_ptr + pid_n + 1)
    acc = tl.full((BLOCK_M, BM), 0.0, tl.float32)
    for j in range(start, end):
        # int64: with a column-major x, c·BK·stride_xk reaches M·K, past int32 from 2³¹ elements
        c = tl.load(col_indices_ptr + j).to(tl.int64)
        x = tl.load(x_ptrs + c * x_step, mask=mask_m, other=0.0)
        w_t = tl.load(w_t_ptrs + tl.cast(j, tl.int64) * stride_vb)
        if UPCAST:
            x = x.to(tl.float32)
            w_t = w_t.to(tl.float32)
        acc = tl.dot(x, w_t, acc, input_precision=INPUT_PRECISION)

    offs_n = pid_n * BM + offs_bm
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n * stride_b).to(tl.float32)[None, :]
    if SAVE_PREACT:
        z_ptrs = z_ptr + offs_m64 * stride_zm + offs_n[None, :] * stride_zn
        tl.store(z_ptrs, acc.to(z_ptr.dtype.element_ty), mask=mask_m)
    if ACTIVATION == 1:
        acc = tl.where(acc < 0.0, 0.0, acc)  # keeps NaN, as torch.relu does
    elif ACTIVATION == 2:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    elif ACTIVATION == 3:
        # 0.5·z·(1 + tanh(u)) = z·sigmoid(2u), with t = exp(-2|u|) <= 1 so nothing overflows
        u = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
        t = tl.exp(-2.0 * tl.abs(u))
        acc = acc * tl.where(u >= 0.0, 1.0, t) / (1.0 + t)
    y_ptrs = y_ptr + offs_m64 * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m)


@triton.autotune(configs=_mm_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune_dds})
@triton.jit(do_not_specialize=_KEY_ONLY + ["NBR"])
def _bsr_dds_kernel(
    dy_ptr,
    v_ptr,
    col_offsets_ptr,
    row_indices_t_ptr,
    perm_t_ptr,
    dx_ptr,
    M,
    NBR,
    NBC,
    M_BUCKET,
    DENSITY_BUCKET,
    stride_dym,
    stride_dyn,
    stride_vb,
    stride_vm,
    stride_vk,
    stride_dxm,
    stride_dxk,
    BM: tl.constexpr,
    BK: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """dx (M, NBC·BK) = dy (M, NBR·BM) · W, W walked by block columns (CSC metadata)."""
    # tile (pid_m, block column pid_k), GROUP_M M-tiles at a time
    pid = tl.program_id(0)
    num_pid_m = (M + BLOCK_M - 1) // BLOCK_M
    group = GROUP_M * NBC
    first_pid_m = (pid // group) * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % group) % group_size_m
    pid_k = (pid % group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = (offs_m < M)[:, None]
    offs_m64 = offs_m.to(tl.int64)[:, None]
    offs_bm = tl.arange(0, BM)
    offs_bk = tl.arange(0, BK)
    dy_ptrs = dy_ptr + offs_m64 * stride_dym + offs_bm[None, :] * stride_dyn
    w_ptrs = v_ptr + (offs_bm[:, None] * stride_vm + offs_bk[None, :] * stride_vk)
    dy_step = BM * stride_dyn

    start = tl.load(col_offsets_ptr + pid_k)
    end = tl.load(col_offsets_ptr + pid_k + 1)
    acc = tl.full((BLOCK_M, BK), 0.0, tl.float32)
    for t in range(start, end):
        r = tl.load(row_indices_t_ptr + t).to(tl.int64)  # r·BM·stride_dyn may pass int32
        j = tl.load(perm_t_ptr + t).to(tl.int64)
        dy = tl.load(dy_ptrs + r * dy_step, mask=mask_m, other=0.0)
        w = tl.load(w_ptrs + j * stride_vb)
        if UPCAST:
            dy = dy.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(dy, w, acc, input_precision=INPUT_PRECISION)

    offs_k = pid_k * BK + offs_bk
    dx_ptrs = dx_ptr + offs_m64 * stride_dxm + offs_k[None, :] * stride_dxk
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask_m)


@triton.autotune(
    configs=_sdd_configs(), key=_KEY + ["SPLIT"], prune_configs_by={"early_config_prune": _prune_sdd}
)
@triton.jit(do_not_specialize=_KEY_ONLY + ["NBR", "NBC", "SPLIT"])
def _bsr_sdd_kernel(
    dy_ptr,
    x_ptr,
    v_ptr,
    block_rows_ptr,
    col_indices_ptr,
    out_ptr,
    M,
    ROWS_PER_SPLIT,
    NBR,
    NBC,
    M_BUCKET,
    DENSITY_BUCKET,
    SPLIT,
    stride_dym,
    stride_dyn,
    stride_xm,
    stride_xk,
    stride_os,
    stride_ob,
    stride_om,
    stride_ok,
    BM: tl.constexpr,
    BK: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """out[s, j] (BM, BK) = dy[chunk s, rows of block j]ᵀ · x[chunk s, cols of block j].

    ``v_ptr`` (the values) is only read by the config pruner, for the element size.
    """
    j = tl.program_id(0)
    s = tl.program_id(1)
    r = tl.load(block_rows_ptr + j).to(tl.int64)  # (r·BM)·stride_dyn may pass int32
    c = tl.load(col_indices_ptr + j).to(tl.int64)
    m_start = s * ROWS_PER_SPLIT
    m_end = tl.minimum(m_start + ROWS_PER_SPLIT, M)
    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_m64 = offs_m.to(tl.int64)
    offs_bm = tl.arange(0, BM)
    offs_bk = tl.arange(0, BK)
    dy_t_ptrs = dy_ptr + (r * BM + offs_bm)[:, None] * stride_dyn + offs_m64[None, :] * stride_dym
    x_ptrs = x_ptr + offs_m64[:, None] * stride_xm + (c * BK + offs_bk)[None, :] * stride_xk

    acc = tl.full((BM, BK), 0.0, tl.float32)
    for m0 in range(m_start, m_end, BLOCK_M):
        mask_m = offs_m < m_end
        dy_t = tl.load(dy_t_ptrs, mask=mask_m[None, :], other=0.0)
        x = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
        if UPCAST:
            dy_t = dy_t.to(tl.float32)
            x = x.to(tl.float32)
        acc = tl.dot(dy_t, x, acc, input_precision=INPUT_PRECISION)
        offs_m += BLOCK_M
        dy_t_ptrs += BLOCK_M * stride_dym
        x_ptrs += BLOCK_M * stride_xm

    out_ptrs = (
        out_ptr
        + tl.cast(s, tl.int64) * stride_os
        + tl.cast(j, tl.int64) * stride_ob
        + offs_bm[:, None] * stride_om
        + offs_bk[None, :] * stride_ok
    )
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty))


# ----------------------------------------------------------------------------- host side
INTERPRETED = type(_bsr_dds_t_kernel.fn).__name__ == "InterpretedFunction"

Meta = Sequence[torch.Tensor]  # (row_offsets, col_indices, block_rows, col_offsets, row_indices_t, perm_t)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _density_bucket(density: float) -> int:
    """Autotune bucket: the best tile changes with how many blocks each row walks."""
    for i, edge in enumerate((0.05, 0.15, 0.35, 0.65)):
        if density <= edge:
            return i
    return 4


def _m_bucket(m: int) -> int:
    return triton.next_power_of_2(max(int(m), 1))


def _input_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not INTERPRETED and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def _upcast(dtype: torch.dtype) -> bool:
    return INTERPRETED and dtype == torch.bfloat16


def _device_guard(device: torch.device):
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


# (kernel, forced choice, constexpr arguments, element size) -> the config that ran, once the
# forced one did not fit: later calls go straight to it.
_FALLBACK: Dict[tuple, triton.Config] = {}


def _launch(kernel, prune: _Prune, values: torch.Tensor, grid, args: tuple, kwargs: dict) -> None:
    """Run an autotuned kernel: autotuned (the default), or with one fixed config when
    ``SPD_TRITON_AUTOTUNE=0`` (the first config that fits in shared memory: no benchmarking on a
    new shape) or ``SPD_TRITON_CONFIG=i`` (the i-th config that fits, modulo their number; tests).

    The shared-memory estimate can be wrong for a compiler version or a device: a fixed config
    that Triton refuses (``OutOfResources``) falls back to the others, smallest first, with one
    warning; the autotuner skips such configs by itself."""
    configs = kernel.configs
    forced = os.environ.get("SPD_TRITON_CONFIG", "").strip()
    autotune = os.environ.get("SPD_TRITON_AUTOTUNE", "1").strip() != "0"
    if len(configs) == 1 or (autotune and not forced):
        kernel[grid](*args, **kwargs)
        return
    named = {"v_ptr": values, **kwargs}
    fitting = prune(configs, {"v_ptr": values}, **kwargs)
    if forced:
        try:
            cfg = fitting[int(forced) % len(fitting)]
        except ValueError:
            raise ValueError(f"SPD_TRITON_CONFIG must be an integer, got {forced!r}") from None
    else:
        cfg = fitting[0]
    key = (id(kernel), forced, tuple(sorted(kwargs.items())), values.element_size())
    cfg = _FALLBACK.get(key, cfg)
    others = sorted((c for c in configs if c is not cfg), key=lambda c: prune.need(c, named))
    first_error = None
    for candidate in [cfg, *others]:
        try:
            kernel.fn[grid](*args, **kwargs, **candidate.all_kwargs())
        except OutOfResources as exc:
            first_error = first_error or exc
            continue
        if candidate is not cfg:
            warnings.warn(
                f"{kernel.fn.__name__}: config {cfg} does not fit this device ({first_error}); "
                f"running {candidate} instead",
                RuntimeWarning,
                stacklevel=3,
            )
            _FALLBACK[key] = candidate
        return
    raise first_error


def _check(name: str, t: torch.Tensor, values: torch.Tensor, cols: int) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a 2-D tensor (M, {cols}), got {got}")
    if t.shape[1] != cols:
        raise ValueError(f"{name} has {t.shape[1]} columns, the sparse weight needs {cols}")
    if t.dtype != values.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but the weight values have dtype {values.dtype}")
    if t.dtype not in _DTYPES:
        raise TypeError(f"dtype {t.dtype} not supported by the Triton kernels {_DTYPES}")
    if t.device != values.device:
        raise ValueError(f"{name} is on {t.device} but the weight values are on {values.device}")


def _geometry(values: torch.Tensor, meta: Meta) -> Tuple[int, int, int, int, int]:
    """(bm, bk, N/bm, K/bk, density bucket) of the sparse weight."""
    if values.dim() != 3:
        raise ValueError(f"values must have shape (nnz_blocks, bm, bk), got {tuple(values.shape)}")
    nnz, bm, bk = values.shape
    nbr, nbc = meta[0].numel() - 1, meta[3].numel() - 1
    density = nnz / (nbr * nbc) if nbr * nbc else 0.0
    return bm, bk, nbr, nbc, _density_bucket(density)


def bsr_dds_t(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: Meta,
    bias: Optional[torch.Tensor] = None,
    activation: str = "none",
    save_preact: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Forward ``y = act(x·Wᵀ + bias)``.

    x: (M, K) float16/bfloat16/float32, any strides; values: (nnz_blocks, bm, bk) same dtype;
    meta: the six int32 metadata arrays; bias: (N,) or None. Returns ``(y, z)``, both (M, N) in
    x's dtype; ``z`` is the pre-activation when ``save_preact``, else an empty tensor.
    """
    bm, bk, nbr, nbc, dbucket = _geometry(values, meta)
    n, k = nbr * bm, nbc * bk
    _check("x", x, values, k)
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"activation must be one of {tuple(ACTIVATION_CODES)}, got {activation!r}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    m = x.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    z = torch.empty((m, n), dtype=x.dtype, device=x.device) if save_preact else y
    if m and nbr:
        vs = values.stride()

        def grid(meta_):
            return (triton.cdiv(m, meta_["BLOCK_M"]) * nbr,)

        with _device_guard(x.device):
            _launch(
                _bsr_dds_t_kernel,
                _prune_dds_t,
                values,
                grid,
                (
                    x,
                    values,
                    meta[0],
                    meta[1],
                    bias if bias is not None else y,
                    y,
                    z,
                    m,
                    nbr,
                    nbc,
                    _m_bucket(m),
                    dbucket,
                    x.stride(0),
                    x.stride(1),
                    vs[0],
                    vs[1],
                    vs[2],
                    y.stride(0),
                    y.stride(1),
                    z.stride(0),
                    z.stride(1),
                    bias.stride(0) if bias is not None else 0,
                ),
                dict(
                    BM=bm,
                    BK=bk,
                    HAS_BIAS=bias is not None,
                    ACTIVATION=ACTIVATION_CODES[activation],
                    SAVE_PREACT=bool(save_preact),
                    UPCAST=_upcast(x.dtype),
                    INPUT_PRECISION=_input_precision(x.dtype),
                ),
            )
    return y, (z if save_preact else x.new_empty(0))


def bsr_dds(dy: torch.Tensor, values: torch.Tensor, meta: Meta) -> torch.Tensor:
    """Input grad ``dx = dy·W``: dy (M, N) -> (M, K) in dy's dtype (float32 accumulation)."""
    bm, bk, nbr, nbc, dbucket = _geometry(values, meta)
    n, k = nbr * bm, nbc * bk
    _check("dy", dy, values, n)
    m = dy.shape[0]
    dx = torch.empty((m, k), dtype=dy.dtype, device=dy.device)
    if m and nbc:
        vs = values.stride()

        def grid(meta_):
            return (triton.cdiv(m, meta_["BLOCK_M"]) * nbc,)

        with _device_guard(dy.device):
            _launch(
                _bsr_dds_kernel,
                _prune_dds,
                values,
                grid,
                (
                    dy,
                    values,
                    meta[3],
                    meta[4],
                    meta[5],
                    dx,
                    m,
                    nbr,
                    nbc,
                    _m_bucket(m),
                    dbucket,
                    dy.stride(0),
                    dy.stride(1),
                    vs[0],
                    vs[1],
                    vs[2],
                    dx.stride(0),
                    dx.stride(1),
                ),
                dict(
                    BM=bm,
                    BK=bk,
                    UPCAST=_upcast(dy.dtype),
                    INPUT_PRECISION=_input_precision(dy.dtype),
                ),
            )
    return dx


def sdd_split(m: int, nnz_blocks: int, device: torch.device) -> int:
    """How many chunks of M the weight grad reduces separately.

    Enough programs to fill the GPU (about 4 per SM) when there are few stored blocks, but no
    chunk shorter than 256 rows (32 under the interpreter, so that small tests split too).
    """
    if m <= 0 or nnz_blocks <= 0:
        return 1
    if device.type == "cuda" and not INTERPRETED:
        index = device.index if device.index is not None else torch.cuda.current_device()
        target, min_rows = 4 * _sm_count(index), 256
    else:
        target, min_rows = 8, 32
    want = -(-target // nnz_blocks)
    return max(1, min(want, m // min_rows))


def bsr_sdd(
    dy: torch.Tensor, x: torch.Tensor, values: torch.Tensor, meta: Meta, split: Optional[int] = None
) -> torch.Tensor:
    """Weight grad ``(dyᵀ·x)`` at the stored blocks: dy (M, N), x (M, K) -> like ``values``.

    ``split`` (default: :func:`sdd_split`) chunks the reduction over M; chunks are summed in
    float32 by ``torch.sum``, so the result does not depend on scheduling (no atomics).
    """
    bm, bk, nbr, nbc, dbucket = _geometry(values, meta)
    _check("dy", dy, values, nbr * bm)
    _check("x", x, values, nbc * bk)
    if dy.shape[0] != x.shape[0]:
        raise ValueError(f"dy has {dy.shape[0]} rows but x has {x.shape[0]}")
    m, nnz = x.shape[0], values.shape[0]
    if nnz == 0:
        return torch.empty_like(values, memory_format=torch.contiguous_format)
    if m == 0:
        return torch.zeros_like(values, memory_format=torch.contiguous_format)
    if split is None:
        split = sdd_split(m, nnz, dy.device)
    if not isinstance(split, int) or split < 1:
        raise ValueError(f"split must be a positive int, got {split!r}")
    rows = triton.cdiv(m, split)
    split = triton.cdiv(m, rows)  # no empty chunk
    if split == 1:
        out = torch.empty((1, nnz, bm, bk), dtype=values.dtype, device=values.device)
    else:
        out = torch.empty((split, nnz, bm, bk), dtype=torch.float32, device=values.device)
    with _device_guard(dy.device):
        _launch(
            _bsr_sdd_kernel,
            _prune_sdd,
            values,
            (nnz, split),
            (
                dy,
                x,
                values,
                meta[2],
                meta[1],
                out,
                m,
                rows,
                nbr,
                nbc,
                _m_bucket(m),
                dbucket,
                split,
                dy.stride(0),
                dy.stride(1),
                x.stride(0),
                x.stride(1),
                out.stride(0),
                out.stride(1),
                out.stride(2),
                out.stride(3),
            ),
            dict(
                BM=bm,
                BK=bk,
                UPCAST=_upcast(dy.dtype),
                INPUT_PRECISION=_input_precision(dy.dtype),
            ),
        )
    if split == 1:
        return out[0]
    return out.sum(0).to(values.dtype)
