"""The fused activations of the cpu forward at the edges: large, tiny, infinite and NaN inputs give
what torch's own activations give (the erf GELU divides by a Newton-refined reciprocal)."""

import pytest
import torch

import spd_kernels as sk

pytestmark = pytest.mark.skipif(bool(sk.available_backends()["cpu"]), reason="cpu backend not available")


@pytest.mark.parametrize("activation,torch_fn", [
    ("gelu", lambda z: torch.nn.functional.gelu(z)),
    ("gelu_tanh", lambda z: torch.nn.functional.gelu(z, approximate="tanh")),
    ("relu", torch.relu),
])  # fmt: skip
def test_fused_activation_matches_torch_everywhere(activation, torch_fn):
    z = torch.cat([
        torch.linspace(-12, 12, 40001),
        torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30]),
    ])  # fmt: skip
    eye = sk.SparseMatrix.from_dense(torch.eye(8), block=(1, 1))  # y[:, j] = z for every column j
    x = z.view(-1, 1).expand(-1, 8).contiguous()
    with sk.use_backend("cpu"), torch.no_grad():
        y = sk.sparse_linear(x, eye, activation=activation)[:, 0]
    want = torch_fn(z.double())
    assert torch.equal(torch.isnan(y), torch.isnan(want))
    finite = torch.isfinite(want)
    assert torch.equal(y[~finite & ~torch.isnan(want)], want[~finite & ~torch.isnan(want)].float())
    err = (y[finite].double() - want[finite]).abs() / (1 + want[finite].abs())
    assert err.max().item() < 1e-6, (activation, err.max().item())
