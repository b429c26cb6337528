"""torch.compile(fullgraph=True) and torch.export trace through the custom ops."""

import pytest
import torch

import spd_kernels as sk
from helpers import random_sparse


@pytest.mark.parametrize("activation", [None, "gelu"])
def test_compile_fullgraph_matches_eager_forward_and_backward(activation):
    torch._dynamo.reset()
    W, _ = random_sparse(64, 96, (32, 32), 0.5)
    bias = torch.randn(64)

    def f(x, values, b):
        return sk.sparse_linear(x, W.with_values(values), b, activation=activation).square().sum()

    compiled = torch.compile(f, fullgraph=True)
    x = torch.randn(2, 7, 96)
    grads = []
    outs = []
    for fn in (f, compiled):
        xr = x.clone().requires_grad_(True)
        v = W.values.clone().requires_grad_(True)
        b = bias.clone().requires_grad_(True)
        out = fn(xr, v, b)
        out.backward()
        outs.append(out.detach())
        grads.append((xr.grad, v.grad, b.grad))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-4)
    for ge, gc in zip(*grads):
        torch.testing.assert_close(gc, ge, rtol=1e-5, atol=1e-4)


def test_fake_shapes_match_real():
    W, _ = random_sparse(64, 96, (16, 32), 0.5)
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.randn(5, 96)
    y, z = torch.ops.spd_kernels.dds_t(x, W.values, *W.metadata(), None, "gelu", True)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fx = mode.from_tensor(x)
        fy, fz = torch.ops.spd_kernels.dds_t(fx, W.values, *W.metadata(), None, "gelu", True)
        fdx = torch.ops.spd_kernels.dds(fy, W.values, *W.metadata())
        fdw = torch.ops.spd_kernels.sdd(fy, fx, W.values, *W.metadata())
    assert fy.shape == y.shape and fz.shape == z.shape
    assert fdx.shape == (5, 96) and fdw.shape == W.values.shape


def test_opcheck():
    W, _ = random_sparse(32, 64, (16, 16), 0.5)
    x = torch.randn(3, 64)
    dy = torch.randn(3, 32)
    torch.library.opcheck(
        torch.ops.spd_kernels.dds_t.default,
        (x, W.values, *W.metadata(), torch.randn(32), "relu", False),
    )
    torch.library.opcheck(torch.ops.spd_kernels.dds.default, (dy, W.values, *W.metadata()))
    torch.library.opcheck(torch.ops.spd_kernels.sdd.default, (dy, x, W.values, *W.metadata()))


def test_export():
    W, _ = random_sparse(32, 64, (16, 16), 0.5)

    class M(torch.nn.Module):
        def forward(self, x):
            return sk.sparse_linear(x, W, activation="relu")

    x = torch.randn(4, 64)
    ep = torch.export.export(M(), (x,))
    torch.testing.assert_close(ep.module()(x), M()(x))
