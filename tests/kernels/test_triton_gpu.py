"""The ``triton`` backend on a CUDA device: the three products of a sparse linear layer against a
float64 reference over the full grid (dtypes x blocks x sparsity x odd M), every autotune config,
the autotuner itself, TF32, determinism of the split weight grad, strides and torch.compile.

Skipped without a CUDA device (``requires_cuda``). The grid runs with ``SPD_TRITON_AUTOTUNE=0``
(one fixed config, no benchmarking per shape); ``test_every_config`` covers the other configs.
``SPD_GPU_TESTS=quick`` (scripts/gpu_check.sh) thins the grid to what a few minutes allow;
``-k smoke`` is the compute-sanitizer run's selection.
"""

import os

import pytest
import torch

import spd_kernels as sk
from helpers import assert_close_to_ref, check_kernel_products, check_products, random_sparse
from helpers import sampled as _sampled
from spd_kernels.backends import BACKENDS

pytestmark = pytest.mark.requires_cuda

QUICK = os.environ.get("SPD_GPU_TESTS", "full") == "quick"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BLOCKS = [(16, 16), (32, 32), (64, 64), (32, 64), (64, 32), (128, 128)]
SPARSITIES = (0.0, 0.5, 0.9, 0.99, 1.0)
MS = (0, 1, 7, 65, 1000)
CONFIG_CASES = [(torch.bfloat16, (64, 64)), (torch.float16, (16, 16)), (torch.float32, (32, 64))]
if QUICK:  # every block shape and dtype, fewer sparsities and M; the fp32 config case
    BLOCKS = [(16, 16), (64, 64), (32, 64), (128, 128)]
    SPARSITIES = (0.0, 0.9, 1.0)
    MS = (0, 7, 1000)
    CONFIG_CASES = CONFIG_CASES[2:]


def _shape(block):
    # an 8 x 9 block grid: 72 blocks, so 99 % sparsity keeps one; N != K
    return block[0] * 8, block[1] * 9


@pytest.fixture(autouse=True)
def triton_calls(monkeypatch):
    """Force the triton backend process-wide (autograd runs the CUDA backward on its own thread,
    which a context-local choice may not reach) and record which products it ran."""
    monkeypatch.setenv("SPD_KERNELS_BACKEND", "triton")
    monkeypatch.setenv("SPD_TRITON_AUTOTUNE", "0")
    backend = BACKENDS["triton"]
    calls = []
    for op in ("dds_t", "dds", "sdd"):
        original = getattr(backend, op)

        def wrapper(*args, _op=op, _original=original, **kwargs):
            calls.append(_op)
            return _original(*args, **kwargs)

        monkeypatch.setattr(backend, op, wrapper)
    return calls


def _check(block, sparsity, m, dtype, activation=None, factor=None, calls=None):
    n, k = _shape(block)
    W, dense = random_sparse(n, k, block, sparsity, dtype=dtype, device="cuda")
    x = torch.randn(m, k, device="cuda").to(dtype)
    bias = torch.randn(n, device="cuda").to(dtype)
    dy = torch.randn(m, n, device="cuda").to(dtype)
    what = f"{dtype}, block {block}, s={sparsity}, M={m}"
    check_products("triton", W, dense, x, dy, bias, activation, factor, what)
    if calls is not None:  # the products really ran on the triton backend
        assert sorted(set(calls)) == ["dds", "dds_t", "sdd"], calls


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_grid(dtype, block, sparsity, m, triton_calls):
    _check(block, sparsity, m, dtype, calls=triton_calls)


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("block", [(16, 16), (64, 64)], ids=["16x16", "64x64"])
def test_fused_activation(block, activation, dtype):
    _check(block, 0.5, 333, dtype, activation, factor=4.0)


@pytest.mark.parametrize("config", range(6))
@pytest.mark.parametrize("dtype, block", CONFIG_CASES)
def test_every_config(monkeypatch, dtype, block, config):
    # each autotune config on its own (index taken modulo each kernel's list)
    monkeypatch.setenv("SPD_TRITON_CONFIG", str(config))
    for m in (7, 1000):
        _check(block, 0.5, m, dtype)


def test_autotuned(monkeypatch):
    monkeypatch.setenv("SPD_TRITON_AUTOTUNE", "1")
    for m in (1, 4096):
        _check((64, 64), 0.9, m, torch.bfloat16)
        _check((32, 32), 0.5, m, torch.float16)


def test_tf32_follows_torch_matmul_precision():
    # TF32 when torch allows it for its own fp32 matmuls: the dense baseline then uses TF32 too
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        _check((32, 32), 0.5, 257, torch.float32)
    finally:
        torch.set_float32_matmul_precision(previous)


