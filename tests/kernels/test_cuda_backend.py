"""The cuda backend's dispatch rules, checked without a GPU (its kernels: test_cuda_gpu.py)."""

import pytest
import torch

import spd_kernels as sk
import spd_kernels.backends.cuda as cuda_mod
from helpers import random_sparse
from spd_kernels.backends import BACKENDS, PRIORITY, choose_backend
from spd_kernels.backends.cuda import CudaBackend

CUDA = torch.device("cuda", 0)


def test_cuda_is_first_on_cuda_devices():
    assert PRIORITY["cuda"][0] == "cuda"
    assert isinstance(BACKENDS["cuda"], CudaBackend)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reasons given without a GPU")
def test_unavailable_without_a_gpu_says_why():
    reasons = BACKENDS["cuda"].availability()
    assert reasons and all(isinstance(r, str) and r for r in reasons)
    assert any("CUDA" in r for r in reasons)


@pytest.mark.parametrize("op", ["dds_t", "dds", "sdd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_csr_on_cuda_has_no_call_reasons(op, dtype):
    if torch.cuda.is_available() and torch.cuda.get_device_capability(0) < (8, 0):
        pytest.skip("device older than sm_80")
    assert BACKENDS["cuda"].call_reasons(op, CUDA, dtype, (1, 1)) == []


def test_call_reasons_name_device_dtype_and_layout():
    b = BACKENDS["cuda"]
    reasons = b.call_reasons("dds_t", torch.device("cpu"), torch.float64, (32, 32))
    text = " | ".join(reasons)
    assert len(reasons) == 3, reasons
    assert "CUDA tensors only" in text and "device cpu" in text
    assert "torch.float64" in text
    assert "block (32, 32)" in text and "CSR" in text and "triton" in text


def test_bsr_on_cuda_is_refused_with_the_block():
    reasons = BACKENDS["cuda"].call_reasons("dds", CUDA, torch.float16, (16, 16))
    assert any("(16, 16)" in r for r in reasons)


def test_forcing_cuda_on_cpu_tensors_lists_every_backend():
    W, _ = random_sparse(8, 16, (1, 1), 0.5)
    with sk.use_backend("cuda"), pytest.raises(sk.NoBackendError) as err:
        sk.sparse_linear(torch.randn(3, 16), W)
    msg = str(err.value)
    assert "backend 'cuda' (forced)" in msg
    for name in BACKENDS:
        assert f"  {name}:" in msg


def test_cpu_calls_never_choose_cuda():
    for op in ("dds_t", "dds", "sdd"):
        assert choose_backend(op, torch.device("cpu"), torch.float32, (1, 1)).name != "cuda"


# ----------------------------------------------------------------- choice by measured crossover
@pytest.fixture
def cuda_can_run(monkeypatch):
    """The cuda backend as on a GPU machine: it can run CSR calls (no device needed here)."""
    monkeypatch.setattr(CudaBackend, "availability", lambda self: [])
    monkeypatch.setattr(CudaBackend, "call_reasons", lambda self, op, device, dtype, block: [])
    if not torch.cuda.is_available():  # triton (next in line) would ask a device for its capability
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def test_unmeasured_crossover_keeps_csr_dense_and_says_so(cuda_can_run, monkeypatch):
    monkeypatch.setattr(cuda_mod._gpu_crossover, "CROSSOVER", {})
    assert choose_backend("dds_t", CUDA, torch.bfloat16, (1, 1), 0.1).name == "reference"
    reasons = sk.dispatch_reasons("dds_t", CUDA, torch.bfloat16, (1, 1), 0.1)["cuda"]
    assert reasons and "no measured crossover for cuda csr dds_t" in reasons[0]
    assert choose_backend("dds_t", CUDA, torch.bfloat16, (1, 1)).name == "cuda"  # no density given


@pytest.mark.parametrize("op", ["dds_t", "dds", "sdd"])
def test_csr_on_cuda_follows_the_measured_crossover(cuda_can_run, monkeypatch, op):
    table = {"cuda": {"csr": {"dds_t": 0.3, "dds": 0.2, "sdd": 0.1}}}
    monkeypatch.setattr(cuda_mod._gpu_crossover, "CROSSOVER", table)
    limit = table["cuda"]["csr"][op]
    assert choose_backend(op, CUDA, torch.float16, (1, 1), limit / 2).name == "cuda"
    assert choose_backend(op, CUDA, torch.float16, (1, 1), limit * 2).name == "reference"
    reasons = sk.dispatch_reasons(op, CUDA, torch.float16, (1, 1), limit * 2)
    assert f"not below the measured cuda csr {op} crossover {limit:.3f}" in reasons["cuda"][0]
    assert reasons["reference"] == []
    with sk.use_backend("cuda"):  # forcing the backend skips the crossover
        assert choose_backend(op, CUDA, torch.float16, (1, 1), 0.99).name == "cuda"


def test_ops_pass_the_density_to_the_chooser(monkeypatch):
    import spd_kernels.ops as ops

    seen = []
    original = ops.choose_backend
    monkeypatch.setattr(ops, "choose_backend", lambda *a: seen.append(a) or original(*a))
    ops.clear_dispatch_cache()  # decisions are remembered per (op, device, dtype, block, density)
    W, _ = random_sparse(64, 96, (32, 32), 0.5)  # 3 of 6 blocks
    x = torch.randn(3, 96, requires_grad=True)
    sk.sparse_linear(x, W).sum().backward()
    assert [(a[0], a[4]) for a in seen] == [("dds_t", 0.5), ("dds", 0.5)]
    sk.sparse_linear(x, W).sum().backward()  # the same call again: no new decision
    assert len(seen) == 2
