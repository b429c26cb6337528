import pytest

from spd.schedules import (
    cubic_progress,
    cubic_sparsity,
    graft_probability,
    lr_factor,
    soft_movement_lambda,
    soft_movement_threshold,
)


def test_cubic_sparsity_known_steps():
    # T = 100, no plateaus: s_t = 0.9 * (1 - (1 - t/100)^3)
    assert cubic_sparsity(0, 100, 0.9) == 0.0
    assert cubic_sparsity(50, 100, 0.9) == pytest.approx(0.9 * (1 - 0.5**3))  # 0.7875
    assert cubic_sparsity(25, 100, 0.9) == pytest.approx(0.9 * (1 - 0.75**3))  # 0.520312...
    assert cubic_sparsity(100, 100, 0.9) == pytest.approx(0.9)
    assert cubic_sparsity(500, 100, 0.9) == pytest.approx(0.9)


def test_cubic_sparsity_plateaus():
    # warm-up 10, cool-down 20, ramp 70 steps
    kw = dict(total_steps=100, final_sparsity=0.8, warmup_steps=10, cooldown_steps=20)
    assert cubic_sparsity(0, **kw) == 0.0
    assert cubic_sparsity(9, **kw) == 0.0
    assert cubic_sparsity(10, **kw) == 0.0
    assert cubic_sparsity(45, **kw) == pytest.approx(0.8 * (1 - 0.5**3))
    assert cubic_sparsity(80, **kw) == pytest.approx(0.8)
    assert cubic_sparsity(99, **kw) == pytest.approx(0.8)
    vals = [cubic_sparsity(s, **kw) for s in range(100)]
    assert all(b >= a for a, b in zip(vals, vals[1:])), "sparsity must never decrease"


def test_cubic_sparsity_initial():
    assert cubic_sparsity(50, 100, 0.9, initial_sparsity=0.5) == pytest.approx(0.5 + 0.4 * 0.875)


def test_cubic_bad_input():
    with pytest.raises(ValueError, match="final_sparsity"):
        cubic_sparsity(0, 10, 1.5)
    with pytest.raises(ValueError, match="exceed"):
        cubic_progress(0, 10, 6, 6)
    with pytest.raises(ValueError, match="step"):
        cubic_progress(-1, 10)


def test_graft_probability_schedules():
    assert graft_probability(0, 101, "constant", p0=0.3) == 0.3
    assert graft_probability(100, 101, "constant", p0=0.3) == 0.3
    assert graft_probability(0, 101, "linear", p0=0.2) == pytest.approx(0.2)
    assert graft_probability(50, 101, "linear", p0=0.2) == pytest.approx(0.6)
    assert graft_probability(100, 101, "linear", p0=0.2) == pytest.approx(1.0)
    # mixed: hold p0 for the first half, then linear to 1
    assert graft_probability(25, 101, "mixed", p0=0.5, hold=0.5) == pytest.approx(0.5)
    assert graft_probability(50, 101, "mixed", p0=0.5, hold=0.5) == pytest.approx(0.5)
    assert graft_probability(75, 101, "mixed", p0=0.5, hold=0.5) == pytest.approx(0.75)
    assert graft_probability(100, 101, "mixed", p0=0.5, hold=0.5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="graft schedule"):
        graft_probability(0, 10, "cosine")
    with pytest.raises(ValueError, match="p0"):
        graft_probability(0, 10, "linear", p0=1.5)


def test_soft_movement_threshold_and_lambda_follow_cubic():
    c = 1 - 0.5**3
    assert soft_movement_threshold(50, 100, 0.0, 0.4) == pytest.approx(0.4 * c)
    assert soft_movement_lambda(50, 100, 2.0) == pytest.approx(2.0 * c)
    assert soft_movement_lambda(5, 100, 2.0, warmup_steps=10) == 0.0
    assert soft_movement_lambda(95, 100, 2.0, cooldown_steps=10) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="final_lambda"):
        soft_movement_lambda(0, 10, -1.0)


def test_lr_factor():
    # warm-up 4 steps: 1/5, 2/5, 3/5, 4/5; then 1 at step 4 decaying linearly to 0 at step 14
    assert [lr_factor(s, 14, 4) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lr_factor(4, 14, 4) == pytest.approx(1.0)
    assert lr_factor(9, 14, 4) == pytest.approx(0.5)
    assert lr_factor(13, 14, 4) == pytest.approx(0.1)
    assert lr_factor(14, 14, 4) == 0.0
    assert lr_factor(0, 10) == pytest.approx(1.0)
