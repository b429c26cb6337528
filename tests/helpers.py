"""Test helpers: random sparse weights, the float64 dense reference, and the one product check
every backend's tests use (``check_products``) with the tolerance rule (``assert_close_to_ref``)."""

from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import pytest
import torch
import torch.nn.functional as F

import spd_kernels as sk
from spd_kernels import ops
from spd_kernels.activations import activation_backward, apply_activation

SPARSITIES = (0.0, 0.5, 0.9, 0.99, 1.0)


def random_block_mask(
    n: int, k: int, block: Tuple[int, int], sparsity: float, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Element mask (N, K) with round((1 - sparsity) * blocks) whole blocks kept."""
    bm, bk = block
    nb = (n // bm) * (k // bk)
    keep = int(round((1.0 - sparsity) * nb))
    flat = torch.zeros(nb, dtype=torch.bool)
    flat[torch.randperm(nb, generator=generator)[:keep]] = True
    bmask = flat.view(n // bm, k // bk)
    return bmask.repeat_interleave(bm, 0).repeat_interleave(bk, 1)


def random_sparse(
    n: int, k: int, block=(32, 32), sparsity=0.5, dtype=torch.float32, device="cpu"
) -> Tuple[sk.SparseMatrix, torch.Tensor]:
    """(W packed, W dense masked) with random (never zero) values."""
    w = torch.randn(n, k, dtype=torch.float64)
    mask = random_block_mask(n, k, block, sparsity)
    dense = torch.where(mask, w, torch.zeros(()))
    W = sk.SparseMatrix.from_dense(dense.to(dtype), mask=mask, block=block).to(device)
    return W, dense.to(dtype).to(device)


def ref_linear(x, dense_w, bias=None, activation=None):
    """float64 act(x·Wᵀ + b) and its pre-activation."""
    z = x.double() @ dense_w.double().t()
    if bias is not None:
        z = z + bias.double()
    return apply_activation(z, activation or "none"), z


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return (a.double() - b.double()).abs().max().item()


def tolerance(ref64, same_dtype_baseline, factor=2.0) -> float:
    """flash-attention's rule: ``factor`` x the error of the same computation done by torch in
    the kernel's dtype, plus a floor of a few ulps of the result's scale in the accumulation
    dtype (float32, float64 for float64 results; every kernel accumulates in float32 at least,
    and the floor only matters where torch happens to be exact)."""
    base = max_err(same_dtype_baseline, ref64)
    scale = ref64.abs().max().item() + 1.0 if ref64.numel() else 1.0
    acc = torch.float64 if same_dtype_baseline.dtype == torch.float64 else torch.float32
    return factor * base + 8 * torch.finfo(acc).eps * scale


def assert_close_to_ref(out, ref64, same_dtype_baseline, what="output", factor=2.0):
    """flash-attention's rule (:func:`tolerance`): ``out``'s error against the float64
    reference is at most ``factor`` x the error of the same-dtype torch product (+ a tiny floor).
    In bfloat16 that is about one rounding of the output, not a fixed share of its scale."""
    assert out.shape == ref64.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    assert torch.isfinite(out).all() == torch.isfinite(ref64).all(), f"{what}: non-finite mismatch"
    if out.numel() == 0:
        return
    err = max_err(out, ref64)
    bound = tolerance(ref64, same_dtype_baseline, factor)
    base = max_err(same_dtype_baseline, ref64)
    assert err <= bound, f"{what}: error {err:.3e} > bound {bound:.3e} (dense same-dtype {base:.3e})"


def backend_skip_reasons(backend: str, block, dtype=torch.float32, device="cpu", op: str = "dds_t") -> list:
    """Why ``backend`` cannot run ``op`` here: its availability reasons (extension not built,
    no GPU, ...) then the reasons for this call; empty when it can."""
    return sk.available_backends()[backend] or sk.BACKENDS[backend].not_supported_reasons(
        op, torch.device(device), dtype, tuple(block)
    )


def skip_unless_runs(backend: str, block, dtype=torch.float32, device="cpu") -> None:
    """Skip the test with the backend's own reasons when it cannot run the three products."""
    for op in ("dds_t", "dds", "sdd"):
        reasons = backend_skip_reasons(backend, block, dtype, device, op)
        if reasons:
            pytest.skip(f"{backend} cannot run {op}: {'; '.join(reasons)}")


def sampled(W: sk.SparseMatrix, dense_grad: torch.Tensor) -> torch.Tensor:
    """A dense (N, K) gradient at W's stored blocks, in W's block order (like ``W.values``)."""
    return sk.SparseMatrix.from_dense(dense_grad, mask=W.block_mask(), block=W.block).values


def check_products(backend, W, dense, x, dy, bias=None, activation=None, factor=None, what=""):
    """The three products of a sparse linear layer on ``backend``, each held to the tolerance rule.

    Runs ``sparse_linear(x, W, bias, activation)`` and its backward (``dy``) through autograd on
    ``backend`` and compares the output, the input grad, the weight grad (at W's stored entries,
    in W's value order) and the bias grad with the float64 dense masked product, allowing
    ``factor`` x the error of the same-dtype dense product (default 2, 4 with an activation).
    x (M, K), dy (M, N), W (N, K) with ``dense`` its masked dense form, all one dtype and device.

    The backward products are compared for dz = act'(z)·dy taken from the backend's own
    forward (``ops.dds_t``, pre-activation saved where needed), as autograd computes it: a float64
    act' would count relu's sign flips of z ~ 0 (rounding) as kernel errors.
    Returns the backend's results: ``y, dx, dvalues, dbias`` and the forward's ``y_k, z_k``.
    """
    act = activation or "none"
    factor = factor if factor is not None else (2.0 if act == "none" else 4.0)
    tag = f" ({backend}{', ' + what if what else ''})"
    with sk.use_backend(backend):
        xr = x.clone().requires_grad_(True)
        vr = W.values.clone().requires_grad_(True)
        br = None if bias is None else bias.clone().requires_grad_(True)
        y = sk.sparse_linear(xr, W.with_values(vr), br, activation=activation)
        y.backward(dy)
        y_k, z_k = ops.dds_t(x, W.values, *W.metadata(), bias, act, act != "none")
    got = {"forward": y.detach(), "input grad": xr.grad, "weight grad": vr.grad}
    if bias is not None:
        got["bias grad"] = br.grad
    for name, g in got.items():
        assert g.dtype == x.dtype and g.device == x.device, f"{name}{tag}: {g.dtype} on {g.device}"
    y64, _ = ref_linear(x, dense, bias, act)
    same_dtype = apply_activation(F.linear(x, dense, bias), act)
    assert_close_to_ref(got["forward"], y64, same_dtype, "forward" + tag, factor)
    dz = activation_backward(dy, y_k, z_k, act).to(x.dtype)
    dz64 = dz.double()
    base = {
        "input grad": (dz64 @ dense.double(), dz @ dense),
        "weight grad": (sampled(W, dz64.t() @ x.double()), sampled(W, dz.t() @ x)),
        "bias grad": (dz64.sum(0), dz.sum(0)),
    }
    for name, (ref, same_dtype) in base.items():
        if name in got:
            assert_close_to_ref(got[name], ref, same_dtype, name + tag, factor)
    return dict(y=got["forward"], dx=xr.grad, dvalues=vr.grad, dbias=got.get("bias grad"), y_k=y_k, z_k=z_k)


def check_kernel_products(W, dense, x, dy, dds_t, dds, sdd, what=""):
    """A backend's three kernels called directly -- ``dds_t(x, values, meta)`` (-> y, z),
    ``dds(dy, values, meta)``, ``sdd(dy, x, values, meta)`` -- against float64 under the rule."""
    meta, tag = W.metadata(), f" ({what})" if what else ""
    y = dds_t(x, W.values, meta)[0]
    assert_close_to_ref(y, x.double() @ dense.double().t(), x @ dense.t(), "forward" + tag)
    dx = dds(dy, W.values, meta)
    assert_close_to_ref(dx, dy.double() @ dense.double(), dy @ dense, "input grad" + tag)
    dv = sdd(dy, x, W.values, meta)
    ref = sampled(W, dy.double().t() @ x.double())
    assert_close_to_ref(dv, ref, sampled(W, dy.t() @ x), "weight grad" + tag)


def corrupt_metadata(W, case):
    """W's six metadata arrays (fresh copies), one of them broken as ``case`` says; the message."""
    meta = [t.clone() for t in W.metadata()]
    nbr, nbc, nnz = meta[0].numel() - 1, meta[3].numel() - 1, W.values.shape[0]
    if case == "col_index_too_big":
        meta[1][1] = nbc
        return meta, rf"col_indices\[1\] = {nbc} is outside \[0, {nbc}\)"
    if case == "negative_block_row":
        meta[2][2] = -1
        return meta, rf"block_rows\[2\] = -1 is outside \[0, {nbr}\)"
    if case == "row_index_t_too_big":
        meta[4][0] = nbr + 5
        return meta, rf"row_indices_t\[0\] = {nbr + 5} is outside \[0, {nbr}\)"
    if case == "perm_out_of_range":
        meta[5][-1] = nnz
        return meta, rf"perm_t\[{nnz - 1}\] = {nnz} is outside \[0, {nnz}\)"
    if case == "row_offsets_past_nnz":
        meta[0][-1] = nnz + 3
        return meta, rf"row_offsets must start at 0 and end at nnz_blocks={nnz}, got 0 \.\.\. {nnz + 3}"
    if case == "col_offsets_decrease":
        meta[3][1] = meta[3][2] + 1
        return meta, r"col_offsets must be non-decreasing, got \d+ then \d+ at 1"
    if case == "strided_indices":
        meta[1] = torch.stack([meta[1], meta[1]], 1)[:, 0]
        return meta, r"col_indices must be contiguous"
    if case == "short_perm":
        meta[5] = meta[5][:-1].clone()
        return meta, rf"perm_t must have nnz_blocks={nnz} entries, got {nnz - 1}"
    raise AssertionError(case)


METADATA_CASES = [
    "col_index_too_big",
    "negative_block_row",
    "row_index_t_too_big",
    "perm_out_of_range",
    "row_offsets_past_nnz",
    "col_offsets_decrease",
    "strided_indices",
    "short_perm",
]


# ---------------------------------------------------------------------- bad-input census
def census(cases):
    """``pytest.mark.parametrize`` over a census table: rows ``(what, call, error type, message
    fragment)``, the id being ``what``. Use with :func:`assert_clear_error`."""
    import pytest

    return pytest.mark.parametrize("call, error, fragment", [c[1:] for c in cases], ids=[c[0] for c in cases])


def assert_clear_error(call, error, fragment: str) -> None:
    """``call()`` raises exactly ``error`` (not a subclass standing in for it, e.g. a NoBackendError
    for a ValueError) whose message contains ``fragment``."""
    import pytest

    with pytest.raises(Exception) as info:
        call()
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert fragment in str(info.value), str(info.value)


# ---------------------------------------------------------------------- fault injection
def sigkill_when(cmd, env, ready, after: float = 0.0, timeout: float = 240.0, **popen) -> None:
    """Start ``cmd``, wait until ``ready()`` holds (failing if the process ends first), sleep
    ``after`` seconds, SIGKILL it and check that the kill is what ended it."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, env=env, **popen)
    try:
        deadline = time.time() + timeout
        while not ready():
            assert proc.poll() is None, f"{cmd[:3]}... ended before it could be killed"
            assert time.time() < deadline, f"{cmd[:3]}... never got ready"
            time.sleep(0.01)
        time.sleep(after)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@contextlib.contextmanager
def stopped_inside_write(cmd, env, point: str, timeout: float = 120.0, **popen):
    """Start ``cmd`` with ``SPD_TEST_STOP_AT=point`` passed on (the write hook of
    ``spd_kernels.checkpoint``: the process stops itself at that point of a write), wait until
    it is stopped there, yield its ``Popen`` for the caller to look at the half-done write, then
    SIGKILL it and check that the kill is what ended it. Fails if the process ends, or never
    stops, instead."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, env=dict(env, SPD_TEST_STOP_AT=point), **popen)
    try:
        deadline = time.time() + timeout
        while True:
            pid, status = os.waitpid(proc.pid, os.WNOHANG | os.WUNTRACED)
            if pid and os.WIFSTOPPED(status):
                break
            assert not pid, f"{cmd[:3]}... ended (status {status}) before it stopped at {point}"
            assert time.time() < deadline, f"{cmd[:3]}... never stopped at {point}"
            time.sleep(0.01)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
