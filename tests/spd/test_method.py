"""The methods as their references run them: SPD's loss and schedule, what trains, movement
masks that can regrow, and a small end-to-end run that learns (not only 0 <= accuracy <= 1)."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from spd_tiny import save_tiny_model_dir, sentences, write_csv

from spd.cli import main
from spd.distill import DistillConfig, distillation_loss
from spd.methods import method_distill_defaults, method_pruning_defaults
from spd.pruning import Pruner, PruningConfig
from spd_kernels.nn import MaskedLinear


def test_spd_loss_equals_the_authors_formula_hand_computed():
    """SPD defaults: Σ over all hidden states of the MSE + Σ over layers of the attention MSE +
    soft CE at T = 1 without T²; no hard-label term."""
    cfg = DistillConfig(**method_distill_defaults("spd", kd=False))
    B, L, H, nh = 2, 3, 4, 2
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(B, L, dtype=torch.long)
    s_h = [torch.randn(B, L, H, generator=g) for _ in range(3)]
    t_h = [torch.randn(B, L, H, generator=g) for _ in range(3)]
    s_a = [torch.softmax(torch.randn(B, nh, L, L, generator=g), -1) for _ in range(2)]
    t_a = [torch.softmax(torch.randn(B, nh, L, L, generator=g), -1) for _ in range(2)]
    s_l, t_l = torch.randn(B, 2, generator=g), torch.randn(B, 2, generator=g)

    class Out:
        def __init__(self, logits, hidden, attn):
            self.logits, self.hidden_states, self.attentions = logits, hidden, attn

    total, parts = distillation_loss(Out(s_l, s_h, s_a), Out(t_l, t_h, t_a), torch.tensor([0, 1]), mask, cfg)
    for b in range(B):
        hid = sum(float(((s[b] - t[b]) ** 2).mean()) for s, t in zip(s_h, t_h))
        att = sum(float(((s[b] - t[b]) ** 2).mean()) for s, t in zip(s_a, t_a))
        p_t = torch.softmax(t_l[b], -1)
        ce = float(-(p_t * torch.log_softmax(s_l[b], -1)).sum())
        assert float(total[b]) == pytest.approx(hid + att + ce, rel=1e-5)
    assert "ce" not in parts


def test_spd_mask_schedule_hits_its_update_count_and_final_sparsity():
    layers = {f"l{i}": MaskedLinear(40, 30) for i in range(3)}
    cfg = PruningConfig(method="magnitude", sparsity=0.9, **method_pruning_defaults("spd"))
    total = 120
    pruner = Pruner(layers, cfg, total)
    updates, sparsities = [], []
    for step in range(total):
        if pruner.update(step):
            updates.append(step)
            sparsities.append(pruner.sparsity())
    assert len(updates) == 12 and updates[0] == 0  # from the first step, 12 updates
    assert updates[-1] == (11 * total) // 12 == pruner.ramp_end
    assert sparsities[0] == pytest.approx(0.9 * (1 - (11 / 12) ** 3), abs=1e-3)
    for m in layers.values():  # every matrix exactly at the final sparsity
        assert int(m.mask.sum()) == round(0.1 * m.mask.numel())
    assert sparsities == sorted(sparsities)


def test_movement_masks_regrow_during_the_ramp_then_commit_the_exact_budget():
    layer = MaskedLinear(8, 8, scores="topk")
    cfg = PruningConfig(method="movement", sparsity=0.75, warmup_fraction=0.0, cooldown_fraction=0.5)
    pruner = Pruner({"l": layer}, cfg, 10)
    with torch.no_grad():
        layer.scores.copy_(torch.arange(64.0).view(8, 8))
    pruner.update(3)
    first = layer.effective_mask().bool()
    assert bool(layer.mask.all())  # nothing committed during the ramp
    with torch.no_grad():
        layer.scores.copy_(-torch.arange(64.0).view(8, 8))  # the scores' order reverses
    second = layer.effective_mask().bool()
    assert bool((second & ~first).any())  # weights pruned a step ago are back
    assert int(first.sum()) == int(second.sum())
    pruner.update(pruner.ramp_end)
    assert int(layer.mask.sum()) == 16 and layer.effective_mask().bool().equal(layer.mask)


def test_soft_movement_floor_keeps_every_matrix_alive():
    a, b = MaskedLinear(20, 20, scores="sigmoid_threshold"), MaskedLinear(20, 20, scores="sigmoid_threshold")
    with torch.no_grad():
        a.scores.fill_(-5.0)  # every σ(S) under any threshold: emmental still keeps 0.5 %
        b.scores.normal_(3.0, 1.0)
    cfg = PruningConfig(
        method="soft-movement", sparsity=0.9, min_density=0.005, **method_pruning_defaults("soft-movement")
    )
    pruner = Pruner({"a": a, "b": b}, cfg, 20)
    pruner.update(10)
    assert int(a.effective_mask().sum()) == math.ceil(0.005 * 400)
    pruner.update(pruner.ramp_end)  # global commit by score: a would be emptied without the floor
    assert int(a.mask.sum()) >= 2 and int(b.mask.sum()) > 0
    reg = pruner.regularization(0)  # λ·mean over modules of mean σ(S)
    assert reg is None or float(reg) >= 0


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    d = tmp_path_factory.mktemp("learn")
    save_tiny_model_dir(str(d / "model"), dropout=0.0, hidden=32, intermediate=64)
    rows = sentences(320, seed=7)
    write_csv(d / "train.csv", rows[:224])
    write_csv(d / "dev.csv", rows[224:272])
    write_csv(d / "test.csv", rows[272:])
    majority = max(sum(y for _, y in rows[272:]), sum(1 - y for _, y in rows[272:])) / 48
    return d, majority


def test_spd_end_to_end_learns_and_keeps_frozen_parts_bitwise(learnable):
    d, majority = learnable
    out = d / "spd"
    rc = main([
        "prune", "--method", "spd", "--model", str(d / "model"), "--task", "files",
        "--train-file", str(d / "train.csv"), "--validation-file", str(d / "dev.csv"),
        "--test-file", str(d / "test.csv"), "--output-dir", str(out), "--batch-size", "16",
        "--teacher-epochs", "6", "--teacher-lr", "3e-3", "--prune-epochs", "4", "--prune-lr", "1e-3",
        "--final-epochs", "2", "--final-lr", "1e-3", "--sparsity", "0.5", "--no-progress",
        "--cache-dir", "none", "--threads", "1", "--seed", "3",
    ])  # fmt: skip
    assert rc == 0
    r = json.loads((out / "results.json").read_text())
    teacher, student = r["teacher"]["test"]["accuracy"], r["best"]["test"]["accuracy"]
    assert teacher >= majority + 0.2, (teacher, majority)
    assert student >= majority + 0.15, (student, majority)
    assert r["best"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    # only the encoder layers trained: embeddings, pooler and classifier are the teacher's, bitwise
    t = load_file(str(out / "teacher" / "model.safetensors"))
    s = load_file(str(out / "final" / "model.safetensors"))
    frozen = [k for k in t if not k.startswith("bert.encoder.")]
    assert frozen and all(torch.equal(t[k], s[k]) for k in frozen)
    assert any(not torch.equal(t[k], s[k]) for k in t if k.startswith("bert.encoder.") and k in s)
    # the logged terms are the SPD loss's, and padding is logged
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    spd = [x for x in recs if x.get("phase") == "spd" and "loss" in x]
    assert spd and all("loss_hidden" in x and "loss_attn" in x and "loss_ce" not in x for x in spd)
    assert all(0.0 <= x["padding"] < 0.5 for x in spd)
