"""The three products of a sparse linear layer against a float64 dense reference, on every
backend that runs on the CPU (reference; cpu, which skips by its marker when the extension is
not built, and stops the whole run under CI instead: see conftest.py)."""

import pytest
import torch

import spd_kernels as sk
from helpers import SPARSITIES, assert_close_to_ref, random_sparse, ref_linear

# Decided per test, not at import: a backend that cannot run shows up as a skip with its reasons.
BACKENDS = ["reference", pytest.param("cpu", marks=pytest.mark.requires_ext)]


@pytest.fixture(autouse=True)
def _backend_runs_here(request):
    name = request.node.callspec.params.get("backend") if hasattr(request.node, "callspec") else None
    if name is not None and sk.available_backends()[name]:
        pytest.skip(f"{name} backend unavailable: {sk.available_backends()[name]}")


BLOCKS = [(1, 1), (16, 16), (32, 32), (64, 64), (32, 64)]


def _shape_for(block):
    # N and K not multiples of 64 where the block allows
    bm, bk = block
    return (bm * (3 if bm > 1 else 67), bk * (5 if bk > 1 else 93))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("m", [0, 1, 7, 129])
def test_forward_and_grads_fp32(backend, block, sparsity, m):
    n, k = _shape_for(block)
    W, dense = random_sparse(n, k, block, sparsity)
    x = torch.randn(m, k)
    bias = torch.randn(n)
    dy = torch.randn(m, n)
    with sk.use_backend(backend):
        values = W.values.clone().requires_grad_(True)
        xr = x.clone().requires_grad_(True)
        br = bias.clone().requires_grad_(True)
        y = sk.sparse_linear(xr, W.with_values(values), br)
        y.backward(dy)
    ref, _ = ref_linear(x, dense, bias)
    assert_close_to_ref(y, ref, x @ dense.t() + bias, "forward")
    # input grad dX = dY·W
    assert_close_to_ref(xr.grad, dy.double() @ dense.double(), dy @ dense, "input grad")
    # weight grad restricted to the pattern
    full64 = dy.double().t() @ x.double()
    dW = W.with_values(values.grad).to_dense().double()
    pattern = W.block_mask().repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
    assert torch.all(dW[~pattern] == 0)
    assert_close_to_ref(dW[pattern], full64[pattern], (dy.t() @ x)[pattern], "weight grad")
    assert_close_to_ref(br.grad, dy.double().sum(0), dy.sum(0), "bias grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("block", [(1, 1), (32, 32)])
def test_fused_activation_and_grads(backend, activation, block):
    n, k = _shape_for(block)
    W, dense = random_sparse(n, k, block, 0.5)
    x = torch.randn(33, k)
    bias = torch.randn(n)
    dy = torch.randn(33, n)
    with sk.use_backend(backend):
        xr = x.clone().requires_grad_(True)
        values = W.values.clone().requires_grad_(True)
        br = bias.clone().requires_grad_(True)
        y = sk.sparse_linear(xr, W.with_values(values), br, activation=activation)
        y.backward(dy)
    # reference: autograd through float64 dense masked product
    x64 = x.double().requires_grad_(True)
    w64 = dense.double().requires_grad_(True)
    b64 = bias.double().requires_grad_(True)
    y64, _ = ref_linear(x64, w64, b64, activation)
    y64.backward(dy.double())
    yd, _ = ref_linear(x, dense, bias, activation)
    assert_close_to_ref(y, y64.detach(), yd.float(), "forward", factor=4)
    assert torch.allclose(xr.grad.double(), x64.grad, rtol=1e-4, atol=1e-4)
    assert torch.allclose(br.grad.double(), b64.grad, rtol=1e-4, atol=1e-4)
    dW = W.with_values(values.grad).to_dense().double()
    mask = dense != 0
    assert torch.allclose(dW[mask], w64.grad[mask], rtol=1e-4, atol=1e-4)


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
    W, dense = random_sparse(64, 64, (32, 32), 0.5, dtype=dtype)
    x = torch.randn(16, 64, dtype=dtype)
    with sk.use_backend("reference"):
        y = sk.sparse_linear(x, W)
    assert y.dtype == dtype
    assert_close_to_ref(y, ref_linear(x, dense)[0], x @ dense.t())
