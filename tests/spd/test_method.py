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
from spd.trainer import attention_for
from spd_kernels.nn import MaskedLinear


class _Out:
    def __init__(self, logits, hidden=None, attn=None):
        self.logits, self.hidden_states, self.attentions = logits, hidden, attn


def _authors_soft_cross_entropy(predicts, targets):
    # run_glue.py, as written there
    student_likelihood = torch.nn.functional.log_softmax(predicts, dim=-1)
    targets_prob = torch.nn.functional.softmax(targets, dim=-1)
    return (-targets_prob * student_likelihood).mean()


@pytest.mark.parametrize("classes", [2, 5])
def test_spd_loss_equals_the_authors_run_glue_loss(classes):
    """The batch loss (Σ per-example / B, what the trainer optimises) equals the authors'
    rep_loss + att_loss + cls_loss: MSELoss() per hidden state and per attention map, summed,
    plus the soft cross-entropy as (-p_t · log p_s).mean() over batch × classes (T = 1)."""
    cfg = DistillConfig(**method_distill_defaults("spd", kd=False))
    B, L, H, nh = 3, 4, 8, 2
    g = torch.Generator().manual_seed(classes)
    mask = torch.ones(B, L, dtype=torch.long)  # no padding: the authors do not mask it
    s_h = [torch.randn(B, L, H, generator=g) for _ in range(3)]
    t_h = [torch.randn(B, L, H, generator=g) for _ in range(3)]
    s_a = [torch.softmax(torch.randn(B, nh, L, L, generator=g), -1) for _ in range(2)]
    t_a = [torch.softmax(torch.randn(B, nh, L, L, generator=g), -1) for _ in range(2)]
    s_l, t_l = torch.randn(B, classes, generator=g), torch.randn(B, classes, generator=g)
    labels = torch.randint(0, classes, (B,), generator=g)
    total, parts = distillation_loss(_Out(s_l, s_h, s_a), _Out(t_l, t_h, t_a), labels, mask, cfg)
    mse = torch.nn.MSELoss()
    att_loss = sum(float(mse(s, t)) for s, t in zip(s_a, t_a))
    rep_loss = sum(float(mse(s, t)) for s, t in zip(s_h, t_h))
    cls_loss = float(_authors_soft_cross_entropy(s_l / 1.0, t_l / 1.0))
    assert float(total.sum() / B) == pytest.approx(rep_loss + att_loss + cls_loss, rel=1e-5)
    assert float(parts["logit"].sum() / B) == pytest.approx(cls_loss, rel=1e-6)
    assert "ce" not in parts  # the hard-label loss is only printed by the authors
    # the student's maps as transformers returns them, after attention dropout (the authors'
    # transformers 2.4 BertSelfAttention returns the dropped probabilities)
    assert cfg.attn_maps_after_dropout and attention_for(cfg) == "eager"


def test_spd_regression_logit_term_is_mse_to_the_labels():
    """run_glue.py, regression: ``MSELoss()(student_logits.view(-1), label_ids.view(-1))``;
    the teacher's output plays no part in that term."""
    cfg = DistillConfig(**method_distill_defaults("spd", kd=False))
    g = torch.Generator().manual_seed(1)
    s_l, t_l = torch.randn(5, 1, generator=g), torch.randn(5, 1, generator=g)
    y = torch.rand(5, generator=g) * 5
    h = [torch.zeros(5, 2, 4)]
    a = [torch.full((5, 1, 2, 2), 0.5)]
    _, parts = distillation_loss(_Out(s_l, h, a), _Out(t_l, h, a), y, None, cfg, regression=True)
    expected = float(torch.nn.MSELoss()(s_l.view(-1), y.view(-1)))
    assert float(parts["logit"].mean()) == pytest.approx(expected, rel=1e-6)
    # the baselines' KD regresses on the teacher's output
    kd = DistillConfig(**method_distill_defaults("magnitude", kd=True))
    _, kparts = distillation_loss(_Out(s_l), _Out(t_l), y, None, kd, regression=True)
    assert float(kparts["logit"].mean()) == pytest.approx(float(((s_l - t_l) ** 2).mean()), rel=1e-6)


