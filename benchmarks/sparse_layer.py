"""The pruned layer the model benchmark swaps in for each encoder linear."""

from __future__ import annotations

import torch
from torch import nn

import spd_kernels as sk


class KernelLinear(nn.Module):
    """Stand-in for the packed sparse layer in the model benchmark: a fixed block pattern run by
    ``sk.sparse_linear``, values trainable; ``to_linear()`` gives its dense twin."""

    def __init__(self, linear: nn.Linear, block_mask: torch.Tensor, block):
        super().__init__()
        W = sk.SparseMatrix.from_dense(linear.weight.detach(), mask=block_mask, block=block)
        self._W = W
        self.values = nn.Parameter(W.values.clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x):
        return sk.sparse_linear(x, self._W.with_values(self.values), self.bias)

    def to_linear(self) -> nn.Linear:
        n, k = self._W.shape
        lin = nn.Linear(k, n, bias=self.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(self._W.with_values(self.values.detach()).to_dense())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin
