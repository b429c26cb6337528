"""SparseLinear: packed values on a fixed pattern, fused bias + activation, state dicts, and
no per-call work beyond the kernel under inference_mode."""

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import spd_kernels as sk
from helpers import assert_close_to_ref, random_block_mask, ref_linear
from spd_kernels.nn import MaskedLinear, SparseLinear


@pytest.mark.parametrize("block", [(1, 1), (16, 16), (32, 16)])
@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh"])
def test_from_linear_matches_float64_reference(block, activation):
    lin = nn.Linear(96, 64)
    mask = random_block_mask(64, 96, block, 0.7)
    layer = SparseLinear.from_linear(lin, mask=mask, block=block, activation=activation)
    assert layer.layout == {(1, 1): "csr", (16, 16): "bsr16", (32, 16): "bsr32x16"}[block]
    w = (lin.weight * mask).detach()
    x = torch.randn(2, 5, 96, requires_grad=True)
    y = layer(x)
    ref, _ = ref_linear(x.detach().reshape(-1, 96), w, lin.bias.detach(), activation)
    base = sk.activations.apply_activation(
        x.detach().reshape(-1, 96) @ w.t() + lin.bias.detach(), activation or "none"
    )
    assert_close_to_ref(y.detach().reshape(-1, 64), ref, base)
    y.square().sum().backward()
    # gradients of the packed values equal the dense masked gradient at the stored entries
    dense = nn.Linear(96, 64)
    dense.weight = nn.Parameter(w.clone())
    dense.bias = nn.Parameter(lin.bias.detach().clone())
    xd = x.detach().clone().requires_grad_(True)
    act = sk.activations.apply_activation
    act(dense(xd), activation or "none").square().sum().backward()
    want = sk.SparseMatrix.from_dense(dense.weight.grad, mask=mask, block=block).values
    torch.testing.assert_close(layer.values.grad, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x.grad, xd.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer.bias.grad, dense.bias.grad, rtol=1e-4, atol=1e-4)


def test_from_masked_to_linear_round_trip():
    m = MaskedLinear(64, 32, block=16)
    m.prune_magnitude(0.5)
    layer = SparseLinear.from_masked(m)
    assert layer.density == pytest.approx(0.5)
    assert torch.equal(layer.to_linear().weight, m.to_linear().weight)
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), m(x), rtol=1e-5, atol=1e-5)
    # from_linear of a MaskedLinear packs on its mask too
    assert torch.equal(SparseLinear.from_linear(m).values, layer.values)
    with pytest.raises(ValueError, match="from_masked"):
        SparseLinear.from_linear(m, mask=m.mask)


def test_state_dict_round_trip_into_another_pattern_and_device_moves():
    a = SparseLinear.from_linear(nn.Linear(64, 32), mask=random_block_mask(32, 64, (16, 16), 0.5), block=16)
    b = SparseLinear(64, 32, block=16, nnz_blocks=1, activation=None)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 64)
    assert torch.equal(b(x), a(x))
    assert b.values.shape == a.values.shape and b.values.requires_grad
    c = b.to(torch.float64)
    assert c.values.dtype == torch.float64 and c.row_offsets.dtype == torch.int32
    # only the CSR arrays are saved; the transposed metadata is rebuilt on load
    assert set(a.state_dict()) == {"values", "bias", "row_offsets", "col_indices"}
    for name in ("block_rows", "col_offsets", "row_indices_t", "perm_t"):
        assert torch.equal(getattr(b, name), getattr(a, name))


def test_corrupted_state_is_rejected():
    a = SparseLinear.from_linear(nn.Linear(64, 32), mask=random_block_mask(32, 64, (16, 16), 0.5), block=16)
    state = a.state_dict()
    state["col_indices"] = state["col_indices"].clone()
    state["col_indices"][0] = 99
    with pytest.raises(ValueError, match="pattern is invalid.*col_indices"):
        SparseLinear(64, 32, block=16).load_state_dict(state)
    state = a.state_dict()
    state["values"] = torch.zeros(state["values"].shape[0], 8, 8)
    with pytest.raises(ValueError, match="blocks"):
        SparseLinear(64, 32, block=16).load_state_dict(state)