def _authors_prune_schedule(sparse_step, frequency, target, numel):
    """The SPD authors' ``Prune`` (run_glue.py) with pretrain_step = 0, as written: ``prune()``
    runs after every optimizer step, ``_t`` counts the steps done. Returns {t: keep_k} of the
    steps after which the mask changes."""
    out, t = {}, 0
    while t < sparse_step + 5:
        t += 1
        if 0 < t < 0 + sparse_step and (t - 0) % frequency == 0:
            current_sparse_step = (t - 0) // frequency
            total_srarse_step = sparse_step // frequency
            current_sparsity = target + (0 - target) * (1.0 - current_sparse_step / total_srarse_step) ** 3
            out[t] = int(numel * (1.0 - current_sparsity))
    return out


@pytest.mark.parametrize("total", [120, 100, 642, 37])
def test_spd_mask_updates_are_the_authors(total):
    """Mask updates at t = k·freq (freq = ⌊T/12⌋), 0 < t < T, after step t (so before the
    forward of 0-based step t), each at s_f(1-(1-k/(T//freq))³) with the authors' keep count
    (they floor, we round: at most one weight apart)."""
    layers = {f"l{i}": MaskedLinear(40, 30) for i in range(2)}
    cfg = PruningConfig(method="magnitude", sparsity=0.9, **method_pruning_defaults("spd"))
    pruner = Pruner(layers, cfg, total)
    theirs = _authors_prune_schedule(total, int(total / 12), 0.9, 1200)
    ours = {}
    for step in range(total):
        if pruner.update(step):
            ours[step] = [int(m.mask.sum()) for m in layers.values()]
    assert sorted(ours) == sorted(theirs)
    for t, keep in theirs.items():
        assert all(abs(k - keep) <= 1 for k in ours[t]), (t, keep, ours[t])
    assert min(ours) == int(total / 12)  # the first update one interval in, not at step 0
    if total == 120:  # T divisible by 12: 11 updates, the last at s_f(1-(1/12)³)
        assert len(ours) == 11 and pruner.sparsity() == pytest.approx(0.9 * (1 - (1 / 12) ** 3), abs=1e-3)
    if total == 100:  # ⌊100/8⌋ = 12 intervals fit: the 12th update reaches s_f
        assert len(ours) == 12 and pruner.sparsity() == pytest.approx(0.9, abs=1e-3)
    assert pruner.ramp_end == max(ours)


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


def test_grafted_teacher_layers_run_in_train_mode_like_the_authors_predecessor_layers():
    """In the authors' model the teacher's layers are the student model's own predecessor
    layers, so ``model.train()`` runs them with dropout: a student whose every position is
    grafted equals the teacher run in train mode with the same dropout draws."""
    import copy

    from spd_tiny import tiny_bert

    from spd.grafting import GraftConfig, Grafter
    from spd.models import encoder_layers

    torch.manual_seed(0)
    teacher = tiny_bert(layers=2, dropout=0.3).eval()
    student = copy.deepcopy(teacher).train()
    ids = torch.randint(5, 60, (4, 9))
    assert GraftConfig().teacher_mode == "train"
    g = Grafter(student, teacher, teacher_mode="train")
    with g.grafted([False, False]):
        assert all(t.training for t in g.teacher_layers)
        torch.manual_seed(5)
        grafted = student(input_ids=ids).logits
    assert not any(m.training for m in teacher.modules())  # restored afterwards
    teacher.train()
    torch.manual_seed(5)
    reference = teacher(input_ids=ids).logits
    teacher.eval()
    assert torch.equal(grafted, reference)
    eval_g = Grafter(student, teacher, teacher_mode="eval")
    with eval_g.grafted([False, False]):
        assert not any(t.training for t in encoder_layers(student))
        torch.manual_seed(5)
        no_dropout = student(input_ids=ids).logits
    assert not torch.allclose(no_dropout, grafted)


