"""Block-sparse cpu kernels: row panels owned by threads, both tile orders of a line, the
sliced weight grad and the streamed outputs, against float64 (see docs/cpu-kernels.md).

The forward and input grad split the rows of x (dy) statically between the threads, in panels
whose height follows the width of x (dy): 168 rows at 384 columns, 96 from 768, 384 for narrow
operands. A line's sub-tiles run innermost when its blocks take at most 12 KB, else one after
the other. The weight grad cuts M into fixed slices (512 rows and more each, 8 at most) and
groups of block rows, and adds the slices' partial sums in order.
"""

from __future__ import annotations

import pytest
import torch

import spd_kernels as sk
from helpers import assert_close_to_ref, check_kernel_products, random_sparse, ref_linear
from spd_kernels import _ext
from spd_kernels.activations import apply_activation

pytestmark = [pytest.mark.requires_ext]


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


def _ops():
    dds_t, dds, sdd = (_ext.c_op(n) for n in ("cpu_dds_t", "cpu_dds", "cpu_sdd"))
    return (
        lambda x, v, meta: dds_t(x, v, *meta, None, "none", False),
        lambda dy, v, meta: dds(dy, v, *meta),
        lambda dy, x, v, meta: sdd(dy, x, v, *meta),
    )


def _forward_epilogue(W, dense, x, bias, activation):
    y, z = _ext.c_op("cpu_dds_t")(x, W.values, *W.metadata(), bias, activation, True)
    ref, zref = ref_linear(x, dense, bias, activation)
    zd = x @ dense.t() + bias
    assert_close_to_ref(z, zref, zd, "pre-activation")
    assert_close_to_ref(y, ref, apply_activation(zd, activation), "forward")


# (block, n, k, sparsity): widths of x (k) and dy (n) giving panels of 168, 96 and 384 rows;
# lines of a few small blocks (sub-tiles innermost) and of many large ones (one after the other)
CASES = [
    ((32, 32), 128, 384, 0.5),
    ((32, 32), 1536, 384, 0.9),
    ((32, 32), 384, 1536, 0.9),
    ((16, 16), 96, 768, 0.7),
    ((8, 8), 64, 1536, 0.8),
    ((64, 64), 128, 1536, 0.3),
    ((16, 48), 48, 480, 0.5),
]


@pytest.mark.parametrize("block,n,k,sparsity", CASES)
@pytest.mark.parametrize("m", [5, 169, 389])  # below one panel, one row past it, odd past two
@pytest.mark.parametrize("nthreads", [1, 2])
def test_row_panels_against_float64(block, n, k, sparsity, m, nthreads, threads):
    torch.set_num_threads(nthreads)
    W, dense = random_sparse(n, k, block, sparsity)
    x, dy = torch.randn(m, k), torch.randn(m, n)
    check_kernel_products(W, dense, x, dy, *_ops(), what=f"{block} {n}x{k} m={m} t={nthreads}")
    _forward_epilogue(W, dense, x, torch.randn(n), "gelu")


@pytest.mark.parametrize("block", [(32, 32), (16, 16), (8, 8), (8, 24)])
@pytest.mark.parametrize("m", [100, 1100, 4100])  # 1 slice (8 groups), 2 slices, 8 slices
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_grad_slices_same_bits_for_one_and_two_threads(block, m, dtype, threads):
    bm, bk = block
    n, k = bm * 10, bk * 9
    W, dense = random_sparse(n, k, block, 0.8, dtype=dtype)  # empty block rows, odd blocks per row
    x, dy = torch.randn(m, k, dtype=dtype), torch.randn(m, n, dtype=dtype)
    sdd = _ops()[2]
    outs = []
    for t in (1, 2, 1):
        torch.set_num_threads(t)
        outs.append(sdd(dy, x, W.values, W.metadata()))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    if dtype == torch.float32:
        check_kernel_products(W, dense, x, dy, *_ops(), what=f"{block} m={m}")
    else:
        ref = (dy.double().t() @ x.double()).reshape(n // bm, bm, k // bk, bk).permute(0, 2, 1, 3)
        ref = ref[W.block_rows.long(), W.col_indices.long()]
        base = (dy.float().t() @ x.float()).reshape(n // bm, bm, k // bk, bk).permute(0, 2, 1, 3)
        base = base[W.block_rows.long(), W.col_indices.long()].to(dtype)
        assert_close_to_ref(outs[0], ref, base, "weight grad (bfloat16)")


def test_weight_grad_of_no_rows_is_zero():
    W, _ = random_sparse(64, 96, (32, 32), 0.3)
    dv = _ops()[2](torch.randn(0, 64), torch.randn(0, 96), W.values, W.metadata())
    assert dv.shape == W.values.shape and torch.equal(dv, torch.zeros_like(dv))


@pytest.mark.parametrize("block", [(16, 16), (32, 32), (64, 64), (8, 8)])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_streamed_outputs_every_block_width(block, nthreads, threads):
    """4 MB and more of output (2053 x 512 float32) is written with streaming stores when the
    line's tile is 16 wide; 8-wide tiles store normally. Odd M splits the rows unevenly."""
    torch.set_num_threads(nthreads)
    m, n = 2053, 512
    assert m * n * 4 >= 4 << 20
    W, dense = random_sparse(n, n, block, 0.9)
    x, dy, bias = torch.randn(m, n), torch.randn(m, n), torch.randn(n)
    _forward_epilogue(W, dense, x, bias, "gelu")
    _forward_epilogue(W, dense, x, bias, "relu")
    dx = _ops()[1](dy, W.values, W.metadata())
    assert_close_to_ref(dx, dy.double() @ dense.double(), dy @ dense, "input grad")


@pytest.mark.parametrize("block", [(32, 32), (8, 8)])
def test_forward_and_input_grad_same_bits_for_one_and_two_threads(block, threads):
    W, _ = random_sparse(384, 1536, block, 0.9)
    x, dy = torch.randn(1001, 1536), torch.randn(1001, 384)
    dds_t, dds, _ = _ops()
    outs = []
    for t in (1, 2):
        torch.set_num_threads(t)
        outs.append((dds_t(x, W.values, W.metadata())[0], dds(dy, W.values, W.metadata())))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
