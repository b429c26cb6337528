"""Reference backend: the dense masked product in torch. Always available, any block/dtype.

It materialises the dense weight, so it is as slow as dense (or slower); it exists to be
right. Every other backend is tested against it and against a float64 product.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..activations import apply_activation
from ..formats import blocks_to_dense
from .base import Backend, Meta, weight_shape


def _dense(values: torch.Tensor, meta: Meta) -> torch.Tensor:
    return blocks_to_dense(values, meta[2], meta[1], weight_shape(values, meta))


class ReferenceBackend(Backend):
    name = "reference"

    def dds_t(self, x, values, meta, bias: Optional[torch.Tensor], activation, save_preact):
        z = x @ _dense(values, meta).t()
        if bias is not None:
            z = z + bias
        y = apply_activation(z, activation)
        return y, (z if save_preact else x.new_empty(0))

    def dds(self, dy, values, meta):
        return dy @ _dense(values, meta)

    def sdd(self, dy, x, values, meta):
        n, k = weight_shape(values, meta)
        _, bm, bk = values.shape
        full = dy.t() @ x  # (N, K)
        blocks = full.reshape(n // bm, bm, k // bk, bk).permute(0, 2, 1, 3)
        return blocks[meta[2].long(), meta[1].long()].contiguous()
