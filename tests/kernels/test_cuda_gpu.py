"""The cuda backend's kernels on a GPU: the three products of a CSR sparse linear layer against a
float64 dense reference, every dtype, sparsity 0 to 100 %, uniform and power-law row lengths
(empty rows, near-dense rows, a row longer than a whole tile), odd M, the fused epilogue, strided
inputs, determinism and the argument checks. Skipped without a CUDA device and the extension.

``-k smoke`` selects a small subset that covers every kernel and code path; scripts/gpu_check.sh
runs it under compute-sanitizer.
"""

import pytest
import torch
import torch.nn.functional as F

import helpers
import spd_kernels as sk
from helpers import (
    METADATA_CASES,
    SPARSITIES,
    assert_close_to_ref,
    corrupt_metadata,
    random_block_mask,
    random_sparse,
    ref_linear,
)
from spd_kernels.activations import apply_activation
from spd_kernels.backends import choose_backend

pytestmark = [pytest.mark.requires_cuda, pytest.mark.requires_ext]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
MS = [0, 1, 7, 129, 1000]


def _op(name):
    return getattr(torch.ops.spd_kernels_C, name)


def skewed_mask(n: int, k: int, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    """Bool (N, K) with power-law row lengths (a few near-dense rows, many short ones, every
    fifth row empty) and at most (1 - sparsity)·N·K entries."""
    if sparsity >= 1.0:
        return torch.zeros(n, k, dtype=torch.bool)
    if sparsity <= 0.0:
        return torch.ones(n, k, dtype=torch.bool)
    w = torch.rand(n, generator=gen, dtype=torch.float64) ** 4
    lengths = (w / w.sum() * (1.0 - sparsity) * n * k).round().clamp(max=k).long()
    lengths[::5] = 0
    order = torch.rand(n, k, generator=gen).argsort(dim=1)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(k).expand(n, k).contiguous())
    return ranks < lengths[:, None]


def make_weight(n, k, sparsity, dtype, skewed, gen):
    """(W packed as CSR on the GPU, W dense masked on the GPU), random nonzero values."""
    mask = skewed_mask(n, k, sparsity, gen) if skewed else random_block_mask(n, k, (1, 1), sparsity, gen)
    w = torch.randn(n, k, generator=gen, dtype=torch.float64)
    dense = torch.where(mask, w, torch.zeros(())).to(dtype)
    W = sk.SparseMatrix.from_dense(dense, mask=mask, block=(1, 1)).to("cuda")
    return W, dense.cuda()


def randn(*shape, dtype, gen):
    return torch.randn(*shape, generator=gen).to("cuda", dtype)


def pattern_of(W):
    return W.block_mask()  # block (1, 1): the element mask


def check_products(W, dense, x, dy, bias, activation=None):
    """helpers.check_products on the cuda backend, and autograd's forward is the kernel's."""
    out = helpers.check_products("cuda", W, dense, x, dy, bias, activation)
    assert torch.equal(out["y_k"], out["y"])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("skewed", [False, True], ids=["uniform", "skewed"])
def test_three_products(dtype, sparsity, m, skewed):
    gen = torch.Generator().manual_seed(1000 * m + int(100 * sparsity) + skewed)
    n, k = (300, 517) if skewed else (67, 93)
    W, dense = make_weight(n, k, sparsity, dtype, skewed, gen)
    x, dy = randn(m, k, dtype=dtype, gen=gen), randn(m, n, dtype=dtype, gen=gen)
    check_products(W, dense, x, dy, randn(n, dtype=dtype, gen=gen))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
def test_fused_epilogue_and_preact(dtype, activation):
    gen = torch.Generator().manual_seed(7)
    n, k, m = 129, 200, 77
    W, dense = make_weight(n, k, 0.9, dtype, True, gen)
    x, bias = randn(m, k, dtype=dtype, gen=gen), randn(n, dtype=dtype, gen=gen)
    y, z = _op("cuda_dds_t")(x, W.values, *W.metadata(), bias, activation, True)
    y64, z64 = ref_linear(x, dense, bias, activation)
    zd = F.linear(x, dense, bias)
    assert_close_to_ref(z, z64, zd, "pre-activation")
    assert_close_to_ref(y, y64, apply_activation(zd, activation), "activation", factor=4)
    y2, z2 = _op("cuda_dds_t")(x, W.values, *W.metadata(), bias, activation, False)
    assert z2.numel() == 0
    assert torch.equal(y, y2)
    check_products(W, dense, x, randn(m, n, dtype=dtype, gen=gen), bias, activation)


