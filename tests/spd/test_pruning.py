import math

import pytest
import torch
from spd_tiny import tiny_bert

from spd.models import make_prunable, prunable_linear_names
from spd.pruning import Pruner, PruningConfig, global_topk_masks, model_sparsity, parse_granularity
from spd_kernels.nn import MaskedLinear, reduce_to_blocks


def _pruned_model(method, granularity="element", **cfg):
    # these tests check committed masks between updates: movement methods without regrowth
    # (regrowth, the default, is tested in test_method.py)
    if method in ("movement", "soft-movement"):
        cfg.setdefault("regrow", False)
    model = tiny_bert(hidden=64, intermediate=128)
    config = PruningConfig(method=method, granularity=granularity, **cfg)
    mods = make_prunable(model, block=config.block, scores=config.score_mode, score_init=config.score_init)
    return model, mods, config


def _densities(mods):
    return {n: float(m.effective_mask().float().mean()) for n, m in mods.items()}


def test_parse_granularity():
    assert parse_granularity("element") == (1, 1)
    assert parse_granularity("block32") == (32, 32)
    assert parse_granularity("block16x32") == (16, 32)
    for bad in ("block", "block0", "blk32", "32"):
        with pytest.raises(ValueError, match="granularity"):
            parse_granularity(bad)


def test_config_validation():
    with pytest.raises(ValueError, match="pruning method"):
        PruningConfig(method="random")
    with pytest.raises(ValueError, match="sparsity"):
        PruningConfig(sparsity=1.2)
    with pytest.raises(ValueError, match="update_every"):
        PruningConfig(update_every=0)
    with pytest.raises(ValueError, match="warmup_fraction"):
        PruningConfig(warmup_fraction=0.7, cooldown_fraction=0.5)


def test_make_prunable_replaces_the_six_encoder_linears():
    model = tiny_bert()
    mods = make_prunable(model)
    assert list(mods) == prunable_linear_names(model)
    assert len(mods) == 2 * 6
    assert all(isinstance(model.get_submodule(n), MaskedLinear) for n in mods)
    assert not isinstance(model.classifier, MaskedLinear)


