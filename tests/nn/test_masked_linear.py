import pytest
import torch
from torch import nn

from spd_kernels.nn import MaskedLinear, TopKBinarizerFunction, topk_mask


def test_all_ones_mask_equals_linear():
    lin = nn.Linear(64, 32)
    m = MaskedLinear.from_linear(lin)
    x = torch.randn(5, 64)
    assert torch.equal(m(x), lin(x))
    assert torch.equal(m.to_linear().weight, lin.weight)


@pytest.mark.parametrize("block", [(1, 1), (16, 32)])
def test_magnitude_pruning_block_and_no_regrow(block):
    m = MaskedLinear(64, 32, block=block)
    m.prune_magnitude(0.5)
    assert m.weight_density == pytest.approx(0.5)
    first = m.mask.clone()
    with torch.no_grad():  # make pruned weights huge: they must not come back
        m.weight[~first] = 1e6
    m.prune_magnitude(0.25)
    assert not (m.mask & ~first).any()
    assert m.weight_density == pytest.approx(0.25)
    bm, bk = block
    blocks = m.mask.reshape(32 // bm, bm, 64 // bk, bk)
    assert torch.all(blocks.all(3).all(1) == blocks.any(3).any(1))  # whole blocks


def test_set_mask_regrow_only_when_asked():
    m = MaskedLinear(8, 4)
    half = torch.rand(4, 8) > 0.5
    m.set_mask(half)
    m.set_mask(torch.ones(4, 8, dtype=torch.bool))
    assert torch.equal(m.mask, half)
    m.set_mask(torch.ones(4, 8, dtype=torch.bool), allow_regrow=True)
    assert m.mask.all()
    with pytest.raises(ValueError, match=r"mask shape \(3, 8\)"):
        m.set_mask(torch.ones(3, 8, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"torch.float32"):
        m.set_mask(torch.ones(4, 8))


def test_topk_binarizer_straight_through():
    s = torch.randn(6, 5, requires_grad=True)
    out = TopKBinarizerFunction.apply(s, 0.4)
    assert out.sum() == 12 and torch.equal(out.bool(), topk_mask(s, 0.4))
    g = torch.randn(6, 5)
    out.backward(g)
    assert torch.equal(s.grad, g)


def test_movement_scores_get_gradient_w_times_grad():
    m = MaskedLinear(8, 4, bias=False, scores="topk")
    m.density = 1.0
    x = torch.randn(3, 8)
    m(x).sum().backward()
    # dL/dS = dL/dW' * W where W' = W * mask: straight-through
    gw = torch.ones(3, 4).t() @ x
    torch.testing.assert_close(m.scores.grad, gw * m.weight.detach())


def test_bad_block():
    with pytest.raises(ValueError, match=r"\(30, 64\) is not divisible by block \(32, 32\)"):
        MaskedLinear(64, 30, block=32)