def test_relu_keeps_nan_where_a_stored_weight_meets_it():
    gen = torch.Generator().manual_seed(3)
    W, _ = make_weight(40, 50, 0.7, torch.float32, False, gen)
    x = randn(3, 50, dtype=torch.float32, gen=gen)
    x[1, 17] = float("nan")
    y, _ = _op("cuda_dds_t")(x, W.values, *W.metadata(), None, "relu", False)
    hit = pattern_of(W)[:, 17]
    assert torch.isnan(y[1, hit]).all()
    assert not torch.isnan(y[1, ~hit]).any()
    assert not torch.isnan(y[0]).any() and not torch.isnan(y[2]).any()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bert_shape_skewed_and_a_row_longer_than_a_tile(dtype):
    gen = torch.Generator().manual_seed(11)
    W, dense = make_weight(3072, 768, 0.9, dtype, True, gen)
    m = 129
    check_products(W, dense, randn(m, 768, dtype=dtype, gen=gen), randn(m, 3072, dtype=dtype, gen=gen), None)
    # one dense row of 9000 entries (more than the 4096 nonzeros of the largest tile) among
    # empty and 2-entry rows: it gets a tile to itself and several warps share it
    k = 9000
    mask = torch.zeros(40, k, dtype=torch.bool)
    mask[3] = True
    mask[5:, :2] = True
    w = torch.where(mask, torch.randn(40, k, generator=gen, dtype=torch.float64), torch.zeros(())).to(dtype)
    W2 = sk.SparseMatrix.from_dense(w, mask=mask, block=(1, 1)).to("cuda")
    x2, dy2 = randn(33, k, dtype=dtype, gen=gen), randn(33, 40, dtype=dtype, gen=gen)
    check_products(W2, w.cuda(), x2, dy2, None)


def test_strided_operands_give_the_same_bits():
    gen = torch.Generator().manual_seed(5)
    n, k, m = 70, 90, 45
    W, _ = make_weight(n, k, 0.8, torch.bfloat16, True, gen)
    x = randn(m, k, dtype=torch.bfloat16, gen=gen)
    dy = randn(m, n, dtype=torch.bfloat16, gen=gen)
    bias = randn(n, dtype=torch.bfloat16, gen=gen)
    x_t = x.t().contiguous().t()  # column-major view
    dy_s = torch.zeros(m, 2 * n, dtype=dy.dtype, device="cuda")[:, ::2]
    dy_s.copy_(dy)
    b_s = torch.zeros(2 * n, dtype=bias.dtype, device="cuda")[::2]
    b_s.copy_(bias)
    v_s = torch.zeros(W.nnz, 2, 1, dtype=W.dtype, device="cuda")[:, :1]
    v_s.copy_(W.values)
    meta = W.metadata()
    for xs, ds, bs, vs in ((x_t, dy_s, b_s, v_s),):
        assert not xs.is_contiguous() and not ds.is_contiguous() and not bs.is_contiguous()
        assert not vs.is_contiguous()
        y0, z0 = _op("cuda_dds_t")(x, W.values, *meta, bias, "gelu", True)
        y1, z1 = _op("cuda_dds_t")(xs, vs, *meta, bs, "gelu", True)
        assert torch.equal(y0, y1) and torch.equal(z0, z1)
        assert torch.equal(_op("cuda_dds")(dy, W.values, *meta), _op("cuda_dds")(ds, vs, *meta))
        assert torch.equal(_op("cuda_sdd")(dy, x, W.values, *meta), _op("cuda_sdd")(ds, xs, vs, *meta))