def test_bad_inputs():
    lin = nn.Linear(64, 32)
    with pytest.raises(ValueError, match=r"mask shape \(32, 63\)"):
        SparseLinear.from_linear(lin, mask=torch.ones(32, 63, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(32, 64\) is not divisible by block \(24, 24\)"):
        SparseLinear.from_linear(lin, block=24)
    with pytest.raises(ValueError, match="activation must be one of"):
        SparseLinear(64, 32, activation="swish")
    with pytest.raises(TypeError, match="nn.Linear"):
        SparseLinear.from_linear(nn.Conv1d(3, 3, 1))
    W = sk.SparseMatrix.from_dense(torch.randn(32, 64), block=16)
    with pytest.raises(ValueError, match=r"bias must have shape \(32,\)"):
        SparseLinear.from_sparse(W, bias=torch.zeros(31))
    with pytest.raises(ValueError, match="nnz_blocks"):
        SparseLinear(64, 32, block=16, nnz_blocks=9)


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


VIEWS = {"aten.reshape.default", "aten.view.default", "aten._unsafe_view.default"}


def test_inference_runs_only_the_kernel_per_call():
    """Under inference_mode a call is views + one kernel (no custom-op dispatch): no packing,
    gathers or copies in the layer (what the kernel allocates is its output)."""
    m = MaskedLinear(64, 32, block=16, sparse_path="always")
    m.prune_magnitude(0.3)
    layers = [SparseLinear.from_masked(m, activation="gelu"), m]
    x = torch.randn(2, 5, 64)
    with torch.inference_mode():
        m(x)  # first call gathers and caches the values
        for layer in layers:
            layer(x)  # first call checks the metadata (once per metadata)
            for _ in range(2):
                with _OpLog() as log:
                    y = layer(x)
                # the inference fast path calls the backend's kernel, not the custom op
                kernels = [op for op in log.ops if op.startswith("spd_kernels")]
                assert kernels == ["spd_kernels_C.cpu_dds_t.default"], log.ops
                assert set(log.ops) - set(kernels) <= VIEWS, log.ops
                assert y.shape == (2, 5, 32)


@pytest.mark.parametrize("block", [(1, 1), (32, 32)])
def test_fast_path_equals_the_custom_op_and_training_keeps_the_op(block):
    """Inference skips the custom op (same numbers, bitwise); a call that needs a gradient,
    or any call under a forced backend, still goes where it should."""
    if sk.available_backends()["cpu"]:
        pytest.skip("cpu backend not available")
    lin = nn.Linear(64, 96)
    layer = SparseLinear.from_linear(
        lin, mask=random_block_mask(96, 64, block, 0.8), block=block, activation="gelu"
    )
    x = torch.randn(3, 7, 64)
    w = layer.weight
    via_op = sk.ops.dds_t(x.reshape(-1, 64), w.values, *w.metadata(), layer.bias, "gelu", False)[0]
    with torch.inference_mode():
        fast = layer(x)
    assert torch.equal(fast.reshape(-1, 96), via_op)
    with torch.no_grad(), _OpLog() as log:
        layer(x)
    assert [op for op in log.ops if op.startswith("spd_kernels")] == ["spd_kernels_C.cpu_dds_t.default"]
    with _OpLog() as log:  # the values need a gradient: the differentiable op
        layer(x)
    assert "spd_kernels.dds_t.default" in log.ops
    with torch.no_grad(), sk.use_backend("reference"), _OpLog() as log:
        ref = layer(x)
    assert not [op for op in log.ops if op.startswith("spd_kernels_C")]
    torch.testing.assert_close(ref, fast, rtol=1e-5, atol=1e-5)
