import math
from types import SimpleNamespace

import pytest
import torch

from spd.distill import (
    DistillConfig,
    attention_mse,
    distillation_loss,
    hidden_mse,
    soft_cross_entropy,
    task_loss,
)


def test_soft_cross_entropy_hand_computed():
    s = torch.tensor([[1.0, 2.0]])
    t = torch.tensor([[2.0, 0.0]])
    T = 2.0
    # p_t = softmax([1, 0]); log p_s = log_softmax([0.5, 1])
    pt = [math.e / (math.e + 1), 1 / (math.e + 1)]
    lse = math.log(math.exp(0.5) + math.exp(1.0))
    logps = [0.5 - lse, 1.0 - lse]
    want = -(pt[0] * logps[0] + pt[1] * logps[1]) * T * T  # = 3.35842...
    assert float(soft_cross_entropy(s, t, T)) == pytest.approx(want, rel=1e-6)
    assert want == pytest.approx(3.358425, rel=1e-5)


def test_soft_cross_entropy_reductions_and_grad_only_to_student():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    per = soft_cross_entropy(s, t, 3.0, reduction="none")
    assert per.shape == (4,)
    with torch.no_grad():
        assert float(soft_cross_entropy(s, t, 3.0)) == pytest.approx(float(per.mean()))
        assert float(soft_cross_entropy(s, t, 3.0, "sum")) == pytest.approx(float(per.sum()), rel=1e-6)
    per.sum().backward()
    assert s.grad is not None and t.grad is None
    # T=1 soft CE with a one-hot-like teacher tends to the hard CE
    hard = torch.tensor([[30.0, 0.0, 0.0]])
    x = torch.tensor([[0.2, 0.1, -0.3]])
    assert float(soft_cross_entropy(x, hard, 1.0)) == pytest.approx(
        float(task_loss(x, torch.tensor([0]))), rel=1e-6
    )
    with pytest.raises(ValueError, match="temperature"):
        soft_cross_entropy(s, t, 0.0)
    with pytest.raises(ValueError, match="shape"):
        soft_cross_entropy(s, t[:, :2])
    with pytest.raises(ValueError, match="reduction"):
        soft_cross_entropy(s, t, 1.0, reduction="avg")


def test_hidden_mse_hand_computed_with_padding():
    s1 = torch.tensor([[[1.0, 2.0], [5.0, 5.0]]])  # second token is padding
    t1 = torch.zeros(1, 2, 2)
    s2 = torch.ones(1, 2, 2)
    mask = torch.tensor([[1, 0]])
    # layer 1: (1 + 4) / (1 token * 2 dims) = 2.5; layer 2: identical -> 0; mean 1.25
    assert float(hidden_mse([s1, s2], [t1, s2.clone()], mask)) == pytest.approx(1.25)
    # without a mask both tokens count: (1 + 4 + 25 + 25) / 4 = 13.75 -> mean 6.875
    assert float(hidden_mse([s1, s2], [t1, s2.clone()])) == pytest.approx(6.875)
    with pytest.raises(ValueError, match="same non-zero number"):
        hidden_mse([s1], [t1, t1])


def test_attention_mse_hand_computed():
    s = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])  # (B=1, heads=1, L=2, L=2)
    t = torch.full((1, 1, 2, 2), 0.5)
    assert float(attention_mse([s], [t], torch.tensor([[1, 1]]))) == pytest.approx(0.5 / 4)
    assert float(attention_mse([s], [t], torch.tensor([[1, 0]]))) == pytest.approx(0.25)
    two_heads = torch.cat([s, t], 1)
    assert float(attention_mse([two_heads], [torch.cat([t, t], 1)])) == pytest.approx(0.5 / 8)


def test_task_loss_ce_and_regression():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert float(task_loss(logits, torch.tensor([1]))) == pytest.approx(-math.log(0.75))
    reg = torch.tensor([[2.5], [0.0]])
    assert float(task_loss(reg, torch.tensor([1.0, 1.0]), regression=True)) == pytest.approx((2.25 + 1.0) / 2)


def test_distillation_loss_weights():
    torch.manual_seed(0)
    B, L, H, nh = 3, 4, 8, 2
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])

    def out():
        return SimpleNamespace(
            logits=torch.randn(B, 2),
            hidden_states=[torch.randn(B, L, H) for _ in range(3)],
            attentions=[torch.softmax(torch.randn(B, nh, L, L), -1) for _ in range(2)],
        )

    s, t = out(), out()
    labels = torch.tensor([0, 1, 1])
    cfg = DistillConfig(
        temperature=2.0,
        alpha_ce=0.5,
        alpha_logit=2.0,
        alpha_hidden=3.0,
        alpha_attn=4.0,
        layer_reduction="mean",
    )
    total, parts = distillation_loss(s, t, labels, mask, cfg)
    want = (
        0.5 * task_loss(s.logits, labels, reduction="none")
        + 2.0 * soft_cross_entropy(s.logits, t.logits, 2.0, reduction="none")
        + 3.0 * hidden_mse(s.hidden_states, t.hidden_states, mask, "none")
        + 4.0 * attention_mse(s.attentions, t.attentions, mask, "none")
    )
    assert torch.allclose(total, want)
    assert set(parts) == {"ce", "logit", "hidden", "attn"}
    # regression: logit term is the MSE to the teacher's output
    sr, tr = (
        SimpleNamespace(logits=torch.tensor([[1.0], [2.0]])),
        SimpleNamespace(logits=torch.tensor([[0.0], [0.0]])),
    )
    total, _ = distillation_loss(sr, tr, torch.tensor([1.0, 1.0]), None, DistillConfig(alpha_logit=1.0), True)
    assert total.tolist() == pytest.approx([1.0 + 0.0, 4.0 + 1.0])
    with pytest.raises(ValueError, match="no teacher"):
        distillation_loss(s, None, labels, mask, cfg)
    with pytest.raises(ValueError, match="alpha_attn"):
        DistillConfig(alpha_attn=-1)