def test_weight_decay_is_zero_for_every_method_and_the_teacher():
    """The SPD authors' ``--weight_decay`` default 0.0, emmental's 0.0, Hugging Face run_glue's
    0.0 (the authors' teacher recipe): no method or stage sets another."""
    from spd.methods import method_stage_defaults, method_train_defaults
    from spd.trainer import TrainConfig, build_optimizer

    assert TrainConfig().weight_decay == 0.0
    for method in ("spd", "magnitude", "movement", "soft-movement"):
        defaults = (method_train_defaults, method_stage_defaults, method_pruning_defaults)
        assert all("weight_decay" not in d(method) for d in defaults)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, 1e-3, TrainConfig().weight_decay, 1e-2)
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)


def test_spd_stage_defaults_are_the_authors_readme_command():
    """6.4e-4 for both cycles, no warm-up, p = 0.8 held in both cycles."""
    from spd.grafting import GraftConfig
    from spd.methods import StageConfig, method_stage_defaults, method_train_defaults, prune_phases

    assert method_stage_defaults("spd") == {"prune_lr": 6.4e-4, "final_lr": 6.4e-4}
    assert method_train_defaults("spd") == {"warmup_ratio": 0.0}
    stages = StageConfig(teacher="t", **method_stage_defaults("spd"))
    pruning = PruningConfig(method="magnitude", **method_pruning_defaults("spd"))
    distill = DistillConfig(**method_distill_defaults("spd", kd=False))
    phases = prune_phases("spd", stages, pruning, distill, GraftConfig(), 2, False)
    assert [p.name for p in phases] == ["spd", "distill"]
    assert [p.graft.probability(7, 100) for p in phases] == [0.8, 0.8]
    assert all(p.clip_all for p in phases)
    off = prune_phases("spd", stages, pruning, distill, GraftConfig(final_stage="off"), 2, False)
    assert off[1].graft is None


def _run_prune(d, out, *extra):
    return main([
        "prune", "--model", str(d / "model"), "--task", "files",
        "--train-file", str(d / "train.csv"), "--validation-file", str(d / "dev.csv"),
        "--test-file", str(d / "test.csv"), "--output-dir", str(out), "--batch-size", "16",
        "--no-progress", "--cache-dir", "none", "--threads", "1", "--seed", "3", "--log-every", "1",
        "--deterministic", "--teacher-cache", "none", *extra,
    ])  # fmt: skip


def _records(out, phase):
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [x for x in recs if x.get("phase") == phase and "loss" in x]


def test_spd_clips_the_gradient_norm_over_all_parameters(learnable):
    """The authors clip ``model.parameters()``: their model holds the (frozen) embeddings, head
    and the predecessor layers beside the trained successor layers, so the norm includes their
    gradients. The first step's logged norm is the trained layers' norm plus those: strictly
    larger, while the trained parameters (hence the first step) are the same."""
    d, _ = learnable
    rc = _run_prune(
        d, d / "teacher", "--method", "magnitude", "--model", str(d / "model"),
        "--prune-epochs", "1", "--prune-lr", "3e-3", "--final-epochs", "0", "--sparsity", "0.0",
    )  # fmt: skip
    assert rc == 0
    norms = {}
    for scope in ("all", "trained"):
        out = d / f"clip-{scope}"
        rc = _run_prune(
            d, out, "--method", "spd", "--teacher", str(d / "teacher" / "best"), "--prune-epochs", "1",
            "--final-epochs", "0", "--sparsity", "0.5", "--clip-scope", scope, "--max-train-samples", "32",
        )  # fmt: skip
        assert rc == 0
        norms[scope] = _records(out, "spd")[0]["grad_norm"]
    assert norms["all"] > norms["trained"] * 1.001, norms
    # auto = all for SPD
    out = d / "clip-auto"
    rc = _run_prune(
        d, out, "--method", "spd", "--teacher", str(d / "teacher" / "best"), "--prune-epochs", "1",
        "--final-epochs", "0", "--sparsity", "0.5", "--max-train-samples", "32",
    )  # fmt: skip
    assert rc == 0 and _records(out, "spd")[0]["grad_norm"] == pytest.approx(norms["all"], rel=1e-6)


