"""Sparse Progressive Distillation and the pruning baselines as lists of trainer phases.

SPD (Huang et al. 2022), method ``spd``:

1. ``teacher`` — fine-tune the dense model on the task (skipped when a fine-tuned teacher is
   given); the best validation model is the teacher.
2. ``spd`` — a copy of the teacher is pruned by magnitude along the cubic schedule (the
   authors' 12 intervals: an update after each, the first one interval in) while each encoder
   layer position runs the student's layer with probability ``p`` (else the teacher's, in
   train mode; 0.8 held constant, as the authors ran it); loss = hidden-state MSE + attention
   MSE + soft cross-entropy on logits; its own learning-rate cycle.
3. ``distill`` — the sparse student (masks fixed; grafting goes on at the same ``p``, as in
   the authors' second cycle, ``--graft-final-stage off`` for the student alone) is distilled
   with the same loss and a fresh learning-rate cycle.

Baselines (``magnitude``, ``movement``, ``soft-movement``) run the same loop without
grafting: a pruning phase (cubic schedule) and a fixed-mask phase, each with its own cycle,
with hard-label cross-entropy, optionally plus logit distillation from the teacher (``kd``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torch import nn

from spd_kernels.nn import reduce_to_blocks

from .distill import DistillConfig
from .grafting import GraftConfig
from .models import load_pretrained, make_prunable
from .pruning import PruningConfig
from .trainer import Phase

PRUNE_METHODS = ("spd", "magnitude", "movement", "soft-movement")


@dataclass
class StageConfig:
    model: str = field(
        default="embedded",
        metadata={
            "help": "model to start from: a Hugging Face name or path, a saved spd model, or 'embedded' "
            "(the packaged all-MiniLM-L6-v2)"
        },
    )
    teacher: Optional[str] = field(
        default=None,
        metadata={
            "help": "a fine-tuned dense teacher (path); without it, SPD (and --kd) fine-tune --model first"
        },
    )
    teacher_epochs: int = field(default=3, metadata={"help": "stage 1: epochs of teacher fine-tuning"})
    teacher_lr: float = field(default=5e-5, metadata={"help": "stage 1: peak learning rate"})
    prune_epochs: int = field(default=3, metadata={"help": "stage 2: epochs of pruning (cubic schedule)"})
    prune_lr: float = field(
        default=5e-5, metadata={"help": "stage 2: peak learning rate (--method spd: 6.4e-4, the authors')"}
    )
    final_epochs: int = field(
        default=1, metadata={"help": "stage 3: epochs at the final sparsity (fresh LR cycle)"}
    )
    final_lr: float = field(
        default=3e-5, metadata={"help": "stage 3: peak learning rate (--method spd: 6.4e-4)"}
    )
    kd: bool = field(
        default=False,
        metadata={"help": "baselines: add logit distillation from the teacher (SPD always distils)"},
    )

    def __post_init__(self) -> None:
        check_epochs_and_lr("teacher_", self.teacher_epochs, self.teacher_lr)
        check_epochs_and_lr("prune_", self.prune_epochs, self.prune_lr, minimum=1)
        check_epochs_and_lr("final_", self.final_epochs, self.final_lr)


def check_epochs_and_lr(prefix: str, epochs, lr, minimum: int = 0) -> None:
    """A stage's epochs (an int >= ``minimum``) and peak learning rate (finite, > 0)."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < minimum:
        raise ValueError(f"{prefix}epochs must be an int >= {minimum}, got {epochs!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ValueError(f"{prefix}lr must be a finite number > 0, got {lr!r}")


def method_distill_defaults(method: str, kd: bool) -> dict:
    """SPD's loss (the authors' run_glue.py): MSE of all 13 hidden states summed over layers +
    attention MSE summed over layers + soft cross-entropy on logits at T = 1 without T², as
    ``(-p_t · log p_s).mean()`` over batch × classes (regression: MSE to the labels), no hard
    labels; the student's attention maps as Hugging Face returns them (after dropout).
    Baselines use the labels, plus emmental's logit KD with ``kd`` (α 0.5/0.5, T = 2, T²)."""
    if method == "spd":
        return {
            "alpha_ce": 0.0,
            "alpha_logit": 1.0,
            "alpha_hidden": 1.0,
            "alpha_attn": 1.0,
            "temperature": 1.0,
            "temperature_squared": False,
            "logit_class_mean": True,
            "regression_target": "labels",
            "layer_reduction": "sum",
            "attn_maps_after_dropout": True,
        }
    if kd:
        return {
            "alpha_ce": 0.5,
            "alpha_logit": 0.5,
            "alpha_hidden": 0.0,
            "alpha_attn": 0.0,
            "temperature": 2.0,
        }
    return {"alpha_ce": 1.0, "alpha_logit": 0.0, "alpha_hidden": 0.0, "alpha_attn": 0.0}


def method_pruning_defaults(method: str) -> dict:
    """Schedules as each reference runs them. SPD: pruning from the start, 12 cubic mask
    updates over the phase (the authors' ``freq = steps / 12``), no cool-down. Soft movement:
    emmental's README values (τ 0 → 0.1, λ 400). Movement/magnitude keep the dataclass
    defaults (warm-up 10 %, cool-down 20 %: emmental's 1× / 2× the LR warm-up at 10 %)."""
    if method == "spd":
        return {"warmup_fraction": 0.0, "cooldown_fraction": 0.0, "mask_updates": 12}
    if method == "soft-movement":
        return {"soft_threshold_init": 0.0, "soft_threshold_final": 0.1, "soft_lambda": 400.0}
    return {}


def method_stage_defaults(method: str) -> dict:
    """SPD's learning rates: the authors' 6.4e-4 peak (README command; their optimizer holds
    only the encoder layers) for both cycles (their second scheduler restarts at 6.4e-4)."""
    if method == "spd":
        return {"prune_lr": 6.4e-4, "final_lr": 6.4e-4}
    return {}


def method_train_defaults(method: str) -> dict:
    """Optimizer settings that differ per method: SPD's two cycles have no LR warm-up (the
    authors' ``--warmup_steps`` default 0); the baselines keep the 10 % warm-up (emmental's
    README commands)."""
    if method == "spd":
        return {"warmup_ratio": 0.0}
    return {}


# which parameters train under --trainable auto, per method (see models.apply_trainable)
METHOD_TRAINABLE = {
    "spd": "encoder",
    "magnitude": "no-embeddings",
    "movement": "no-embeddings",
    "soft-movement": "no-embeddings",
}


def _load(name: str, num_labels: int, regression: bool) -> nn.Module:
    model, _ = load_pretrained(name, num_labels, "regression" if regression else None)
    return model


def finetune_phases(
    model_name: str,
    epochs: int,
    lr: float,
    num_labels: int,
    regression: bool,
    best_dir: str = "best",
    produces_teacher: bool = False,
    name: str = "finetune",
) -> List[Phase]:
    return [
        Phase(
            name=name,
            epochs=epochs,
            lr=lr,
            distill=DistillConfig(alpha_ce=1.0),
            build=lambda prev, teacher: _load(model_name, num_labels, regression),
            best_dir=best_dir,
            produces_teacher=produces_teacher,
        )
    ]


def prune_phases(
    method: str,
    stages: StageConfig,
    pruning: PruningConfig,
    distill: DistillConfig,
    graft: GraftConfig,
    num_labels: int,
    regression: bool,
) -> List[Phase]:
    """The phases of ``spd prune --method METHOD``."""
    if method not in PRUNE_METHODS:
        raise ValueError(f"method must be one of {PRUNE_METHODS}, got {method!r}")
    if method == "spd" and pruning.method not in ("magnitude",):
        raise ValueError(f"SPD prunes by magnitude; got pruning method {pruning.method!r}")
    if method != "spd" and pruning.method != method:
        raise ValueError(f"pruning config method {pruning.method!r} does not match --method {method}")
    phases: List[Phase] = []
    needs_teacher = method == "spd" or distill.needs_teacher
    if needs_teacher and stages.teacher is None:
        phases += finetune_phases(
            stages.model,
            stages.teacher_epochs,
            stages.teacher_lr,
            num_labels,
            regression,
            best_dir="teacher",
            produces_teacher=True,
            name="teacher",
        )

    def student(prev: Optional[nn.Module], teacher: Optional[nn.Module]) -> nn.Module:
        base = teacher if teacher is not None else _load(stages.model, num_labels, regression)
        s = copy.deepcopy(base)
        s.train()
        for p in s.parameters():
            p.requires_grad_(True)
        layers = make_prunable(
            s, block=pruning.block, scores=pruning.score_mode, score_init=pruning.score_init
        )
        if pruning.score_mode is not None and pruning.score_init_mode == "magnitude":
            init_scores_from_magnitude(layers.values())
        return s

    stage2 = "spd" if method == "spd" else "prune"
    phases.append(
        Phase(
            name=stage2,
            epochs=stages.prune_epochs,
            lr=stages.prune_lr,
            distill=distill,
            build=student,
            pruning=pruning,
            graft=graft if method == "spd" else None,
            trainable=METHOD_TRAINABLE[method],
            clip_all=method == "spd",
        )
    )
    if stages.final_epochs > 0:
        final_graft = None
        if method == "spd" and graft.final_stage == "continue" and graft.final_p() < 1.0:
            # the authors' second cycle keeps grafting at the rate stage 2 ended with
            final_graft = dataclasses.replace(graft, schedule="constant", p0=graft.final_p())
        phases.append(
            Phase(
                name="distill" if method == "spd" else "sparse-finetune",
                epochs=stages.final_epochs,
                lr=stages.final_lr,
                distill=distill,
                build=lambda prev, teacher: prev,
                graft=final_graft,
                freeze_scores=True,
                trainable=METHOD_TRAINABLE[method],
                clip_all=method == "spd",
            )
        )
    return phases


@torch.no_grad()
def init_scores_from_magnitude(layers) -> None:
    """Movement scores start at |W| (summed per block) standardised per layer, so the first
    mask updates already follow magnitude instead of ranking all-equal scores."""
    for m in layers:
        imp = reduce_to_blocks(m.weight.detach().abs().float(), m.block)
        m.scores.copy_((imp - imp.mean()) / imp.std().clamp_min(1e-12))


def spd_pruning_config(pruning: PruningConfig, method: str) -> PruningConfig:
    """The pruning policy a method uses (SPD: magnitude)."""
    return dataclasses.replace(pruning, method="magnitude" if method == "spd" else method)


__all__ = [
    "PRUNE_METHODS",
    "StageConfig",
    "finetune_phases",
    "method_distill_defaults",
    "method_pruning_defaults",
    "method_stage_defaults",
    "method_train_defaults",
    "init_scores_from_magnitude",
    "prune_phases",
    "spd_pruning_config",
]
