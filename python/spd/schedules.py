"""Schedules as pure functions of the optimizer step.

Every function takes the step (0-based count of optimizer steps already taken) and the length
of the phase, and returns a float; nothing here holds state, so a resumed run recomputes the
same values from the restored step.

* :func:`cubic_progress` / :func:`cubic_sparsity` — Zhu & Gupta's cubic schedule
  ``s_t = s_i + (s_f - s_i)·(1 - (1 - t/T)^3)`` with a warm-up plateau (dense) before and a
  cool-down plateau (final sparsity) after the ramp.
* :func:`graft_probability` — SPD's probability ``p`` that a layer position uses the student's
  layer: ``constant`` (p0 for the whole phase), ``linear`` (p0 → 1 over the phase) or
  ``mixed`` (p0 for the first ``hold`` fraction, then linear to 1).
* :func:`soft_movement_threshold` / :func:`soft_movement_lambda` — soft movement pruning's
  sigmoid threshold τ and L1 weight λ, both following the cubic progress, so the penalty
  grows with the pruning pressure.
* :func:`lr_factor` — linear warm-up then linear decay to zero (multiplies the peak LR).
"""

from __future__ import annotations

GRAFT_SCHEDULES = ("constant", "linear", "mixed")


def _check_steps(step: int, total_steps: int) -> None:
    if total_steps < 0:
        raise ValueError(f"total_steps must be >= 0, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")


def cubic_progress(step: int, total_steps: int, warmup_steps: int = 0, cooldown_steps: int = 0) -> float:
    """Fraction of the pruning ramp done at ``step``: 0 during warm-up, ``1-(1-t)^3`` on the
    ramp (t in [0, 1] over ``total - warmup - cooldown`` steps), 1 during the cool-down."""
    _check_steps(step, total_steps)
    if warmup_steps < 0 or cooldown_steps < 0:
        raise ValueError(f"warm-up/cool-down must be >= 0, got {warmup_steps}, {cooldown_steps}")
    if warmup_steps + cooldown_steps > total_steps:
        raise ValueError(
            f"warm-up ({warmup_steps}) + cool-down ({cooldown_steps}) exceed the phase ({total_steps} steps)"
        )
    ramp = total_steps - warmup_steps - cooldown_steps
    if step < warmup_steps:
        return 0.0
    if ramp == 0 or step >= warmup_steps + ramp:
        return 1.0
    t = (step - warmup_steps) / ramp
    return 1.0 - (1.0 - t) ** 3


def cubic_sparsity(
    step: int,
    total_steps: int,
    final_sparsity: float,
    initial_sparsity: float = 0.0,
    warmup_steps: int = 0,
    cooldown_steps: int = 0,
) -> float:
    """``s_t = s_i + (s_f - s_i)·(1 - (1 - t/T)^3)`` with plateaus; s_i = 0 gives
    ``s_f·(1 - (1 - t/T)^3)``."""
    for name, v in (("final_sparsity", final_sparsity), ("initial_sparsity", initial_sparsity)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {v}")
    c = cubic_progress(step, total_steps, warmup_steps, cooldown_steps)
    return initial_sparsity + (final_sparsity - initial_sparsity) * c


def graft_probability(
    step: int, total_steps: int, schedule: str = "linear", p0: float = 0.5, hold: float = 0.5
) -> float:
    """Probability that a layer position uses the student's layer at ``step`` of the SPD phase.

    ``constant``: p0 throughout (p becomes 1 in the next phase); ``linear``: p0 + (1-p0)·t/T,
    reaching 1 on the last step; ``mixed``: p0 for the first ``hold`` fraction of the phase,
    then linear to 1.
    """
    _check_steps(step, total_steps)
    if schedule not in GRAFT_SCHEDULES:
        raise ValueError(f"graft schedule must be one of {GRAFT_SCHEDULES}, got {schedule!r}")
    if not 0.0 <= p0 <= 1.0:
        raise ValueError(f"p0 must lie in [0, 1], got {p0}")
    if not 0.0 <= hold <= 1.0:
        raise ValueError(f"hold must lie in [0, 1], got {hold}")
    if schedule == "constant":
        return p0
    last = max(total_steps - 1, 1)
    t = min(step / last, 1.0)
    if schedule == "mixed":
        if t <= hold:
            return p0
        t = (t - hold) / (1.0 - hold) if hold < 1.0 else 1.0
    return p0 + (1.0 - p0) * t


def soft_movement_threshold(
    step: int,
    total_steps: int,
    initial: float,
    final: float,
    warmup_steps: int = 0,
    cooldown_steps: int = 0,
) -> float:
    """Sigmoid threshold τ_t = τ_0 + (τ_f - τ_0)·progress_t (the cubic progress)."""
    c = cubic_progress(step, total_steps, warmup_steps, cooldown_steps)
    return initial + (final - initial) * c


def soft_movement_lambda(
    step: int, total_steps: int, final_lambda: float, warmup_steps: int = 0, cooldown_steps: int = 0
) -> float:
    """L1 weight λ_t = λ_f·progress_t: scheduled with the threshold, zero during warm-up."""
    if final_lambda < 0:
        raise ValueError(f"final_lambda must be >= 0, got {final_lambda}")
    return final_lambda * cubic_progress(step, total_steps, warmup_steps, cooldown_steps)


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Linear warm-up from 0 to 1 over ``warmup_steps``, then linear decay to 0 at
    ``total_steps`` (the factor applied at optimizer step ``step``, 0-based)."""
    _check_steps(step, total_steps)
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    rest = total_steps - warmup_steps
    if rest <= 0:
        return 0.0
    return max(0.0, (total_steps - step) / rest)


__all__ = [
    "GRAFT_SCHEDULES",
    "cubic_progress",
    "cubic_sparsity",
    "graft_probability",
    "lr_factor",
    "soft_movement_lambda",
    "soft_movement_threshold",
]
