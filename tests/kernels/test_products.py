"""The three products of a sparse linear layer against a float64 dense reference, on every
backend that runs on CPU tensors without the Triton interpreter (test_triton_backend.py covers
that one). A backend that cannot run here (the cpu backend without the built extension) shows
up as skipped tests carrying its reasons, never as missing ones."""

import pytest
import torch

import spd_kernels as sk
from helpers import (
    SPARSITIES,
    assert_close_to_ref,
    check_products,
    random_sparse,
    ref_linear,
    skip_unless_runs,
)

# every registered backend but the GPU-only ones and triton (its own module, interpreted)
BACKENDS = [name for name in sk.BACKENDS if name not in ("cuda", "triton")]
BLOCKS = [(1, 1), (16, 16), (32, 32), (64, 64), (32, 64)]


def _shape_for(block):
    # N and K not multiples of 64 where the block allows
    bm, bk = block
    return (bm * (3 if bm > 1 else 67), bk * (5 if bk > 1 else 93))


def test_every_cpu_backend_is_listed():
    assert {"reference", "cpu"} <= set(BACKENDS)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("m", [0, 1, 7, 129])
def test_forward_and_grads_fp32(backend, block, sparsity, m):
    skip_unless_runs(backend, block)
    # the reference backend *is* the float32 dense product the rule measures against: it runs
    # in float64 instead, against the float64 product of the dense masked weight built apart
    # from its packing (torch.where on the mask), held to a few float64 ulps
    dtype = torch.float64 if backend == "reference" else torch.float32
    n, k = _shape_for(block)
    W, dense = random_sparse(n, k, block, sparsity, dtype=dtype)
    x, dy, bias = torch.randn(m, k, dtype=dtype), torch.randn(m, n, dtype=dtype), torch.randn(n, dtype=dtype)
    check_products(backend, W, dense, x, dy, bias)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("block", [(1, 1), (32, 32)])
def test_fused_activation_and_grads(backend, activation, block):
    skip_unless_runs(backend, block)
    n, k = _shape_for(block)
    W, dense = random_sparse(n, k, block, 0.5)
    check_products(backend, W, dense, torch.randn(33, k), torch.randn(33, n), torch.randn(n), activation)


@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("block", [(1, 1), (2, 4)])
def test_gradcheck_float64(activation, block):
    W, _ = random_sparse(8, 12, block, 0.4, dtype=torch.float64)
    x = torch.randn(5, 12, dtype=torch.float64, requires_grad=True)
    v = W.values.clone().requires_grad_(True)
    b = torch.randn(8, dtype=torch.float64, requires_grad=True)
    if activation == "relu":  # keep pre-activations away from the kink
        with torch.no_grad():
            b += 3.0 * torch.sign(b)

    def f(x, v, b):
        return sk.sparse_linear(x, W.with_values(v), b, activation=activation)

    with sk.use_backend("reference"):
        assert torch.autograd.gradcheck(f, (x, v, b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_and_noncontiguous_x(backend):
    skip_unless_runs(backend, (32, 32))
    W, dense = random_sparse(64, 96, (32, 32), 0.5)
    x = torch.randn(96, 3, 5).permute(1, 2, 0)  # (3, 5, 96), non-contiguous
    assert not x.is_contiguous()
    with sk.use_backend(backend):
        y = sk.sparse_linear(x, W)
    ref, _ = ref_linear(x.reshape(-1, 96), dense)
    assert y.shape == (3, 5, 64)
    assert_close_to_ref(y.reshape(-1, 64), ref, x.reshape(-1, 96) @ dense.t())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block", [(1, 1), (32, 32)])
def test_nan_and_inf_propagate(backend, block):
    skip_unless_runs(backend, block)
    W, dense = random_sparse(64, 64, block, 0.0)
    W.values.view(-1)[0] = float("nan")  # W[0, 0] in both layouts
    x = torch.randn(4, 64)
    x[1, 10] = float("inf")
    with sk.use_backend(backend):
        y = sk.sparse_linear(x, W)
    assert torch.isnan(y[:, 0]).all()  # NaN weight reaches every row of its output
    assert (~torch.isfinite(y[1])).all()  # inf input meets stored weights in every output
    assert torch.isfinite(y[[0, 2, 3], 1:]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_rows_and_columns(backend):
    skip_unless_runs(backend, (1, 1))
    w = torch.randn(96, 128)
    mask = torch.rand(96, 128) < 0.2
    mask[5] = False
    mask[:, 17] = False
    mask[40:72] = False
    W = sk.SparseMatrix.from_dense(w, mask=mask, block=(1, 1))
    dense = W.to_dense()
    x = torch.randn(9, 128, requires_grad=True)
    with sk.use_backend(backend):
        y = sk.sparse_linear(x, W)
        y.backward(torch.ones_like(y))
    assert_close_to_ref(y, ref_linear(x.detach(), dense)[0], x.detach() @ dense.t())
    assert torch.all(y[:, 5] == 0) and torch.all(y[:, 40:72] == 0)
    assert torch.all(x.grad[:, 17] == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_low_precision(dtype):
    # held to the arithmetic, not to torch's same-dtype product (which is what it computes):
    # x W^T rounded once to ``dtype``, then + bias rounded again (the reference adds the bias
    # after the product: two roundings where F.linear makes one), each within eps/2 of its
    # value, plus a float32 accumulation's error K eps32 (|x| |W|^T)
    n, k = 64, 96
    W, dense = random_sparse(n, k, (32, 32), 0.5, dtype=dtype)
    x = torch.randn(16, k, dtype=dtype)
    bias = torch.randn(n, dtype=dtype)
    with sk.use_backend("reference"):
        y = sk.sparse_linear(x, W, bias)
    assert y.dtype == dtype
    y64, _ = ref_linear(x, dense, bias)
    z64 = y64 - bias.double()
    size = x.double().abs() @ dense.double().abs().t()
    u, u32 = torch.finfo(dtype).eps / 2, torch.finfo(torch.float32).eps
    bound = u * (z64.abs() + y64.abs()) + k * u32 * size
    err = (y.double() - y64).abs()
    assert (err <= bound).all(), f"error {(err / bound).max().item():.2f}x the bound"
    assert (err > 0).any()  # it did round (a float64 or float32 result would not)
