"""Epilogue activations shared by every backend: ``act(x·Wᵀ + b)``.

Names: ``"none"``, ``"relu"``, ``"gelu"`` (erf form, as BERT uses) and ``"gelu_tanh"``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh")
# Backward of these needs the pre-activation; relu's can be read off its output.
NEEDS_PREACT = ("gelu", "gelu_tanh")


def check_activation(activation: Optional[str]) -> str:
    if activation is None:
        return "none"
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS} or None, got {activation!r}")
    return activation


def apply_activation(z: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "none":
        return z
    if activation == "relu":
        return torch.relu(z)
    if activation == "gelu":
        return F.gelu(z)
    if activation == "gelu_tanh":
        return F.gelu(z, approximate="tanh")
    raise ValueError(f"unknown activation {activation!r}")


def activation_backward(
    grad: torch.Tensor, y: torch.Tensor, z: Optional[torch.Tensor], activation: str
) -> torch.Tensor:
    """d loss / d z from d loss / d y, where ``y = act(z)``; computed in float32 or wider."""
    if activation == "none":
        return grad
    if activation == "relu":
        return grad * (y > 0).to(grad.dtype)
    if z is None or z.numel() != y.numel():
        raise RuntimeError(f"the backward of {activation!r} needs the saved pre-activation")
    zf = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    if activation == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(zf * (1.0 / math.sqrt(2.0))))
        pdf = torch.exp(-0.5 * zf * zf) * (1.0 / math.sqrt(2.0 * math.pi))
        d = cdf + zf * pdf
    elif activation == "gelu_tanh":
        c = math.sqrt(2.0 / math.pi)
        inner = c * (zf + 0.044715 * zf * zf * zf)
        t = torch.tanh(inner)
        d = 0.5 * (1.0 + t) + 0.5 * zf * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * zf * zf)
    else:
        raise ValueError(f"unknown activation {activation!r}")
    return (grad.to(d.dtype) * d).to(grad.dtype)
