"""The cpu backend's small blocks (csrc/cpu/vblock.cpp: column vectors (8k, 1); every other block
with both sides at most 32, e.g. 4x4, on the CSR kernels through its element view) and the CSR
kernels' changes, each product against the float64 dense masked product: odd shapes, 0 / 50 /
90 / 100 % sparsity, empty rows and columns, tile tails, bias + activation, bfloat16, thread count."""

import pytest
import torch

import spd_kernels as sk
from helpers import assert_close_to_ref, check_kernel_products, check_products, random_sparse
from spd_kernels import _ext

pytestmark = [pytest.mark.requires_ext]

# (8k, 1) have kernels of their own; the rest run as elements.
VECTOR_BLOCKS = [(8, 1), (16, 1), (24, 1), (32, 1)]
OTHER_SMALL = [(4, 4), (2, 1), (4, 1), (1, 8), (8, 2), (3, 5), (1, 4)]
SMALL = VECTOR_BLOCKS + OTHER_SMALL


@pytest.fixture(autouse=True)
def _needs_cpu_backend():
    reasons = sk.available_backends()["cpu"]
    if reasons:
        pytest.skip(f"cpu backend unavailable: {reasons}")


@pytest.fixture
def threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _op(name):
    return _ext.c_op(name)


def _kernels():
    fwd, dds, sdd = _op("cpu_dds_t"), _op("cpu_dds"), _op("cpu_sdd")
    return (
        lambda x, v, meta: fwd(x, v, *meta, None, "none", False),
        lambda dy, v, meta: dds(dy, v, *meta),
        lambda dy, x, v, meta: sdd(dy, x, v, *meta),
    )


def _shape(block, q=5, r=7):
    bm, bk = block
    return bm * q, bk * r  # odd block counts: tails of every tile


@pytest.mark.parametrize("block", SMALL)
def test_small_blocks_are_cpu_backend_calls(block):
    for o in ("dds_t", "dds", "sdd"):
        assert sk.choose_backend(o, torch.device("cpu"), torch.float32, block).name == "cpu"


@pytest.mark.parametrize("block", SMALL)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("m", [1, 13, 97])  # tails of the 6/12-row tiles, 8-row dx tiles, 64-row panels
def test_three_products_against_float64(block, sparsity, m):
    n, k = _shape(block)
    W, dense = random_sparse(n, k, block, sparsity)
    x, dy = torch.randn(m, k), torch.randn(m, n)
    check_kernel_products(W, dense, x, dy, *_kernels(), what=f"block {block}, {sparsity}, m {m}")


@pytest.mark.parametrize("block", [(8, 1), (16, 1), (4, 4), (1, 1)])
def test_empty_rows_and_columns(block):
    bm, bk = block
    n, k = bm * 9, bk * 11
    w = torch.randn(n, k)
    mask = torch.rand(n // bm, k // bk) < 0.5
    mask[2] = False  # an empty block row (output features with no weights)
    mask[:, 3] = False  # an empty block column (input features no output reads)
    mask[-1] = False
    emask = mask.repeat_interleave(bm, 0).repeat_interleave(bk, 1)
    dense = torch.where(emask, w, torch.zeros(()))
    W = sk.SparseMatrix.from_dense(dense, mask=emask, block=block)
    x, dy = torch.randn(70, k), torch.randn(70, n)
    check_kernel_products(W, dense, x, dy, *_kernels(), what=f"block {block}")
    y = _op("cpu_dds_t")(x, W.values, *W.metadata(), None, "none", False)[0]
    assert torch.equal(y[:, 2 * bm : 3 * bm], torch.zeros(70, bm))
    dx = _op("cpu_dds")(dy, W.values, *W.metadata())
    assert torch.equal(dx[:, 3 * bk : 4 * bk], torch.zeros(70, bk))


@pytest.mark.parametrize("block", [(8, 1), (16, 1), (32, 1), (4, 4), (2, 1)])
@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh"])
def test_bias_activation_and_autograd(block, activation):
    n, k = _shape(block, 6, 9)
    W, dense = random_sparse(n, k, block, 0.6)
    check_products("cpu", W, dense, torch.randn(37, k), torch.randn(37, n), torch.randn(n), activation)


@pytest.mark.parametrize("block", [(8, 1), (16, 1), (4, 4)])
def test_bfloat16_against_float64(block):
    n, k = _shape(block, 4, 10)
    W, dense = random_sparse(n, k, block, 0.5, dtype=torch.bfloat16)
    x, dy, b = torch.randn(29, k).bfloat16(), torch.randn(29, n).bfloat16(), torch.randn(n).bfloat16()
    check_products("cpu", W, dense, x, dy, b, "gelu")


@pytest.mark.parametrize("block", [(8, 1), (16, 1), (4, 4), (1, 1)])
def test_same_bits_for_one_and_two_threads(block, threads):
    n, k = _shape(block, 12, 40) if block != (1, 1) else (150, 130)
    W, _ = random_sparse(n, k, block, 0.7)
    x, dy, b = torch.randn(300, k), torch.randn(300, n), torch.randn(n)
    meta = W.metadata()
    outs = []
    for t in (1, 2):
        torch.set_num_threads(t)
        outs.append(
            (
                _op("cpu_dds_t")(x, W.values, *meta, b, "gelu", True),
                _op("cpu_dds")(dy, W.values, *meta),
                _op("cpu_sdd")(dy, x, W.values, *meta),
            )
        )
    (y1, z1), dx1, dw1 = outs[0]
    (y2, z2), dx2, dw2 = outs[1]
    for a, c in ((y1, y2), (z1, z2), (dx1, dx2), (dw1, dw2)):
        assert torch.equal(a, c)


@pytest.mark.parametrize("block", [(8, 1), (16, 1)])
def test_strided_operands(block):
    n, k = _shape(block, 5, 70)
    W, dense = random_sparse(n, k, block, 0.8)
    x = torch.randn(40, k + 9)[:, 3 : 3 + k]  # row stride k + 9
    dy = torch.randn(40, n + 5)[:, :n]
    check_kernel_products(W, dense, x, dy, *_kernels(), what="strided")


@pytest.mark.parametrize("block", [(8, 1), (4, 4), (1, 1)])
def test_wide_inputs(block):
    # K = 1536: the dds_t panel of x is cut to fit the L2; CSR packs 32-row panels
    n, k = (48, 1536) if block != (1, 1) else (40, 1536)
    W, dense = random_sparse(n, k, block, 0.9)
    x, dy = torch.randn(50, k), torch.randn(50, n)
    check_kernel_products(W, dense, x, dy, *_kernels(), what=f"block {block}, K {k}")


def test_non_finite_inputs_propagate():
    W, dense = random_sparse(16, 24, (8, 1), 0.0)
    x = torch.randn(9, 24)
    x[3, 5] = float("nan")
    x[4, 6] = float("inf")
    y = _op("cpu_dds_t")(x, W.values, *W.metadata(), None, "none", False)[0]
    ref = x @ dense.t()
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    fin = torch.isfinite(ref)
    assert_close_to_ref(y[fin], (x.double() @ dense.double().t())[fin], ref[fin], "finite part")