@pytest.mark.parametrize("granularity", ["element", "block16"])
def test_magnitude_local_reaches_schedule_exactly(granularity):
    model, mods, cfg = _pruned_model("magnitude", granularity, sparsity=0.75, update_every=1)
    pruner = Pruner(mods, cfg, total_steps=20)
    for step in range(20):
        pruner.update(step)
        want = 1 - pruner.target_sparsity(step)
        for n, d in _densities(mods).items():
            assert d == pytest.approx(want, abs=1.5 / (mods[n].mask.numel() / math.prod(cfg.block))), n
    assert pruner.sparsity() == pytest.approx(0.75)
    if granularity == "block16":
        for m in mods.values():
            b = m.mask.reshape(m.out_features // 16, 16, m.in_features // 16, 16)
            assert torch.equal(b.all(3).all(1), b.any(3).any(1)), "masks must be whole blocks"


def test_magnitude_local_keeps_largest():
    model, mods, cfg = _pruned_model("magnitude", sparsity=0.5, warmup_fraction=0, cooldown_fraction=0)
    m = next(iter(mods.values()))
    w = m.weight.detach().abs().clone()
    Pruner(mods, cfg, total_steps=1).update(0)
    thresh = w.flatten().kthvalue(w.numel() // 2).values
    assert torch.equal(m.mask, w > thresh)


def test_magnitude_global_scope():
    model, mods, cfg = _pruned_model(
        "magnitude", sparsity=0.6, scope="global", warmup_fraction=0, cooldown_fraction=0
    )
    with torch.no_grad():  # one layer with large weights keeps more under one global threshold
        first = next(iter(mods.values()))
        first.weight.mul_(10)
    Pruner(mods, cfg, total_steps=1).update(0)
    assert model_sparsity(mods) == pytest.approx(0.6, abs=1e-4)
    d = _densities(mods)
    assert d[next(iter(mods))] > 0.9 and min(d.values()) < 0.4


@pytest.mark.parametrize("method", ["magnitude", "movement", "soft-movement"])
def test_mask_update_never_resurrects(method):
    model, mods, cfg = _pruned_model(method, sparsity=0.8, update_every=1)
    pruner = Pruner(mods, cfg, total_steps=10)
    for step in range(6):
        with torch.no_grad():
            for m in mods.values():
                if m.scores is not None:
                    m.scores.normal_()
        pruner.update(step)
    before = {n: m.mask.clone() for n, m in mods.items()}
    assert sum(int((~b).sum()) for b in before.values()) > 0
    with torch.no_grad():  # make every pruned entry look most important
        for n, m in mods.items():
            m.weight[~before[n]] = 1e6
            if m.scores is not None:
                m.scores[~before[n]] = 1e6
    for step in range(6, 10):
        pruner.update(step)
        for n, m in mods.items():
            assert not (m.mask & ~before[n]).any(), f"{n} regrew at step {step}"
            assert not (m.effective_mask().bool() & ~before[n]).any()


def test_update_frequency():
    model, mods, cfg = _pruned_model(
        "magnitude",
        sparsity=0.9,
        update_every=4,
        warmup_fraction=0,
        cooldown_fraction=0.25,
        max_step_sparsity=0.0,  # --update-every as given
    )
    pruner = Pruner(mods, cfg, total_steps=16)  # final sparsity from step 11
    changed = []
    for step in range(16):
        before = [m.mask.clone() for m in mods.values()]
        committed = pruner.update(step)
        diff = any(not torch.equal(b, m.mask) for b, m in zip(before, mods.values()))
        assert not diff or committed
        changed.append(committed)
    assert [s for s, c in enumerate(changed) if c] == [0, 4, 8, 11, 12]
    assert pruner.sparsity() == pytest.approx(0.9, abs=2e-3)


@pytest.mark.parametrize("block", [(1, 1), (16, 16)])
def test_movement_scores_straight_through_gradient(block):
    torch.manual_seed(1)
    m = MaskedLinear(32, 48, block=block, scores="threshold")
    m.threshold = -math.inf
    m.set_mask(torch.rand(48, 32) > 0.3)
    x = torch.randn(5, 32)
    g = torch.randn(5, 48)
    (m(x) * g).sum().backward()
    # reference: y = x (W ⊙ M)ᵀ with M a leaf; the scores' gradient is ∂L/∂M summed per block,
    # and ∂L/∂M = (gᵀ x) ⊙ W ⊙ mask (the fixed mask multiplies M)
    mask_f = m.mask.float().requires_grad_(True)
    w = m.weight.detach()
    (torch.nn.functional.linear(x, w * mask_f, m.bias.detach()) * g).sum().backward()
    dM = (g.t() @ x) * w
    want = reduce_to_blocks(dM * m.mask, block)
    assert torch.allclose(m.scores.grad, want, atol=1e-5, rtol=1e-5)
    assert torch.allclose(reduce_to_blocks(mask_f.grad * m.mask, block), want, atol=1e-5, rtol=1e-5)


def test_movement_prunes_by_score():
    model, mods, cfg = _pruned_model("movement", sparsity=0.5, warmup_fraction=0, cooldown_fraction=0)
    with torch.no_grad():
        for m in mods.values():
            m.scores.copy_(torch.randn_like(m.scores))
    pruner = Pruner(mods, cfg, total_steps=1)
    pruner.update(0)
    for m in mods.values():
        s = m.scores.detach()
        assert int(m.mask.sum()) == s.numel() // 2
        assert torch.equal(m.mask, s >= s[m.mask].min())  # exactly the top half
    x = torch.randint(0, 60, (2, 6))
    model(input_ids=x).logits.sum().backward()  # forward uses only the committed mask
    assert all(m.scores.grad is not None for m in mods.values())


def test_soft_movement_l1_term_and_threshold():
    model, mods, cfg = _pruned_model(
        "soft-movement",
        sparsity=0.9,
        soft_lambda=3.0,
        soft_threshold_init=0.1,
        soft_threshold_final=0.7,
        soft_threshold_mode="cubic",  # emmental's threshold ramp
        warmup_fraction=0,
        cooldown_fraction=0,
    )
    with torch.no_grad():
        for m in mods.values():
            m.scores.normal_()
    pruner = Pruner(mods, cfg, total_steps=100)
    step = 50
    pruner.update(step)
    c = 1 - (1 - 51 / 100) ** 3  # the value used during step k is the schedule after k+1 steps
    tau = 0.1 + 0.6 * c
    lam = 3.0 * tau / 0.7  # emmental: λ_t = λ_f · τ_t / τ_f
    assert all(m.threshold == pytest.approx(tau) for m in mods.values())
    scores = [m.scores for m in mods.values()]
    # emmental's L1: the mean over modules of each module's mean σ(S)
    want = lam * sum(torch.sigmoid(s.detach().double()).mean() for s in scores) / len(scores)
    reg = pruner.regularization(step)
    assert float(reg.detach()) == pytest.approx(float(want), rel=1e-5)
    reg.backward()
    s0 = scores[0].detach()
    dsig = torch.sigmoid(s0) * (1 - torch.sigmoid(s0))
    n0 = s0.numel() * len(scores)
    assert torch.allclose(scores[0].grad, lam * dsig / n0, rtol=1e-5, atol=1e-12)
    # the forward mask is σ(S) > τ on top of the committed mask
    m = next(iter(mods.values()))
    assert torch.equal(m.effective_mask().bool(), (torch.sigmoid(m.scores.detach()) > tau) & m.mask)


def test_soft_movement_ends_at_exact_budget_and_respects_schedule():
    model, mods, cfg = _pruned_model(
        "soft-movement",
        sparsity=0.9,
        update_every=2,
        warmup_fraction=0.1,
        cooldown_fraction=0.2,
        soft_threshold_final=0.5,
    )
    pruner = Pruner(mods, cfg, total_steps=30)
    gen = torch.Generator().manual_seed(0)
    for step in range(30):
        with torch.no_grad():
            for m in mods.values():
                m.scores.sub_(0.2 * torch.rand(m.scores.shape, generator=gen))  # L1-like drift down
        pruner.update(step)
        committed = 1 - sum(int(m.mask.sum()) for m in mods.values()) / sum(
            m.mask.numel() for m in mods.values()
        )
        if step <= pruner.ramp_end and (step % 2 == 0 or step == pruner.ramp_end):
            # every commit lands on the cubic schedule (no single cut at the end of the ramp)
            assert committed == pytest.approx(pruner.target_sparsity(step), abs=2e-3)
        assert committed <= pruner.target_sparsity(step) + 2e-3, "never sparser than the cubic schedule"
    assert pruner.sparsity() == pytest.approx(0.9, abs=1e-3)
    assert pruner.regularization(29) is None  # cool-down: the mask is fixed, no penalty


def test_global_topk_masks_split():
    a, b = torch.tensor([[5.0, 1.0]]), torch.tensor([3.0, 4.0, 0.0])
    alive = [torch.tensor([[True, True]]), torch.tensor([True, False, True])]
    ma, mb = global_topk_masks([a, b], alive, 0.4)
    assert ma.tolist() == [[True, False]] and mb.tolist() == [True, False, False]


def test_pruner_rejects_wrong_layers():
    model, mods, cfg = _pruned_model("magnitude")
    with pytest.raises(ValueError, match="block"):
        Pruner(mods, PruningConfig(method="magnitude", granularity="block16"), 10)
    with pytest.raises(ValueError, match="scores"):
        Pruner(mods, PruningConfig(method="movement"), 10)
    with pytest.raises(ValueError, match="total_steps"):
        Pruner(mods, cfg, 0)
