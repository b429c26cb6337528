"""Straight-through binarizers for movement pruning (Sanh et al. 2020; nn_pruning style).

Each turns real-valued importance scores into a {0, 1} mask in the forward pass and passes
the gradient straight through to the scores in the backward pass.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class TopKBinarizerFunction(torch.autograd.Function):
    """Keep the ``density`` fraction of entries with the largest scores (ties broken by index)."""

    @staticmethod
    def forward(ctx, scores: Tensor, density: float) -> Tensor:
        return topk_mask(scores, density).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def _with_floor(mask: Tensor, scores: Tensor, min_density: float) -> Tensor:
    """At least ``ceil(min_density · numel)`` entries kept, the highest scores (emmental's
    ThresholdBinarizer keeps 0.5 % of every matrix so none is emptied)."""
    need = int(math.ceil(float(min_density) * scores.numel()))
    if need > 0 and int(mask.sum()) < need:
        return mask | topk_mask(scores, need / scores.numel())
    return mask


class ThresholdBinarizerFunction(torch.autograd.Function):
    """``scores > threshold`` (hard threshold on the raw scores), with a per-matrix floor."""

    @staticmethod
    def forward(ctx, scores: Tensor, threshold: float, min_density: float = 0.0) -> Tensor:
        return _with_floor(scores > threshold, scores, min_density).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None, None


class SigmoidThresholdBinarizerFunction(torch.autograd.Function):
    """``sigmoid(scores) > threshold``: soft movement pruning's mask, with a per-matrix floor."""

    @staticmethod
    def forward(ctx, scores: Tensor, threshold: float, min_density: float = 0.0) -> Tensor:
        return _with_floor(torch.sigmoid(scores) > threshold, scores, min_density).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None, None


def topk_mask(scores: Tensor, density: float) -> Tensor:
    """Bool mask keeping ``round(density * numel)`` largest entries of ``scores``."""
    if not 0.0 <= float(density) <= 1.0:
        raise ValueError(f"density must lie in [0, 1], got {density}")
    k = int(round(float(density) * scores.numel()))
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        idx = torch.topk(scores.detach().flatten(), k, sorted=False).indices
        mask[idx] = True
    return mask.view_as(scores)


BINARIZERS = {
    "topk": TopKBinarizerFunction,
    "threshold": ThresholdBinarizerFunction,
    "sigmoid_threshold": SigmoidThresholdBinarizerFunction,
}