def test_results_are_reproducible_bit_for_bit():
    gen = torch.Generator().manual_seed(9)
    W, _ = make_weight(500, 700, 0.9, torch.float32, True, gen)
    x = randn(300, 700, dtype=torch.float32, gen=gen)
    dy = randn(300, 500, dtype=torch.float32, gen=gen)
    meta = W.metadata()
    a = [_op("cuda_dds_t")(x, W.values, *meta, None, "none", False)[0], _op("cuda_dds")(dy, W.values, *meta)]
    b = [_op("cuda_dds_t")(x, W.values, *meta, None, "none", False)[0], _op("cuda_dds")(dy, W.values, *meta)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_cuda_backend_is_chosen_for_csr_on_cuda():
    for dtype in DTYPES:
        for op in ("dds_t", "dds", "sdd"):
            assert choose_backend(op, torch.device("cuda"), dtype, (1, 1)).name == "cuda"
    assert sk.available_backends()["cuda"] == []


def test_bad_inputs_raise_with_the_offending_values():
    gen = torch.Generator().manual_seed(1)
    W, _ = make_weight(16, 24, 0.5, torch.float32, False, gen)
    x = randn(5, 24, dtype=torch.float32, gen=gen)
    meta = list(W.metadata())
    f = _op("cuda_dds_t")
    bad = list(meta)
    bad[0] = meta[0].long()
    with pytest.raises(RuntimeError, match=r"row_offsets must have dtype Int, got Long"):
        f(x, W.values, *bad, None, "none", False)
    bad = list(meta)
    bad[1] = torch.stack([meta[1], meta[1]], 1)[:, 0]
    with pytest.raises(RuntimeError, match=r"col_indices must be contiguous"):
        f(x, W.values, *bad, None, "none", False)
    with pytest.raises(RuntimeError, match=r"x must be a CUDA tensor, got cpu"):
        f(x.cpu(), W.values, *meta, None, "none", False)
    with pytest.raises(ValueError, match=r"x must have 24 columns, got shape \[5, 25\]"):
        f(randn(5, 25, dtype=torch.float32, gen=gen), W.values, *meta, None, "none", False)
    with pytest.raises(RuntimeError, match=r"float32, float16 or bfloat16 .* got Double"):
        f(x.double(), W.values.double(), *meta, None, "none", False)
    with pytest.raises(RuntimeError, match=r"values have dtype Half but x has Float"):
        f(x, W.values.half(), *meta, None, "none", False)
    with pytest.raises(ValueError, match=r"bias must have shape \(16,\), got \[15\]"):
        f(x, W.values, *meta, torch.zeros(15, device="cuda"), "none", False)
    with pytest.raises(RuntimeError, match=r"activation must be one of .* got 'swish'"):
        f(x, W.values, *meta, None, "swish", False)
    Wb = sk.SparseMatrix.from_dense(torch.randn(32, 32), block=(16, 16)).to("cuda")
    with pytest.raises(RuntimeError, match=r"values of shape \(nnz, 1, 1\).*\[4, 16, 16\]"):
        f(randn(2, 32, dtype=torch.float32, gen=gen), Wb.values, *Wb.metadata(), None, "none", False)
    with pytest.raises(
        ValueError, match=r"dy and x must have the same number of rows, got \[3, 16\] and \[5, 24\]"
    ):
        _op("cuda_sdd")(randn(3, 16, dtype=torch.float32, gen=gen), x, W.values, *meta)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_smoke_all_ops(dtype):
    """Small and quick: every kernel, every token-vector width (M = 1, 33, 65, 129), skewed rows,
    empty and dense weights, the epilogue. The compute-sanitizer run uses this test."""
    gen = torch.Generator().manual_seed(2)
    for sparsity in (0.0, 0.9, 1.0):
        W, dense = make_weight(70, 90, sparsity, dtype, True, gen)
        for i, m in enumerate((0, 1, 33, 65, 129)):
            x, dy = randn(m, 90, dtype=dtype, gen=gen), randn(m, 70, dtype=dtype, gen=gen)
            check_products(W, dense, x, dy, randn(70, dtype=dtype, gen=gen), ("gelu", None)[i % 2])
    torch.cuda.synchronize()


@pytest.mark.parametrize("case", METADATA_CASES)
@pytest.mark.parametrize("backend, block", [("cuda", (1, 1)), ("triton", (32, 32)), ("reference", (1, 1))])
def test_bad_metadata_is_the_cpu_value_error(backend, block, case):
    """The same ValueError as on the CPU (test_metadata_checks.py), before any kernel runs."""
    gen = torch.Generator().manual_seed(4)
    n, k = (64, 96) if block != (1, 1) else (12, 20)
    W, _ = random_sparse(n, k, block, 0.5, device="cuda")
    meta, message = corrupt_metadata(W, case)
    x, dy = randn(5, k, dtype=torch.float32, gen=gen), randn(5, n, dtype=torch.float32, gen=gen)
    with sk.use_backend(backend):
        for call in (
            lambda: sk.ops.dds_t(x, W.values, *meta, None, "none", False),
            lambda: sk.ops.dds(dy, W.values, *meta),
            lambda: sk.ops.sdd(dy, x, W.values, *meta),
        ):
            with pytest.raises(ValueError, match=message):
                call()
    torch.cuda.synchronize()  # no asynchronous error left behind
