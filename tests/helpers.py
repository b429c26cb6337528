"""Test helpers: random sparse weights and the float64 dense reference."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

import spd_kernels as sk
from spd_kernels.activations import apply_activation

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


def assert_close_to_ref(out, ref64, same_dtype_baseline, what="output", factor=2.0):
    """flash-attention's rule: error vs float64 <= factor x the error of the same-dtype dense
    product (plus a floor of a few ulps of the result's scale)."""
    assert out.shape == ref64.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    assert torch.isfinite(out).all() == torch.isfinite(ref64).all(), f"{what}: non-finite mismatch"
    if out.numel() == 0:
        return
    err = max_err(out, ref64)
    base = max_err(same_dtype_baseline, ref64)
    scale = ref64.abs().max().item() + 1.0
    eps = torch.finfo(out.dtype).eps
    bound = factor * base + 8 * eps * scale
    assert err <= bound, f"{what}: error {err:.3e} > bound {bound:.3e} (dense same-dtype {base:.3e})"


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