# ---------------------------------------------------------------- progressive baselines
def _cubic(done, total, s_f, warm, cool):
    """Zhu & Gupta's s_f (1 - (1 - t/R)^3) with a dense warm-up and a cool-down at s_f, written
    out here (not the package's schedule)."""
    ramp = total - warm - cool
    t = min(max(done - warm, 0), ramp) / ramp
    return s_f * (1.0 - (1.0 - t) ** 3)


@pytest.fixture(scope="module")
def ramp_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ramp")
    save_tiny_model_dir(str(d / "model"), dropout=0.1, hidden=32, intermediate=64)
    rows = sentences(200, seed=11)
    write_csv(d / "train.csv", rows[:160])  # 10 steps an epoch at batch 16
    write_csv(d / "dev.csv", rows[160:180])
    write_csv(d / "test.csv", rows[180:])
    return d


@pytest.mark.parametrize(
    "method,granularity",
    [
        ("soft-movement", "element"),
        ("soft-movement", "block8"),
        ("magnitude", "element"),
        ("magnitude", "block8"),
        ("movement", "element"),
        ("movement", "block8"),
    ],
)
def test_baselines_follow_the_cubic_schedule_on_a_short_budget(ramp_data, method, granularity):
    """~100 pruning steps (the budget on which soft movement used to stay dense through the whole
    ramp and then cut 90 % in one step): the sparsity each step's forward pass ran at, logged
    every step, is within 3 points of the cubic schedule at the ramp's quarter, half and end, never
    moves by more than 5 % of the weights in one step, and ends at the budget."""
    d = ramp_data
    out = d / f"{method}-{granularity}"
    rc = main([
        "prune", "--method", method, "--kd", "--model", str(d / "model"), "--task", "files",
        "--train-file", str(d / "train.csv"), "--validation-file", str(d / "dev.csv"),
        "--test-file", str(d / "test.csv"), "--output-dir", str(out), "--batch-size", "16",
        "--teacher-epochs", "1", "--teacher-lr", "1e-3", "--prune-epochs", "10", "--prune-lr", "1e-3",
        "--final-epochs", "0", "--sparsity", "0.8", "--granularity", granularity, "--no-progress",
        "--cache-dir", "none", "--threads", "1", "--seed", "2", "--log-every", "1",
    ])  # fmt: skip
    assert rc == 0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    sp = {x["step"]: x["sparsity"] for x in recs if x.get("phase") == "prune" and "loss" in x}
    total = max(sp)
    assert total == 100 and sorted(sp) == list(range(1, total + 1))
    warm, cool = round(0.1 * total), round(0.2 * total)
    ramp = total - warm - cool
    for frac in (0.25, 0.5, 1.0):
        done = warm + int(frac * ramp)
        want = _cubic(done, total, 0.8, warm, cool)
        assert sp[done] == pytest.approx(want, abs=0.03), (frac, done, sp[done], want)
    seq = [0.0] + [sp[i] for i in range(1, total + 1)]
    jumps = [b - a for a, b in zip(seq, seq[1:])]
    assert max(jumps) <= 0.05, max(jumps)
    assert sp[total] == pytest.approx(0.8, abs=0.015)  # block8: 3 of a 32 x 32 matrix's 16 blocks
    if method == "soft-movement":  # the L1 term is logged and rises with the ramp
        l1 = [x["loss_l1"] for x in recs if x.get("phase") == "prune" and "loss_l1" in x]
        assert l1 and max(l1) > 0
