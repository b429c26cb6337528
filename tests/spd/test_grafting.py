import copy

import pytest
import torch
from spd_tiny import tiny_bert

from spd.grafting import GraftConfig, Grafter
from spd.models import encoder_layers, ensure_output_capture, make_prunable
from spd.pruning import Pruner, PruningConfig


def _pair(layers=4):
    teacher = tiny_bert(layers=layers, dropout=0.0).eval()
    student = copy.deepcopy(teacher)
    mods = make_prunable(student)
    Pruner(mods, PruningConfig(sparsity=0.8, warmup_fraction=0, cooldown_fraction=0), 1).update(0)
    for p in teacher.parameters():
        p.requires_grad_(False)
    ensure_output_capture(teacher)
    ensure_output_capture(student)
    return student, teacher


def _run(model, ids):
    return model(input_ids=ids, output_hidden_states=True, output_attentions=True)


def test_p1_is_student_p0_is_teacher():
    student, teacher = _pair()
    student.eval()
    ids = torch.randint(5, 60, (3, 7))
    g = Grafter(student, teacher, seed=0)
    assert g.sample(1.0) == [True] * 4
    assert g.sample(0.0) == [False] * 4
    with g.grafted(g.sample(1.0)):
        out1 = _run(student, ids)
    with g.grafted(g.sample(0.0)):
        out0 = _run(student, ids)
    s, t = _run(student, ids), _run(teacher, ids)
    assert torch.equal(out1.logits, s.logits)
    assert torch.equal(out0.logits, t.logits)
    assert not torch.allclose(s.logits, t.logits)
    for a, b in zip(out0.hidden_states, t.hidden_states):
        assert torch.equal(a, b)
    for a, b in zip(out0.attentions, t.attentions):
        assert torch.equal(a, b)
    # the swap is undone: the student's own layers are back
    assert all(a is not b for a, b in zip(encoder_layers(student), encoder_layers(teacher)))


def test_mixed_graft_records_each_layer_once_and_routes_gradients():
    student, teacher = _pair()
    ids = torch.randint(5, 60, (2, 5))
    g = Grafter(student, teacher)
    with g.grafted([True, False, True, False]):
        out = _run(student, ids)
    assert len(out.hidden_states) == 5 and len(out.attentions) == 4
    t = _run(teacher, ids)
    # positions 1 and 3 ran the teacher's layer on the student's hidden state
    with torch.no_grad():
        h2 = encoder_layers(teacher)[1](out.hidden_states[1])
    assert torch.allclose(out.hidden_states[2], h2, atol=1e-6)
    assert not torch.allclose(out.hidden_states[2], t.hidden_states[2])
    out.logits.sum().backward()
    layers = encoder_layers(student)
    assert layers[0].attention.self.query.weight.grad is not None
    assert layers[1].attention.self.query.weight.grad is None  # not used this step
    assert all(p.grad is None for p in teacher.parameters())


def test_graft_probability_statistics_fixed_seed():
    student, teacher = _pair(layers=4)
    g = Grafter(student, teacher, seed=123)
    n = 2500
    draws = torch.tensor([g.sample(0.3) for _ in range(n)], dtype=torch.float64)
    frac = float(draws.mean())
    sd = (0.3 * 0.7 / draws.numel()) ** 0.5
    assert abs(frac - 0.3) < 4 * sd, frac
    per_layer = draws.mean(0)
    assert torch.all((per_layer - 0.3).abs() < 4 * (0.21 / n) ** 0.5)
    # successive layer positions are independent: P(both) ~ p^2
    both = float((draws[:, 0] * draws[:, 1]).mean())
    assert abs(both - 0.09) < 4 * (0.09 * 0.91 / n) ** 0.5


def test_generator_state_resumes_the_same_draws():
    student, teacher = _pair()
    g = Grafter(student, teacher, seed=7)
    for _ in range(5):
        g.sample(0.5)
    state = {k: v.clone() for k, v in g.state_dict().items()}
    ahead = [g.sample(0.5) for _ in range(10)]
    g2 = Grafter(student, teacher, seed=999)
    g2.load_state_dict(state)
    assert [g2.sample(0.5) for _ in range(10)] == ahead


def test_errors():
    student, teacher = _pair()
    with pytest.raises(ValueError, match="same depth"):
        Grafter(student, tiny_bert(layers=3))
    g = Grafter(student, teacher)
    with pytest.raises(ValueError, match="layer choices"):
        with g.grafted([True]):
            pass
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        g.sample(1.5)
    with pytest.raises(ValueError, match="graft schedule"):
        GraftConfig(schedule="step")
    assert GraftConfig(schedule="linear", p0=0.2).probability(9, 10) == pytest.approx(1.0)
