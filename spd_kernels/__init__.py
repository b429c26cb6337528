"""spd_kernels: sparse weight formats and block-sparse / unstructured-sparse linear kernels.

>>> import torch, spd_kernels as sk
>>> W = sk.SparseMatrix.from_dense(torch.randn(64, 96), block=(32, 32))
>>> y = sk.sparse_linear(torch.randn(5, 96), W, activation="gelu")
"""

from . import _ext  # noqa: F401  (loads the compiled kernels, warns once if missing)
from .activations import ACTIVATIONS
from .backends import (
    BACKENDS,
    NoBackendError,
    available_backends,
    choose_backend,
    dispatch_reasons,
    forced_backend,
    use_backend,
)
from .checkpoint import SaveReport, load_pruned, save_pretrained, save_pruned
from .formats import SparseMatrix
from .nn import MaskedLinear, SparseLinear
from .ops import sparse_input_grad, sparse_linear, sparse_weight_grad
from .surgery import SparsityConfig, densify, export, set_masks, size_report, sparsify, sparsity_config

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "MaskedLinear",
    "NoBackendError",
    "SaveReport",
    "SparseLinear",
    "SparseMatrix",
    "SparsityConfig",
    "available_backends",
    "choose_backend",
    "densify",
    "dispatch_reasons",
    "export",
    "forced_backend",
    "load_pruned",
    "save_pretrained",
    "save_pruned",
    "set_masks",
    "size_report",
    "sparsify",
    "sparsity_config",
    "sparse_input_grad",
    "sparse_linear",
    "sparse_weight_grad",
    "use_backend",
]
