"""SparseMatrix: from_dense/to_dense round trips (property-based) and constructor validation."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import spd_kernels as sk
from spd_kernels.formats import transpose_metadata

BLOCKS = [(1, 1), (1, 4), (2, 2), (4, 2), (16, 16), (32, 32), (32, 64)]


@st.composite
def weight_and_mask(draw):
    bm, bk = draw(st.sampled_from(BLOCKS))
    nbr = draw(st.integers(0, 5))
    nbc = draw(st.integers(0, 5))
    n, k = nbr * bm, nbc * bk
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    p = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    mask = torch.rand(n, k, generator=g) < p
    return w, mask, (bm, bk)


@settings(max_examples=60, deadline=None)
@given(weight_and_mask())
def test_round_trip_with_mask(data):
    w, mask, block = data
    W = sk.SparseMatrix.from_dense(w, mask=mask, block=block)
    assert torch.equal(W.to_dense(), torch.where(mask, w, torch.zeros(())))
    assert W.block == block and W.shape == tuple(w.shape)
    assert W.layout == ("csr" if block == (1, 1) else "bsr")
    # a stored block is exactly a block with any mask bit set
    bm, bk = block
    if w.numel():
        expect = mask.reshape(w.shape[0] // bm, bm, w.shape[1] // bk, bk).any(3).any(1)
        assert torch.equal(W.block_mask(), expect)
        assert W.nnz == int(expect.sum()) * bm * bk
        assert W.density == pytest.approx(W.nnz / w.numel())


@settings(max_examples=40, deadline=None)
@given(weight_and_mask())
def test_round_trip_without_mask_keeps_nonzeros(data):
    w, mask, block = data
    w = torch.where(mask, w, torch.zeros(()))
    W = sk.SparseMatrix.from_dense(w, block=block)
    assert torch.equal(W.to_dense(), w)
    # re-validating the packed arrays accepts them and gives the same transposed metadata
    W2 = sk.SparseMatrix(W.values, W.row_offsets, W.col_indices, W.shape, transposed=W.metadata()[2:])
    assert torch.equal(W2.to_dense(), w)


@settings(max_examples=40, deadline=None)
@given(weight_and_mask())
def test_transposed_metadata_walks_columns(data):
    w, mask, block = data
    W = sk.SparseMatrix.from_dense(w, mask=mask, block=block)
    nbc = W.shape[1] // block[1]
    for c in range(nbc):
        lo, hi = int(W.col_offsets[c]), int(W.col_offsets[c + 1])
        perm = W.perm_t[lo:hi].long()
        assert torch.all(W.col_indices[perm] == c)
        assert torch.equal(W.row_indices_t[lo:hi], W.block_rows[perm])
        assert torch.all(W.row_indices_t[lo:hi].diff() > 0)
    assert sorted(W.perm_t.tolist()) == list(range(W.nnz_blocks))


def test_block_mask_argument_and_nan_weights():
    w = torch.randn(64, 64)
    w[3, 5] = float("nan")
    bmask = torch.tensor([[True, False], [False, True]])
    W = sk.SparseMatrix.from_dense(w, mask=bmask, block=32)
    d = W.to_dense()
    assert torch.isnan(d[3, 5])
    assert torch.equal(d[32:, 32:], w[32:, 32:]) and torch.all(d[:32, 32:] == 0)
    # mask=None keeps a block whose only nonzero is NaN
    z = torch.zeros(32, 32)
    z[0, 0] = float("nan")
    assert sk.SparseMatrix.from_dense(z, block=32).nnz_blocks == 1


def test_empty_and_full():
    W = sk.SparseMatrix.from_dense(torch.zeros(64, 32), block=(32, 32))
    assert W.nnz == 0 and W.density == 0.0 and W.to_dense().abs().sum() == 0
    W = sk.SparseMatrix.from_dense(torch.randn(64, 32) + 10, block=(16, 16))
    assert W.density == 1.0
    W = sk.SparseMatrix.from_dense(torch.zeros(0, 0), block=(1, 1))
    assert W.shape == (0, 0) and W.to_dense().shape == (0, 0)


def test_to_dtype_and_with_values():
    W = sk.SparseMatrix.from_dense(torch.randn(32, 64), block=(16, 32))
    H = W.to(dtype=torch.float16)
    assert H.dtype == torch.float16 and H.row_offsets.dtype == torch.int32
    assert torch.equal(H.to_dense(), W.to_dense().half())
    V = W.with_values(W.values * 2)
    assert torch.equal(V.to_dense(), 2 * W.to_dense())
    with pytest.raises(ValueError, match=r"values must have shape"):
        W.with_values(torch.zeros(3))


def test_transpose_metadata_matches_dense_transpose():
    w = torch.randn(48, 80) * (torch.rand(48, 80) < 0.3)
    W = sk.SparseMatrix.from_dense(w, block=(1, 1))
    bro, col_off, rows_t, perm = transpose_metadata(W.row_offsets, W.col_indices, 80)
    WT = sk.SparseMatrix.from_dense(w.t().contiguous(), block=(1, 1))
    assert torch.equal(col_off, WT.row_offsets)
    assert torch.equal(rows_t, WT.col_indices)
    assert torch.equal(W.values.flatten()[perm.long()], WT.values.flatten())


# ----------------------------------------------------------------- bad input
def test_bad_block_and_shape():
    w = torch.randn(30, 64)
    with pytest.raises(ValueError, match=r"\(30, 64\) is not divisible by block \(32, 32\)"):
        sk.SparseMatrix.from_dense(w, block=(32, 32))
    with pytest.raises(ValueError, match=r"block sizes must be positive.*\(0, 4\)"):
        sk.SparseMatrix.from_dense(w, block=(0, 4))
    with pytest.raises(TypeError, match=r"block must be .*'a'"):
        sk.SparseMatrix.from_dense(w, block="a")
    with pytest.raises(ValueError, match=r"2-D.*\(2, 3, 4\)"):
        sk.SparseMatrix.from_dense(torch.randn(2, 3, 4), block=1)
    with pytest.raises(TypeError, match=r"torch.int64"):
        sk.SparseMatrix.from_dense(torch.ones(4, 4, dtype=torch.long), block=1)
    with pytest.raises(TypeError, match=r"list"):
        sk.SparseMatrix.from_dense([[1.0]], block=1)


def test_bad_mask():
    w = torch.randn(64, 64)
    with pytest.raises(ValueError, match=r"mask shape \(64, 32\)"):
        sk.SparseMatrix.from_dense(w, mask=torch.ones(64, 32, dtype=torch.bool), block=32)
    with pytest.raises(TypeError, match=r"torch.float32"):
        sk.SparseMatrix.from_dense(w, mask=torch.ones(64, 64), block=32)
    with pytest.raises(TypeError, match=r"ndarray"):
        import numpy as np

        sk.SparseMatrix.from_dense(w, mask=np.ones((64, 64), bool), block=32)


def _packed():
    return sk.SparseMatrix.from_dense(torch.randn(64, 96), block=(32, 32))


def test_bad_indices():
    W = _packed()
    vals, ro, ci = W.values, W.row_offsets, W.col_indices
    with pytest.raises(TypeError, match=r"col_indices must have dtype torch.int32, got torch.int64"):
        sk.SparseMatrix(vals, ro, ci.long(), W.shape)
    with pytest.raises(ValueError, match=r"col_indices must lie in \[0, 3\).*\[0, 7\]"):
        bad = ci.clone()
        bad[-1] = 7
        sk.SparseMatrix(vals, ro, bad, W.shape)
    with pytest.raises(ValueError, match=r"row_offsets must have N/bm \+ 1 = 3 entries, got 2"):
        sk.SparseMatrix(vals, ro[:2], ci, W.shape)
    with pytest.raises(ValueError, match=r"end at nnz_blocks=6"):
        bad = ro.clone()
        bad[-1] = 5
        sk.SparseMatrix(vals, bad, ci, W.shape)
    with pytest.raises(ValueError, match=r"strictly increasing within a row"):
        bad = ci.clone()
        bad[0], bad[1] = ci[1], ci[0]
        sk.SparseMatrix(vals, ro, bad, W.shape)
    with pytest.raises(ValueError, match=r"values must have shape \(nnz_blocks, bm, bk\)"):
        sk.SparseMatrix(vals.flatten(), ro, ci, W.shape)
    with pytest.raises(ValueError, match=r"\(64, 90\) is not divisible"):
        sk.SparseMatrix(vals, ro, ci, (64, 90))
    with pytest.raises(ValueError, match=r"perm_t does not match"):
        t = list(W.metadata()[2:])
        t[3] = t[3].flip(0)
        sk.SparseMatrix(vals, ro, ci, W.shape, transposed=t)
