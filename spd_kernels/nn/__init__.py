"""Layers built on the sparse kernels."""

from .binarizers import (
    BINARIZERS,
    SigmoidThresholdBinarizerFunction,
    ThresholdBinarizerFunction,
    TopKBinarizerFunction,
    topk_mask,
)
from .masked import MaskedLinear, expand_block_mask, reduce_to_blocks

__all__ = [
    "BINARIZERS",
    "MaskedLinear",
    "SigmoidThresholdBinarizerFunction",
    "ThresholdBinarizerFunction",
    "TopKBinarizerFunction",
    "expand_block_mask",
    "reduce_to_blocks",
    "topk_mask",
]
