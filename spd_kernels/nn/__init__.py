"""Layers built on the sparse kernels."""

from .binarizers import (
    BINARIZERS,
    SigmoidThresholdBinarizerFunction,
    ThresholdBinarizerFunction,
    TopKBinarizerFunction,
    topk_mask,
)
from .crossover import crossover_density, crossover_table, layout_name
from .masked import SPARSE_PATHS, MaskedLinear, expand_block_mask, reduce_to_blocks
from .packing import PackedPattern, pack_pattern
from .sparse import FusedActivation, SparseLinear

__all__ = [
    "BINARIZERS",
    "FusedActivation",
    "MaskedLinear",
    "PackedPattern",
    "SPARSE_PATHS",
    "SigmoidThresholdBinarizerFunction",
    "SparseLinear",
    "ThresholdBinarizerFunction",
    "TopKBinarizerFunction",
    "crossover_density",
    "crossover_table",
    "expand_block_mask",
    "layout_name",
    "pack_pattern",
    "reduce_to_blocks",
    "topk_mask",
]
