"""MaskedLinear: a drop-in ``nn.Linear`` whose weight is multiplied by a mask.

Two kinds of mask combine in the forward pass:

* ``mask`` — a fixed bool buffer (N, K) set by :meth:`MaskedLinear.set_mask` (magnitude
  pruning, SPD's scheduled pruning, or a loaded pattern). Pruned entries stay pruned unless
  ``allow_regrow=True`` is passed.
* ``scores`` — optional learnable importance scores (movement pruning), one per element or
  per block, turned into a {0,1} mask each step by a straight-through binarizer
  (``"topk"`` with :attr:`density`, ``"threshold"`` / ``"sigmoid_threshold"`` with
  :attr:`threshold`). The effective mask is ``binarizer(scores) & mask``.

Granularity is the ``block`` shape: ``(1, 1)`` element-wise, ``(32, 32)`` whole blocks.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..formats import _check_block, _check_divisible
from .binarizers import BINARIZERS, topk_mask

SCORE_MODES = (None, "topk", "threshold", "sigmoid_threshold")


def expand_block_mask(block_mask: Tensor, block: Tuple[int, int]) -> Tensor:
    """(N/bm, K/bk) -> (N, K) by repeating each block flag."""
    bm, bk = block
    if block == (1, 1):
        return block_mask
    return block_mask.repeat_interleave(bm, 0).repeat_interleave(bk, 1)


def reduce_to_blocks(t: Tensor, block: Tuple[int, int], how: str = "sum") -> Tensor:
    """(N, K) -> (N/bm, K/bk) by summing (or any-ing, for bool) each block."""
    bm, bk = block
    if block == (1, 1):
        return t
    n, k = t.shape
    v = t.reshape(n // bm, bm, k // bk, bk)
    if t.dtype == torch.bool or how == "any":
        return v.any(3).any(1)
    return v.sum(dim=(1, 3))


class MaskedLinear(nn.Linear):
    """``y = x · (W ⊙ M)ᵀ + b`` with an element or block mask and optional movement scores.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        block: mask granularity ``(bm, bk)``; must divide ``(out_features, in_features)``.
        scores: None (fixed mask only) or a binarizer name: ``"topk"``, ``"threshold"``,
            ``"sigmoid_threshold"``; adds a learnable ``scores`` parameter of shape
            (N/bm, K/bk).
        score_init: initial value of the scores (nn_pruning uses a constant).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        block: Union[int, Sequence[int]] = (1, 1),
        scores: Optional[str] = None,
        score_init: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.block = _check_block(block)
        _check_divisible((out_features, in_features), self.block, what="MaskedLinear weight")
        if scores not in SCORE_MODES:
            raise ValueError(f"scores must be one of {SCORE_MODES}, got {scores!r}")
        self.score_mode = scores
        self.register_buffer("mask", torch.ones(out_features, in_features, dtype=torch.bool, device=device))
        if scores is not None:
            nb = (out_features // self.block[0], in_features // self.block[1])
            self.scores = nn.Parameter(
                torch.full(nb, float(score_init), device=device, dtype=dtype or torch.float32)
            )
        else:
            self.register_parameter("scores", None)
        # targets read by the binarizers; set by the pruning schedule
        self.density: float = 1.0
        self.threshold: float = 0.0

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        block=(1, 1),
        scores: Optional[str] = None,
        score_init: float = 0.0,
        mask: Optional[Tensor] = None,
    ) -> "MaskedLinear":
        """Wrap an existing ``nn.Linear`` (weights shared by copy, same device/dtype)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        m = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            block=block,
            scores=scores,
            score_init=score_init,
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            m.weight.copy_(w)
            if linear.bias is not None:
                m.bias.copy_(linear.bias)
        if mask is not None:
            m.set_mask(mask, allow_regrow=True)
        return m

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the masked weight (the effective mask)."""
        lin = nn.Linear(
            self.in_features,
            self.out_features,
            self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            lin.weight.copy_(self.weight * self.effective_mask().to(self.weight.dtype))
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    # ------------------------------------------------------------------ masks
    def _as_element_mask(self, mask: Tensor) -> Tensor:
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must have dtype torch.bool, got {mask.dtype}")
        n, k = self.out_features, self.in_features
        nb = (n // self.block[0], k // self.block[1])
        if tuple(mask.shape) == (n, k):
            return mask.to(self.mask.device)
        if tuple(mask.shape) == nb:
            return expand_block_mask(mask.to(self.mask.device), self.block)
        raise ValueError(
            f"mask shape {tuple(mask.shape)} matches neither the weight {(n, k)} nor its "
            f"block grid {nb} for block {self.block}"
        )

    @torch.no_grad()
    def set_mask(self, mask: Tensor, allow_regrow: bool = False) -> None:
        """Set the fixed mask (bool (N, K) or block grid). Without ``allow_regrow`` the new
        mask is intersected with the old one, so pruned weights never come back."""
        new = self._as_element_mask(mask)
        if not allow_regrow:
            new = new & self.mask
        self.mask.copy_(new)

    @torch.no_grad()
    def prune_magnitude(self, density: float) -> None:
        """Keep the ``density`` fraction of (blocks of) largest-|W| weights among the unpruned."""
        importance = reduce_to_blocks(self.weight.detach().abs().float(), self.block)
        alive = reduce_to_blocks(self.mask, self.block, "any")
        importance = importance.masked_fill(~alive, -math.inf)
        self.set_mask(topk_mask(importance, density))

    def score_mask(self) -> Optional[Tensor]:
        """The binarized scores (float {0,1}, block grid, straight-through), or None."""
        if self.scores is None:
            return None
        fn = BINARIZERS[self.score_mode]
        arg = self.density if self.score_mode == "topk" else self.threshold
        return fn.apply(self.scores, arg)

    def effective_mask(self) -> Tensor:
        """The (N, K) mask the forward pass applies (float when scores are trained)."""
        s = self.score_mask()
        if s is None:
            return self.mask
        return expand_block_mask(s, self.block) * self.mask.to(s.dtype)

    @property
    def weight_density(self) -> float:
        """Fraction of weights the forward pass keeps."""
        with torch.no_grad():
            m = self.effective_mask()
            return float(m.float().mean()) if m.numel() else 0.0

    def forward(self, x: Tensor) -> Tensor:
        m = self.effective_mask()
        w = self.weight * m.to(self.weight.dtype)
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        s += f", block={self.block}, density={self.weight_density:.3f}"
        if self.score_mode:
            s += f", scores={self.score_mode!r}"
        return s
