"""Backend registry, forced backends, the error that lists every backend's reasons, and the
bad inputs of sparse_linear."""

import subprocess
import sys

import pytest
import torch

import spd_kernels as sk
from helpers import random_sparse
from spd_kernels.backends import BACKENDS, Backend


def test_available_backends_lists_all_four_with_reasons():
    av = sk.available_backends()
    assert set(av) == {"reference", "cpu", "triton", "cuda"}
    assert av["reference"] == []
    for name, reasons in av.items():
        assert isinstance(reasons, list) and all(isinstance(r, str) and r for r in reasons)
    if not torch.cuda.is_available():
        assert av["cuda"], "cuda must say why it is unavailable without a GPU"


def test_cli_one_liner_prints_backends():
    out = subprocess.run(
        [sys.executable, "-c", "import spd_kernels as sk; print(sk.available_backends())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in ("reference", "cpu", "triton", "cuda"):
        assert f"'{name}'" in out


class _Recorder(Backend):
    """A backend that refuses blocks other than (32, 32) and counts its calls."""

    name = "recorder"

    def __init__(self):
        self.calls = []

    def call_reasons(self, op, device, dtype, block):
        return [] if block == (32, 32) else [f"block {block} not supported (32x32 only)"]

    def dds_t(self, x, values, meta, bias, activation, save_preact):
        self.calls.append("dds_t")
        return BACKENDS["reference"].dds_t(x, values, meta, bias, activation, save_preact)

    def dds(self, dy, values, meta):
        self.calls.append("dds")
        return BACKENDS["reference"].dds(dy, values, meta)

    def sdd(self, dy, x, values, meta):
        self.calls.append("sdd")
        return BACKENDS["reference"].sdd(dy, x, values, meta)


@pytest.fixture
def recorder(monkeypatch):
    rec = _Recorder()
    monkeypatch.setitem(BACKENDS, "recorder", rec)
    return rec


def test_forced_backend_is_used_and_restored(recorder):
    W, _ = random_sparse(64, 64, (32, 32), 0.5)
    x = torch.randn(3, 64)
    with sk.use_backend("recorder"):
        assert sk.forced_backend() == "recorder"
        sk.sparse_linear(x, W)
    assert recorder.calls == ["dds_t"]
    assert sk.forced_backend() is None
    sk.sparse_linear(x, W)
    assert recorder.calls == ["dds_t"]


def test_backward_uses_the_backend_forced_at_forward(recorder):
    """autograd may run backward on another thread (CUDA) or outside the with-block."""
    W, _ = random_sparse(64, 64, (32, 32), 0.5)
    x = torch.randn(3, 64, requires_grad=True)
    v = W.values.clone().requires_grad_(True)
    with sk.use_backend("recorder"):
        y = sk.sparse_linear(x, W.with_values(v))
    y.sum().backward()
    assert recorder.calls == ["dds_t", "dds", "sdd"]


def test_env_var_forces_backend(recorder, monkeypatch):
    W, _ = random_sparse(64, 64, (32, 32), 0.5)
    monkeypatch.setenv("SPD_KERNELS_BACKEND", "recorder")
    sk.sparse_linear(torch.randn(2, 64), W)
    assert recorder.calls == ["dds_t"]
    monkeypatch.setenv("SPD_KERNELS_BACKEND", "nope")
    with pytest.raises(ValueError, match=r"unknown backend 'nope'"):
        sk.sparse_linear(torch.randn(2, 64), W)


def test_forced_backend_that_cannot_run_lists_every_reason(recorder):
    W, _ = random_sparse(64, 64, (16, 16), 0.5)
    with sk.use_backend("recorder"), pytest.raises(sk.NoBackendError) as e:
        sk.sparse_linear(torch.randn(2, 64), W)
    msg = str(e.value)
    assert "backend 'recorder' (forced) cannot run dds_t" in msg
    assert "block (16, 16) not supported (32x32 only)" in msg
    for name in ("reference", "cpu", "triton", "cuda"):
        assert f"  {name}: " in msg
    assert isinstance(e.value, ValueError)


def test_unknown_backend_name():
    with pytest.raises(ValueError, match=r"unknown backend 'fast'.*known backends"):
        with sk.use_backend("fast"):
            pass


def test_automatic_choice_on_cpu():
    b = sk.choose_backend("dds_t", torch.device("cpu"), torch.float32, (32, 32))
    assert b.name == ("cpu" if not sk.available_backends()["cpu"] else "reference")
    # float64 is reference-only on CPU
    assert sk.choose_backend("dds", torch.device("cpu"), torch.float64, (32, 32)).name == "reference"


# ----------------------------------------------------------------- bad input to sparse_linear
def test_bad_inputs_raise_clear_errors():
    W, _ = random_sparse(64, 96, (32, 32), 0.5)
    with pytest.raises(ValueError, match=r"x has 95 features.*\(4, 95\).*K=96"):
        sk.sparse_linear(torch.randn(4, 95), W)
    with pytest.raises(TypeError, match=r"x has dtype torch.float64 but the weight has dtype torch.float32"):
        sk.sparse_linear(torch.randn(4, 96, dtype=torch.float64), W)
    with pytest.raises(TypeError, match=r"x must be a floating tensor, got torch.int64"):
        sk.sparse_linear(torch.ones(4, 96, dtype=torch.long), W)
    with pytest.raises(TypeError, match=r"weight must be a spd_kernels.SparseMatrix, got Tensor"):
        sk.sparse_linear(torch.randn(4, 96), torch.randn(64, 96))
    with pytest.raises(ValueError, match=r"bias must have shape \(64,\), got \(63,\)"):
        sk.sparse_linear(torch.randn(4, 96), W, torch.randn(63))
    with pytest.raises(TypeError, match=r"bias has dtype torch.float16"):
        sk.sparse_linear(torch.randn(4, 96), W, torch.randn(64, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"activation must be one of .* got 'swish'"):
        sk.sparse_linear(torch.randn(4, 96), W, activation="swish")


def test_device_mismatch_is_a_value_error():
    W, _ = random_sparse(64, 96, (32, 32), 0.5)
    x = torch.randn(4, 96, device="meta")
    with pytest.raises(ValueError, match=r"x is on meta but the weight is on cpu"):
        sk.sparse_linear(x, W)
