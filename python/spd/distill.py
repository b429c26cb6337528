"""Knowledge-distillation losses (Hinton et al. 2015; TinyBERT-style intermediate layers).

Every loss returns one value per example (shape (B,), float32) when ``reduction="none"``,
else its mean over the batch. Per-example values let the trainer normalise by the global
batch size, which makes gradient accumulation and data-parallel runs add up to exactly the
single-process loss.

* :func:`soft_cross_entropy` — ``T² · Σ_c -softmax(t/T)_c · log_softmax(s/T)_c`` (or the
  mean over classes, the SPD authors' form).
* :func:`hidden_mse` — mean squared error of hidden states, over the valid (non-padding)
  tokens and the hidden dimension, summed (SPD) or averaged over the layers given.
* :func:`attention_mse` — the same on attention probabilities (B, heads, L, L), over valid
  query and key positions and the heads.
* :func:`task_loss` — hard-label cross-entropy, or MSE for regression (one output).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")


def _reduce(per_example: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return per_example
    if reduction == "sum":
        return per_example.sum()
    if reduction == "mean":
        return per_example.mean()
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def soft_cross_entropy(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    reduction: str = "mean",
    squared: bool = True,
    class_mean: bool = False,
) -> Tensor:
    """``T² · CE(softmax(t/T), softmax(s/T))``; logits (B, C). The T² keeps the gradient scale
    independent of T (Hinton et al.); ``squared=False`` leaves it out. ``class_mean`` divides
    by the number of classes C: the SPD authors' ``(-p_t · log p_s).mean()`` over B × C."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    t = float(temperature)
    p_t = F.softmax(teacher_logits.detach().float() / t, dim=-1)
    logp_s = F.log_softmax(student_logits.float() / t, dim=-1)
    per = -(p_t * logp_s).sum(-1) * (t * t if squared else 1.0)
    if class_mean:
        per = per / p_t.shape[-1]
    return _reduce(per, reduction)


