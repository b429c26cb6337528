"""Packing a mask into the pattern of a :class:`~spd_kernels.SparseMatrix`, once per mask.

:func:`pack_pattern` turns a bool ``(N, K)`` mask into the CSR-of-blocks metadata plus a flat
gather index into the dense weight. A layer then builds its packed weight every step as a
*differentiable gather* of its dense ``weight`` parameter (:meth:`PackedPattern.gather`): the
optimizer keeps updating ``weight``, and autograd scatters the sparse gradient of the kernels
back into it at the stored positions only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..formats import SparseMatrix, _check_block, _check_divisible
from .crossover import layout_name


@dataclass(frozen=True)
class PackedPattern:
    """A fixed sparsity pattern of an ``(N, K)`` weight.

    ``meta``: the six int32 index arrays of :meth:`SparseMatrix.metadata`; ``index``: int64
    (nnz_blocks * bm * bk,) flat positions in the dense weight of every stored element, in the
    order of ``values``; ``keep``: bool (nnz_blocks, bm, bk) marking the masked-in elements of
    the stored blocks, or None when every stored element is kept (whole-block masks, CSR).
    """

    shape: Tuple[int, int]
    block: Tuple[int, int]
    meta: Tuple[Tensor, ...]
    index: Tensor
    keep: Optional[Tensor]
    nnz_blocks: int

    @property
    def layout(self) -> str:
        return layout_name(self.block)

    @property
    def density(self) -> float:
        """Stored fraction of the weight (whole blocks, zeros inside kept blocks included)."""
        total = self.shape[0] * self.shape[1]
        return self.nnz_blocks * self.block[0] * self.block[1] / total if total else 0.0

    def gather(self, weight: Tensor) -> Tensor:
        """The stored values of the dense ``weight`` (N, K) as (nnz_blocks, bm, bk),
        differentiable w.r.t. ``weight``; masked-out elements of kept blocks are zero."""
        values = weight.reshape(-1).index_select(0, self.index).view(self.nnz_blocks, *self.block)
        if self.keep is not None:
            values = values * self.keep.to(values.dtype)
        return values

    def matrix(self, values: Tensor) -> SparseMatrix:
        """A :class:`SparseMatrix` of this pattern holding ``values`` (no copy, no checks)."""
        m = self.meta
        return SparseMatrix(values, m[0], m[1], self.shape, transposed=m[2:], validate=False)


def pack_pattern(mask: Tensor, block=(1, 1)) -> PackedPattern:
    """Pack a bool ``(N, K)`` mask at ``block`` granularity (a block is stored when any of its
    elements is set; ``block=(1, 1)`` gives the CSR layout). Runs on ``mask.device``."""
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a 2-D bool tensor, got {got}")
    block = _check_block(block)
    n, k = (int(s) for s in mask.shape)
    _check_divisible((n, k), block, what="mask")
    bm, bk = block
    # A pattern packed inside inference_mode must still be usable later for training.
    with torch.inference_mode(False), torch.no_grad():
        mask = mask.clone() if mask.is_inference() else mask
        # from_dense of the mask itself: its values are the kept flags of the stored blocks
        sm = SparseMatrix.from_dense(mask.to(torch.float32), mask=mask, block=block)
        dev = mask.device
        rows = sm.block_rows.long()[:, None, None] * bm + torch.arange(bm, device=dev)[None, :, None]
        cols = sm.col_indices.long()[:, None, None] * bk + torch.arange(bk, device=dev)[None, None, :]
        index = (rows * k + cols).reshape(-1)
        keep = sm.values.bool()
        keep = None if bool(keep.all()) else keep
    return PackedPattern((n, k), block, sm.metadata(), index, keep, sm.nnz_blocks)


__all__ = ["PackedPattern", "pack_pattern"]
