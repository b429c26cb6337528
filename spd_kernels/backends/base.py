"""What a backend is: the three products of a sparse linear layer, and why it can't run."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

OPS = ("dds_t", "dds", "sdd")
Meta = Sequence[torch.Tensor]  # (row_offsets, col_indices, block_rows, col_offsets, row_indices_t, perm_t)


def weight_shape(values: torch.Tensor, meta: Meta) -> Tuple[int, int]:
    """(N, K) of the sparse weight, from the block shape and the two offset arrays."""
    _, bm, bk = values.shape
    return (meta[0].numel() - 1) * bm, (meta[3].numel() - 1) * bk


class Backend:
    """A set of kernels for ``Y = X·Wᵀ`` (dds_t), ``dX = dY·W`` (dds) and ``dW|pattern`` (sdd).

    Subclasses set ``name`` and override :meth:`availability` (can it run at all in this
    process) and :meth:`call_reasons` (can it run this call); both return human-readable
    reasons, empty when it can. :meth:`preference_reasons` (should the automatic choice take
    it for a weight of this density) is optional.
    """

    name = "base"

    def availability(self) -> List[str]:
        return []

    def call_reasons(
        self, op: str, device: torch.device, dtype: torch.dtype, block: Tuple[int, int]
    ) -> List[str]:
        return []

    def not_supported_reasons(
        self,
        op: str,
        device: torch.device,
        dtype: torch.dtype,
        block: Tuple[int, int],
    ) -> List[str]:
        reasons = self.availability()
        if reasons:
            return reasons
        return self.call_reasons(op, device, dtype, block)

    def preference_reasons(
        self, op: str, device: torch.device, dtype: torch.dtype, block: Tuple[int, int], density: float
    ) -> List[str]:
        """Why the automatic choice passes over this backend for a call it can run (e.g. the dense
        product is faster at this density); a forced backend ignores them."""
        return []

    # The products. x/dy are 2-D (M, K)/(M, N) and may be non-contiguous.
    def dds_t(
        self,
        x: torch.Tensor,
        values: torch.Tensor,
        meta: Meta,
        bias: Optional[torch.Tensor],
        activation: str,
        save_preact: bool,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return ``(y, z)``: ``y = act(x·Wᵀ + bias)``; ``z`` the pre-activation when
        ``save_preact`` else an empty tensor."""
        raise NotImplementedError

    def dds(self, dy: torch.Tensor, values: torch.Tensor, meta: Meta) -> torch.Tensor:
        """``dX = dY · W`` as (M, K)."""
        raise NotImplementedError

    def sdd(self, dy: torch.Tensor, x: torch.Tensor, values: torch.Tensor, meta: Meta) -> torch.Tensor:
        """``(dYᵀ · X)`` sampled at the stored blocks, shaped like ``values``."""
        raise NotImplementedError