def _token_mask(attention_mask: Optional[Tensor], shape: Tuple[int, int], device) -> Tensor:
    if attention_mask is None:
        return torch.ones(shape, dtype=torch.float32, device=device)
    if tuple(attention_mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match tokens {tuple(shape)}")
    return attention_mask.to(device=device, dtype=torch.float32)


def hidden_mse(
    student_hidden: Sequence[Tensor],
    teacher_hidden: Sequence[Tensor],
    attention_mask: Optional[Tensor] = None,
    reduction: str = "mean",
    layers: str = "mean",
) -> Tensor:
    """Hidden-state MSE. Each element (B, L, H); ``attention_mask`` (B, L), 1 = real token.
    Per example: Σ_valid tokens ‖s - t‖² / (n_valid · H), summed (``layers="sum"``, the SPD
    authors' loss over all 13 states) or averaged over the hidden states given."""
    if len(student_hidden) != len(teacher_hidden) or not student_hidden:
        raise ValueError(
            f"need the same non-zero number of hidden states, got "
            f"{len(student_hidden)} and {len(teacher_hidden)}"
        )
    b, seq, h = student_hidden[0].shape
    m = _token_mask(attention_mask, (b, seq), student_hidden[0].device)
    denom = m.sum(1).clamp_min(1.0) * h
    per = torch.zeros(b, device=student_hidden[0].device)
    for s, t in zip(student_hidden, teacher_hidden):
        if s.shape != t.shape:
            raise ValueError(f"hidden state shapes differ: {tuple(s.shape)} vs {tuple(t.shape)}")
        d = (s.float() - t.detach().float()).pow(2).sum(-1)  # (B, L)
        per = per + (d * m).sum(1) / denom
    return _reduce(_over_layers(per, len(student_hidden), layers), reduction)


def _over_layers(total: Tensor, n: int, layers: str) -> Tensor:
    if layers == "sum":
        return total
    if layers == "mean":
        return total / n
    raise ValueError(f"layers must be 'sum' or 'mean', got {layers!r}")


def attention_mse(
    student_attn: Sequence[Tensor],
    teacher_attn: Sequence[Tensor],
    attention_mask: Optional[Tensor] = None,
    reduction: str = "mean",
    layers: str = "mean",
) -> Tensor:
    """Attention-probability MSE. Each element (B, heads, L, L). Per example: the mean squared
    difference over heads × valid queries × valid keys, summed or averaged over layers."""
    if len(student_attn) != len(teacher_attn) or not student_attn:
        raise ValueError(
            f"need the same non-zero number of attention maps, got "
            f"{len(student_attn)} and {len(teacher_attn)}"
        )
    b, nh, seq, _ = student_attn[0].shape
    m = _token_mask(attention_mask, (b, seq), student_attn[0].device)
    pair = m[:, None, :, None] * m[:, None, None, :]  # (B, 1, L, L)
    denom = pair.sum((1, 2, 3)).clamp_min(1.0) * nh
    per = torch.zeros(b, device=student_attn[0].device)
    for s, t in zip(student_attn, teacher_attn):
        if s.shape != t.shape:
            raise ValueError(f"attention shapes differ: {tuple(s.shape)} vs {tuple(t.shape)}")
        d = (s.float() - t.detach().float()).pow(2)
        per = per + (d * pair).sum((1, 2, 3)) / denom
    return _reduce(_over_layers(per, len(student_attn), layers), reduction)


def task_loss(logits: Tensor, labels: Tensor, regression: bool = False, reduction: str = "mean") -> Tensor:
    """Cross-entropy on hard labels (logits (B, C), labels (B,) int64), or MSE for
    regression (logits (B, 1), labels (B,) float)."""
    if regression:
        per = (logits.float().reshape(labels.shape[0], -1)[:, 0] - labels.float()).pow(2)
    else:
        per = F.cross_entropy(logits.float(), labels.long(), reduction="none")
    return _reduce(per, reduction)


@dataclass
class DistillConfig:
    temperature: float = field(
        default=2.0, metadata={"help": "softmax temperature of the logit distillation"}
    )
    alpha_ce: float = field(
        default=1.0, metadata={"help": "weight of the hard-label loss (CE, or MSE for regression)"}
    )
    alpha_logit: float = field(
        default=0.0,
        metadata={"help": "weight of the soft cross-entropy on logits (MSE to the teacher for regression)"},
    )
    alpha_hidden: float = field(default=0.0, metadata={"help": "weight of the hidden-state MSE"})
    alpha_attn: float = field(default=0.0, metadata={"help": "weight of the attention-map MSE"})
    temperature_squared: bool = field(
        default=True,
        metadata={"help": "multiply the logit loss by T² (Hinton et al.; the SPD authors' code does not)"},
    )
    layer_reduction: str = field(
        default="sum",
        metadata={
            "help": "how the hidden-state and attention MSEs combine over layers: sum (the SPD authors' "
            "code) or mean",
            "choices": ("sum", "mean"),
        },
    )
    logit_class_mean: bool = field(
        default=False,
        metadata={
            "help": "divide the soft cross-entropy by the number of classes (the SPD authors' "
            "(-p_t·log p_s).mean() over batch x classes; --method spd default); off: summed over "
            "classes (Hinton et al., emmental)"
        },
    )
    regression_target: str = field(
        default="teacher",
        metadata={
            "help": "regression: the logit term is the MSE to the teacher's output (teacher) or to the "
            "labels (labels: the SPD authors' code, --method spd default)",
            "choices": ("teacher", "labels"),
        },
    )
    attn_maps_after_dropout: bool = field(
        default=False,
        metadata={
            "help": "compare the student's attention maps after attention dropout, as Hugging Face "
            "returns them (the SPD reference); default: before dropout, like the teacher's"
        },
    )

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in ("alpha_ce", "alpha_logit", "alpha_hidden", "alpha_attn"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.regression_target not in ("teacher", "labels"):
            raise ValueError(
                f"regression_target must be 'teacher' or 'labels', got {self.regression_target!r}"
            )
        if self.layer_reduction not in ("sum", "mean"):
            raise ValueError(f"layer_reduction must be 'sum' or 'mean', got {self.layer_reduction!r}")

    @property
    def needs_teacher(self) -> bool:
        return self.alpha_logit > 0 or self.alpha_hidden > 0 or self.alpha_attn > 0

    @property
    def needs_hidden(self) -> bool:
        return self.alpha_hidden > 0

    @property
    def needs_attentions(self) -> bool:
        return self.alpha_attn > 0


def distillation_loss(
    student,
    teacher,
    labels: Optional[Tensor],
    attention_mask: Optional[Tensor],
    config: DistillConfig,
    regression: bool = False,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Weighted sum of the configured terms, per example (B,), and each term's per-example
    values. ``student``/``teacher`` are model outputs with ``logits`` and, when needed,
    ``hidden_states`` / ``attentions``; ``teacher`` may be None when no term needs it."""
    parts: Dict[str, Tensor] = {}
    logits = student.logits
    total = torch.zeros(logits.shape[0], device=logits.device)
    if config.alpha_ce > 0:
        if labels is None:
            raise ValueError("alpha_ce > 0 needs labels")
        parts["ce"] = task_loss(logits, labels, regression, reduction="none")
        total = total + config.alpha_ce * parts["ce"]
    if config.needs_teacher and teacher is None:
        raise ValueError("distillation weights are set but no teacher outputs were given")
    if config.alpha_logit > 0:
        if regression and config.regression_target == "labels":
            if labels is None:
                raise ValueError("regression_target='labels' needs labels")
            parts["logit"] = task_loss(logits, labels, regression=True, reduction="none")
        elif regression:
            parts["logit"] = (logits.float() - teacher.logits.detach().float()).pow(2).mean(-1)
        else:
            parts["logit"] = soft_cross_entropy(
                logits,
                teacher.logits,
                config.temperature,
                "none",
                config.temperature_squared,
                config.logit_class_mean,
            )
        total = total + config.alpha_logit * parts["logit"]
    if config.alpha_hidden > 0:
        parts["hidden"] = hidden_mse(
            student.hidden_states, teacher.hidden_states, attention_mask, "none", config.layer_reduction
        )
        total = total + config.alpha_hidden * parts["hidden"]
    if config.alpha_attn > 0:
        parts["attn"] = attention_mse(
            student.attentions, teacher.attentions, attention_mask, "none", config.layer_reduction
        )
        total = total + config.alpha_attn * parts["attn"]
    return total, parts


__all__ = [
    "DistillConfig",
    "attention_mse",
    "distillation_loss",
    "hidden_mse",
    "soft_cross_entropy",
    "task_loss",
]
