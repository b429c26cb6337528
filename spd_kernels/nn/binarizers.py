"""Straight-through binarizers for movement pruning (Sanh et al. 2020; nn_pruning style).

Each turns real-valued importance scores into a {0, 1} mask in the forward pass and passes
the gradient straight through to the scores in the backward pass.
"""

from __future__ import annotations

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


class ThresholdBinarizerFunction(torch.autograd.Function):
    """``scores > threshold`` (hard threshold on the raw scores)."""

    @staticmethod
    def forward(ctx, scores: Tensor, threshold: float) -> Tensor:
        return (scores > threshold).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


class SigmoidThresholdBinarizerFunction(torch.autograd.Function):
    """``sigmoid(scores) > threshold``: soft movement pruning's mask."""

    @staticmethod
    def forward(ctx, scores: Tensor, threshold: float) -> Tensor:
        return (torch.sigmoid(scores) > threshold).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


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
