"""Pruning policies on :class:`spd_kernels.nn.MaskedLinear` layers.

A :class:`Pruner` owns the prunable layers of one model and, called once per optimizer step
(:meth:`Pruner.update`), moves them along the cubic sparsity schedule:

* ``magnitude`` — keep the largest ``|W|`` (summed per block at block granularity), per layer
  (``scope="local"``) or with one threshold over all layers (``scope="global"``).
* ``movement`` — hard movement pruning (Sanh et al. 2020): learnable scores ``S`` receive the
  straight-through gradient ``Σ_block (∂L/∂W') ⊙ W`` (the binarizer passes everything
  forward and the gradient through); at each mask update the mask keeps the top-k scores.
* ``soft-movement`` — the forward mask is ``σ(S) > τ_t`` (straight-through), and the loss gets
  ``λ_t · mean σ(S)`` (:meth:`Pruner.regularization`); λ follows the cubic progress, and τ is
  set at every step so that the pruned fraction over all layers is the cubic schedule's
  (``soft_threshold_mode="budget"``; ``"cubic"`` ramps τ itself, emmental's README form).
  When the ramp ends the lowest scores over all layers are committed as pruned, exactly at
  the budget, so every method ends at the same budget and none reaches it in one cut.

Committed masks go through ``MaskedLinear.set_mask`` without ``allow_regrow``: a pruned
weight never comes back. Masks are recomputed every ``update_every`` steps; between updates
the committed pattern is fixed (what the sparse kernels need).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from spd_kernels.nn import MaskedLinear, reduce_to_blocks, topk_mask

from .schedules import cubic_progress, cubic_sparsity, soft_movement_lambda, soft_movement_threshold

METHODS = ("none", "magnitude", "movement", "soft-movement")
SCOPES = ("local", "global")

# MaskedLinear score mode per method: hard movement uses the plain threshold binarizer at
# -inf (all ones forward, straight-through backward) and prunes by committing top-k masks.
_SCORE_MODE = {"none": None, "magnitude": None, "movement": "topk", "soft-movement": "sigmoid_threshold"}
SCORE_INITS = ("constant", "magnitude")


def parse_granularity(granularity: str) -> Tuple[int, int]:
    """``"element"`` -> (1, 1); ``"block32"`` -> (32, 32); ``"block16x32"`` -> (16, 32)."""
    if not isinstance(granularity, str):
        raise TypeError(f"granularity must be a string, got {type(granularity).__name__}")
    if granularity == "element":
        return (1, 1)
    m = re.fullmatch(r"block(\d+)(?:x(\d+))?", granularity)
    if not m or int(m.group(1)) < 1 or (m.group(2) is not None and int(m.group(2)) < 1):
        raise ValueError(
            f"granularity must be 'element', 'blockN' or 'blockMxN' (e.g. block32, block16x32), "
            f"got {granularity!r}"
        )
    bm = int(m.group(1))
    return (bm, int(m.group(2)) if m.group(2) else bm)


@dataclass
class PruningConfig:
    method: str = field(
        default="magnitude",
        metadata={"help": f"pruning policy, one of {METHODS}", "choices": METHODS},
    )
    sparsity: float = field(
        default=0.9, metadata={"help": "final fraction of pruned weights in every prunable layer"}
    )
    granularity: str = field(
        default="element",
        metadata={"help": "mask granularity: element, blockN (N x N blocks) or blockMxN"},
    )
    scope: str = field(
        default="local",
        metadata={
            "help": "top-k per layer (local) or over all layers at once (global); soft movement "
            "enforces its final budget globally",
            "choices": SCOPES,
        },
    )
    warmup_fraction: float = field(
        default=0.1,
        metadata={"help": "fraction of the pruning phase kept dense before the cubic ramp (--method spd: 0)"},
    )
    cooldown_fraction: float = field(
        default=0.2,
        metadata={
            "help": "fraction of the pruning phase at the final sparsity after the ramp (--method spd: 0)"
        },
    )
    update_every: int = field(
        default=10,
        metadata={"help": "recompute the masks at most this many steps apart (see --max-step-sparsity)"},
    )
    max_step_sparsity: float = field(
        default=0.02,
        metadata={
            "help": "magnitude and --no-regrow movement: the update interval is shortened (down to every "
            "step) until one commit removes at most this fraction of the weights (the first, largest "
            "step of the cubic ramp: about 3 s_f u / ramp for an interval of u steps); 0 = "
            "--update-every as given"
        },
    )
    mask_updates: int = field(
        default=0,
        metadata={
            "help": "magnitude/SPD: prune about this many times over the ramp, as the SPD authors' "
            "code does (12): every freq = ramp//n steps after the first interval (t = k*freq, "
            "0 < t < ramp), update k at sparsity s_f(1-(1-k/(ramp//freq))^3); 0 = every "
            "--update-every steps"
        },
    )
    regrow: bool = field(
        default=True,
        metadata={
            "help": "movement methods: recompute the mask from the scores at every forward during the "
            "ramp, so pruned weights can come back (emmental); --no-regrow commits masks every "
            "--update-every steps and never regrows; both commit the exact budget when the ramp ends"
        },
    )
    min_density: float = field(
        default=0.005,
        metadata={"help": "movement methods: keep at least this fraction of every matrix (emmental: 0.005)"},
    )
    score_init_mode: str = field(
        default="constant",
        metadata={
            "help": "movement scores start at --score-init (constant, emmental) or at |W| standardised "
            "per layer (magnitude)",
            "choices": SCORE_INITS,
        },
    )
    score_init: float = field(default=0.0, metadata={"help": "initial value of movement scores"})
    score_lr: float = field(default=1e-2, metadata={"help": "learning rate of movement scores"})
    soft_threshold_init: float = field(
        default=0.0, metadata={"help": "soft movement: sigmoid threshold at the start of the ramp"}
    )
    soft_threshold_final: float = field(
        default=0.5,
        metadata={"help": "soft movement: sigmoid threshold at the end of the ramp (method default 0.1)"},
    )
    soft_threshold_mode: str = field(
        default="budget",
        metadata={
            "help": "soft movement: budget sets the sigmoid threshold at every step so that the pruned "
            "fraction over all layers follows the cubic sparsity schedule (as emmental's --global_topk "
            "derives its threshold from a kept fraction): progressive on any budget; cubic ramps the "
            "threshold itself from --soft-threshold-init to --soft-threshold-final (emmental's README "
            "form: the sparsity is whatever the scores reach, committed to the budget at the ramp end)",
            "choices": ("budget", "cubic"),
        },
    )
    soft_lambda: float = field(
        default=10.0,
        metadata={
            "help": "soft movement: final weight of the L1 penalty on sigmoid(scores) (method default 400)"
        },
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"pruning method must be one of {METHODS}, got {self.method!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if not 0.0 <= self.sparsity <= 1.0:
            raise ValueError(f"sparsity must lie in [0, 1], got {self.sparsity}")
        parse_granularity(self.granularity)
        for name in ("warmup_fraction", "cooldown_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {v}")
        if self.warmup_fraction + self.cooldown_fraction > 1.0:
            raise ValueError(
                f"warmup_fraction + cooldown_fraction must be <= 1, got "
                f"{self.warmup_fraction} + {self.cooldown_fraction}"
            )
        if self.update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {self.update_every}")
        if not 0.0 <= self.max_step_sparsity <= 1.0:
            raise ValueError(f"max_step_sparsity must lie in [0, 1], got {self.max_step_sparsity}")
        if self.soft_threshold_mode not in ("budget", "cubic"):
            raise ValueError(
                f"soft_threshold_mode must be 'budget' or 'cubic', got {self.soft_threshold_mode!r}"
            )
        if self.mask_updates < 0:
            raise ValueError(f"mask_updates must be >= 0, got {self.mask_updates}")
        if not 0.0 <= self.min_density <= 1.0:
            raise ValueError(f"min_density must lie in [0, 1], got {self.min_density}")
        if self.score_init_mode not in SCORE_INITS:
            raise ValueError(f"score_init_mode must be one of {SCORE_INITS}, got {self.score_init_mode!r}")

    @property
    def block(self) -> Tuple[int, int]:
        return parse_granularity(self.granularity)

    @property
    def score_mode(self) -> Optional[str]:
        return _SCORE_MODE[self.method]


def global_topk_masks(importances: List[Tensor], alive: List[Tensor], density: float) -> List[Tensor]:
    """One top-k over several importance tensors: keep ``round(density · Σ numel)`` entries
    among the ``alive`` ones (bool, same shapes). Returns bool masks shaped like the inputs."""
    if not importances:
        return []
    flat = torch.cat(
        [imp.detach().float().masked_fill(~a, -math.inf).flatten() for imp, a in zip(importances, alive)]
    )
    keep = topk_mask(flat, density)
    out, start = [], 0
    for imp in importances:
        out.append(keep[start : start + imp.numel()].view_as(imp))
        start += imp.numel()
    return out


def _keep_top(importance: Tensor, alive: Tensor, density: float) -> Tensor:
    return topk_mask(importance.detach().float().masked_fill(~alive, -math.inf), density)


class Pruner:
    """Drives the masks of ``modules`` (name -> MaskedLinear) through one pruning phase of
    ``total_steps`` optimizer steps. Call :meth:`update` with the phase step before each
    forward pass, and add :meth:`regularization` to the loss."""

    def __init__(self, modules: Mapping[str, MaskedLinear], config: PruningConfig, total_steps: int):
        if total_steps < 1:
            raise ValueError(f"a pruning phase needs at least one step, got total_steps={total_steps}")
        for name, m in modules.items():
            if not isinstance(m, MaskedLinear):
                raise TypeError(f"{name} is {type(m).__name__}, not a MaskedLinear")
            if tuple(m.block) != config.block:
                raise ValueError(f"{name} has block {m.block}, the pruning config asks for {config.block}")
            if config.score_mode is not None and m.score_mode != config.score_mode:
                raise ValueError(
                    f"{name} has scores={m.score_mode!r}; {config.method} needs scores={config.score_mode!r}"
                )
        self.modules: Dict[str, MaskedLinear] = dict(modules)
        self.config = config
        self.total_steps = int(total_steps)
        self.warmup_steps = int(round(config.warmup_fraction * total_steps))
        self.cooldown_steps = int(round(config.cooldown_fraction * total_steps))
        self.last_update: Optional[int] = None
        self.movement = config.method in ("movement", "soft-movement")
        # magnitude with a fixed number of updates (the SPD authors' ``Prune``, run_glue.py):
        # the interval is freq = ramp // n, the schedule's denominator ramp // freq, and the
        # mask is updated after step t = k·freq for 0 < t < ramp (so before the forward of
        # phase step warm-up + k·freq): the first update one interval in, none at t = 0.
        # step -> update index k
        self.update_at: Dict[int, int] = {}
        self.update_denominator = 0
        n = config.mask_updates
        if n and not self.movement:
            ramp = self.total_steps - self.warmup_steps - self.cooldown_steps
            freq = max(ramp // n, 1)
            self.update_denominator = max(ramp // freq, 1)
            k = 1
            while k * freq < ramp:
                self.update_at[self.warmup_steps + k * freq] = k
                k += 1

        ramp = max(self.total_steps - self.warmup_steps - self.cooldown_steps, 1)
        self.update_every = config.update_every
        if config.max_step_sparsity > 0 and config.sparsity > 0:
            # the cubic ramp's first interval of u steps removes s_f(1-(1-u/R)^3) <= 3 s_f u / R
            cap = int(config.max_step_sparsity * ramp / (3.0 * config.sparsity))
            self.update_every = max(1, min(self.update_every, cap))
        self._budget_step: Optional[int] = None
        self._budget_tau = -math.inf
        self._sample: Optional[List[Tensor]] = None

    # ------------------------------------------------------------------ schedule values
    def _sched(self, step: int) -> Tuple[int, int, int]:
        # the value used during step k is the schedule after k+1 steps, so the last step of a
        # phase without cool-down already runs at the final sparsity
        return min(step + 1, self.total_steps), self.total_steps, self.warmup_steps

    @property
    def ramp_end(self) -> int:
        """First step that runs at the final sparsity."""
        if self.update_at:
            return max(self.update_at)
        if self.config.mask_updates and not self.movement:
            return self.warmup_steps  # a ramp too short for one update: the phase stays dense
        return max(self.total_steps - self.cooldown_steps - 1, 0)

    def target_sparsity(self, step: int) -> float:
        if self.update_at:
            done = [k for u, k in self.update_at.items() if u <= step]
            k, n = (max(done) if done else 0), self.update_denominator
            return self.config.sparsity * (1.0 - (1.0 - min(k / n, 1.0)) ** 3)
        s, total, warm = self._sched(step)
        return cubic_sparsity(s, total, self.config.sparsity, 0.0, warm, self.cooldown_steps)

    def progress(self, step: int) -> float:
        s, total, warm = self._sched(step)
        return cubic_progress(s, total, warm, self.cooldown_steps)

    def threshold(self, step: int) -> float:
        c = self.config
        s, total, warm = self._sched(step)
        return soft_movement_threshold(
            s, total, c.soft_threshold_init, c.soft_threshold_final, warm, self.cooldown_steps
        )

    def lambda_(self, step: int) -> float:
        """emmental's ``λ_t = λ_f · τ_t / τ_f``: rises with the threshold and is held after the
        ramp (the cubic progress stands in when τ_f = 0, and with ``soft_threshold_mode=budget``,
        where it equals emmental's for τ_0 = 0)."""
        c = self.config
        if c.soft_threshold_final != 0 and c.soft_threshold_mode == "cubic":
            return c.soft_lambda * self.threshold(step) / c.soft_threshold_final
        s, total, warm = self._sched(step)
        return soft_movement_lambda(s, total, c.soft_lambda, warm, self.cooldown_steps)

    # ------------------------------------------------------------------ per step
    @torch.no_grad()
    def update(self, step: int) -> bool:
        """Set the binarizer targets for ``step`` and commit new masks when one is due.
        Returns True when masks were committed."""
        c = self.config
        if c.method == "none":
            return False
        if self.movement:
            return self._update_movement(step)
        if self.update_at:
            due = step in self.update_at
        else:
            due = step % self.update_every == 0 or step == self.ramp_end
        if not due or step == self.last_update or step > self.total_steps:
            return False
        self.commit(self.target_sparsity(step))
        self.last_update = step
        return True

    def _update_movement(self, step: int) -> bool:
        c = self.config
        ramp_end = self.ramp_end
        for m in self.modules.values():
            m.min_density = c.min_density
        if step >= ramp_end:
            # the exact budget is committed once; after it the committed mask alone decides
            # (a fixed pattern: the sparse kernels can run)
            committed = self.last_update is not None and self.last_update >= ramp_end
            if not committed:
                self.commit(c.sparsity)
                self.last_update = step
            for m in self.modules.values():
                m.density, m.threshold = 1.0, -math.inf
            return not committed
        density = 1.0 - self.target_sparsity(step)
        for m in self.modules.values():
            if c.method == "movement":
                # regrow: top-k of the scores at every forward; else all pass, commits prune
                m.density = density if c.regrow else 1.0
            else:
                m.threshold = (
                    self.budget_threshold(step) if c.soft_threshold_mode == "budget" else self.threshold(step)
                )
        if c.regrow:
            return False
        due = step % self.update_every == 0
        if not due or step == self.last_update:
            return False
        self.commit(self.target_sparsity(step))
        self.last_update = step
        return True

    # at most this many scores (a fixed uniform sample over all layers) set the budget threshold
    BUDGET_SAMPLE = 1 << 18

    @torch.no_grad()
    def budget_threshold(self, step: int) -> float:
        """Soft movement's threshold τ on σ(S) for ``step``: the pruned fraction over all layers
        (committed-pruned entries plus alive ones with σ(S) <= τ) is the cubic schedule's. The
        quantile is taken over a fixed uniform sample of at most :attr:`BUDGET_SAMPLE` scores
        (all of them for small models: a full sort of 10M scores costs seconds a step on CPU,
        the sample's quantile error is ~0.1 %); ties choose the side nearer the target."""
        if self._budget_step == step:
            return self._budget_tau
        target = self.target_sparsity(step)
        mods = list(self.modules.values())
        if self._sample is None:
            total = sum(m.scores.numel() for m in mods)
            frac = min(1.0, self.BUDGET_SAMPLE / max(total, 1))
            g = torch.Generator().manual_seed(0x5EED)
            self._sample = [
                None
                if frac >= 1.0
                else torch.randperm(m.scores.numel(), generator=g)[: max(1, round(frac * m.scores.numel()))]
                for m in mods
            ]
        sig, alive = [], []
        for m, idx in zip(mods, self._sample):
            a = reduce_to_blocks(m.mask, m.block, "any").flatten()
            v = torch.sigmoid(m.scores.detach().float().flatten())
            if idx is not None:
                a, v = a[idx], v[idx]
            sig.append(v)
            alive.append(a)
        sig_all, alive_all = torch.cat(sig), torch.cat(alive)
        n, n_alive = sig_all.numel(), int(alive_all.sum())
        k = int(round(target * n)) - (n - n_alive)  # alive entries still to drop
        if k <= 0 or n_alive == 0:
            tau = -math.inf
        else:
            live = sig_all[alive_all]
            v = float(live.kthvalue(min(k, n_alive)).values)
            below_eq, below = int((live <= v).sum()), int((live < v).sum())
            tau = v if abs(below_eq - k) <= abs(below - k) else math.nextafter(v, -math.inf)
        self._budget_step, self._budget_tau = step, tau
        return tau

    def _importance(self, m: MaskedLinear) -> Tensor:
        if self.config.method == "magnitude":
            return reduce_to_blocks(m.weight.detach().abs().float(), m.block)
        return m.scores.detach().float()

    @torch.no_grad()
    def commit(self, sparsity: float) -> None:
        """Intersect every layer's mask with the pattern for ``sparsity`` (never regrows):
        top-k per layer, or over all layers at once (``scope="global"``, and soft movement,
        whose scores are comparable across layers); movement methods keep at least
        ``min_density`` of every matrix."""
        c = self.config
        density = 1.0 - sparsity
        names = list(self.modules)
        mods = [self.modules[n] for n in names]
        alive = [reduce_to_blocks(m.mask, m.block, "any") for m in mods]
        imps = [self._importance(m) for m in mods]
        if c.scope == "global" or c.method == "soft-movement":
            new = global_topk_masks(imps, alive, density)
        else:
            new = [_keep_top(imp, a, density) for imp, a in zip(imps, alive)]
        if self.movement and c.min_density > 0:
            for i, (imp, a) in enumerate(zip(imps, alive)):
                floor = min(int(math.ceil(c.min_density * imp.numel())), int(a.sum()))
                if int(new[i].sum()) < floor:
                    new[i] = new[i] | topk_mask(imp.masked_fill(~a, -math.inf), floor / imp.numel())
        for m, mask in zip(mods, new):
            m.set_mask(mask)

    def regularization(self, step: int) -> Optional[Tensor]:
        """Soft movement's ``λ_t · mean over modules of mean σ(S)`` (emmental), else None."""
        if self.config.method != "soft-movement" or step >= self.ramp_end:
            return None
        lam = self.lambda_(step)
        per_module = [torch.sigmoid(m.scores).mean() for m in self.modules.values()]
        return lam * sum(per_module) / len(per_module)

    # ------------------------------------------------------------------ reporting
    def sparsity(self) -> float:
        """Fraction of weights the forward pass drops, over all prunable layers."""
        return model_sparsity(self.modules)

    def state_dict(self) -> dict:
        return {"last_update": self.last_update}

    def load_state_dict(self, state: dict) -> None:
        self.last_update = state.get("last_update")


@torch.no_grad()
def model_sparsity(modules: Mapping[str, MaskedLinear]) -> float:
    """Fraction of zeroed weights over the given MaskedLinear layers (fixed masks)."""
    zeros = total = 0
    for m in modules.values():
        em = m.effective_mask()
        zeros += int((em == 0).sum())
        total += em.numel()
    return zeros / total if total else 0.0


__all__ = [
    "METHODS",
    "Pruner",
    "PruningConfig",
    "global_topk_masks",
    "model_sparsity",
    "parse_granularity",
]