def test_split_weight_grad_is_deterministic():
    from spd_kernels.triton_ops import load

    kernels = load("bsr_linear")
    W, _ = random_sparse(256, 256, (64, 64), 0.9, dtype=torch.bfloat16, device="cuda")
    x = torch.randn(8192, 256, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(8192, 256, device="cuda", dtype=torch.bfloat16)
    assert kernels.sdd_split(8192, W.nnz_blocks, x.device) > 1
    first = kernels.bsr_sdd(dy, x, W.values, W.metadata())
    for _ in range(3):
        assert torch.equal(kernels.bsr_sdd(dy, x, W.values, W.metadata()), first)
    ref = _sampled(W, dy.double().t() @ x.double())
    assert_close_to_ref(first, ref, _sampled(W, dy.t() @ x), "split weight grad")


def test_strided_operands():
    from spd_kernels.triton_ops import load

    kernels = load("bsr_linear")
    W, dense = random_sparse(128, 192, (32, 64), 0.5, dtype=torch.float16, device="cuda")
    x = torch.randn(192, 77, device="cuda", dtype=torch.float16).t()
    dy = torch.randn(128, 77, device="cuda", dtype=torch.float16).t()
    check_kernel_products(W, dense, x, dy, kernels.bsr_dds_t, kernels.bsr_dds, kernels.bsr_sdd, "strided")


def test_torch_compile_fullgraph(triton_calls):
    W, dense = random_sparse(256, 384, (64, 64), 0.75, dtype=torch.bfloat16, device="cuda")
    bias = torch.randn(256, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(4, 33, 384, device="cuda", dtype=torch.bfloat16)

    def layer(inp):
        return sk.sparse_linear(inp, W, bias, activation="gelu")

    eager = layer(x)
    compiled = torch.compile(layer, fullgraph=True)(x)
    assert "dds_t" in triton_calls
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


def test_forced_backend_holds_in_cuda_backward(monkeypatch, triton_calls):
    # use_backend is context-local; the CUDA backward runs on autograd's device thread
    monkeypatch.delenv("SPD_KERNELS_BACKEND")
    W, _ = random_sparse(128, 128, (32, 32), 0.5, dtype=torch.float16, device="cuda")
    values = W.values.clone().requires_grad_(True)
    x = torch.randn(9, 128, device="cuda", dtype=torch.float16, requires_grad=True)
    with sk.use_backend("reference"):
        sk.sparse_linear(x, W.with_values(values)).sum().backward()
    assert triton_calls == [], f"backward left the forced backend: {triton_calls}"


def test_strided_bias_on_gpu():
    from spd_kernels.triton_ops import load

    kernels = load("bsr_linear")
    W, dense = random_sparse(128, 192, (64, 64), 0.5, dtype=torch.bfloat16, device="cuda")
    x = torch.randn(65, 192, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(256, device="cuda", dtype=torch.bfloat16)[::2]
    y, _ = kernels.bsr_dds_t(x, W.values, W.metadata(), bias, "none", False)
    assert_close_to_ref(y, x.double() @ dense.double().t() + bias.double(), x @ dense.t() + bias, "forward")


def test_autotune_cache_separates_epilogues(monkeypatch):
    # one shape, three epilogues: three tuned entries, not one config reused for all
    from spd_kernels.triton_ops import load

    monkeypatch.setenv("SPD_TRITON_AUTOTUNE", "1")
    kernels = load("bsr_linear")
    kernel = kernels._bsr_dds_t_kernel
    kernel.cache.clear()
    W, _ = random_sparse(128, 128, (32, 32), 0.5, dtype=torch.float16, device="cuda")
    x = torch.randn(300, 128, device="cuda", dtype=torch.float16)
    bias = torch.randn(128, device="cuda", dtype=torch.float16)
    kernels.bsr_dds_t(x, W.values, W.metadata())
    kernels.bsr_dds_t(x, W.values, W.metadata(), bias)
    kernels.bsr_dds_t(x, W.values, W.metadata(), bias, "gelu", True)
    assert len(kernel.cache) == 3, list(kernel.cache)


def test_key_only_arguments_compile_once():
    # M = 2 and M = 9 differ in M_BUCKET (2, 16) only: one compiled kernel serves both
    from spd_kernels.triton_ops import load

    kernels = load("bsr_linear")
    W, _ = random_sparse(96, 128, (32, 32), 0.5, dtype=torch.float16, device="cuda")
    fn = kernels._bsr_dds_t_kernel.fn
    kernels.bsr_dds_t(torch.randn(2, 128, device="cuda", dtype=torch.float16), W.values, W.metadata())
    before = sum(len(c[0]) for c in fn.device_caches.values())
    kernels.bsr_dds_t(torch.randn(9, 128, device="cuda", dtype=torch.float16), W.values, W.metadata())
    assert sum(len(c[0]) for c in fn.device_caches.values()) == before


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_smoke_all_ops(dtype, triton_calls):
    """Small and quick: the three kernels, the split weight grad, bias + activation + saved
    pre-activation, tail tiles. The compute-sanitizer run uses this test."""
    for block, m in (((32, 64), 1), ((64, 64), 1000)):  # M = 1000: the weight grad splits M
        _check(block, 0.5, m, dtype, "gelu", factor=4.0, calls=triton_calls)
    torch.cuda.synchronize()
