"""SparseLinear: a linear layer whose weight is stored packed (``sk.SparseMatrix``).

The pattern is fixed; its stored values are the trainable parameter ``values``
(nnz_blocks, bm, bk) and its int32 index arrays are buffers, so ``.to()``, ``state_dict()`` and
``load_state_dict()`` carry the whole layer. The state dict holds ``values``, ``bias``,
``row_offsets`` and ``col_indices`` only; the transposed metadata is rebuilt on load. Bias and
an activation run in the kernel's epilogue: ``y = act(x · Wᵀ + b)``. Used for inference and for
fine-tuning on a fixed pattern (stage 3 of SPD).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..activations import check_activation
from ..formats import INDEX_DTYPE, SparseMatrix, _check_block, _check_divisible
from ..ops import linear_forward, sparse_linear
from .crossover import layout_name
from .masked import MaskedLinear

# Saved: the CSR-of-blocks arrays. Derived (rebuilt on load, so files carry no duplicate index
# data): the COO rows and the transposed (CSC) metadata the input gradient walks.
_STORED = ("row_offsets", "col_indices")
_DERIVED = ("block_rows", "col_offsets", "row_indices_t", "perm_t")
_META_NAMES = _STORED + _DERIVED


class SparseLinear(nn.Module):
    """``y = act(x · Wᵀ + b)`` with ``W`` (out_features, in_features) packed on a fixed pattern.

    The constructor makes a layer of ``nnz_blocks`` stored blocks (the first ones in row-major
    order, values initialised like ``nn.Linear``); build a real one with :meth:`from_linear`,
    :meth:`from_masked` or :meth:`from_sparse`. ``load_state_dict`` accepts a state of any
    pattern (the tensors are resized, then the pattern is validated).

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        block: ``(bm, bk)``; ``(1, 1)`` is the CSR layout.
        nnz_blocks: stored blocks of the initial pattern.
        activation: fused epilogue: None/"none", "relu", "gelu" (erf), "gelu_tanh".
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        block: Union[int, Sequence[int]] = (1, 1),
        nnz_blocks: int = 0,
        activation: Optional[str] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.block = _check_block(block)
        _check_divisible((self.out_features, self.in_features), self.block, what="SparseLinear weight")
        self.activation = check_activation(activation)
        nbr, nbc = self.out_features // self.block[0], self.in_features // self.block[1]
        if not isinstance(nnz_blocks, int) or not 0 <= nnz_blocks <= nbr * nbc:
            raise ValueError(f"nnz_blocks must be an int in [0, {nbr * nbc}], got {nnz_blocks!r}")
        dtype = dtype or torch.get_default_dtype()
        # the first nnz_blocks blocks in row-major order, built without a dense weight
        idx = dict(dtype=INDEX_DTYPE, device=device)
        row_offsets = torch.clamp(torch.arange(nbr + 1, **idx) * nbc, max=nnz_blocks).to(INDEX_DTYPE)
        col_indices = torch.arange(nnz_blocks, **idx) % max(nbc, 1)
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features else 0.0
        values = torch.empty(nnz_blocks, *self.block, device=device, dtype=dtype).uniform_(-bound, bound)
        shape = (self.out_features, self.in_features)
        self._set_pattern(SparseMatrix(values, row_offsets, col_indices, shape))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features, device=device, dtype=dtype))
            with torch.no_grad():
                self.bias.uniform_(-bound, bound)
        else:
            self.register_parameter("bias", None)
        self.register_load_state_dict_post_hook(_validate_after_load)

    def _set_pattern(self, weight: SparseMatrix) -> None:
        if weight.shape != (self.out_features, self.in_features) or weight.block != self.block:
            raise ValueError(
                f"weight {weight.shape} with block {weight.block} does not fit a SparseLinear of "
                f"shape {(self.out_features, self.in_features)}, block {self.block}"
            )
        self.values = nn.Parameter(weight.values.detach().clone())
        for name, t in zip(_META_NAMES, weight.metadata()):
            self.register_buffer(name, t.detach().clone(), persistent=name in _STORED)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_sparse(
        cls, weight: SparseMatrix, bias: Optional[Tensor] = None, activation: Optional[str] = None
    ) -> "SparseLinear":
        """A layer holding a copy of ``weight`` (values and pattern) and of ``bias`` (N,)."""
        if not isinstance(weight, SparseMatrix):
            raise TypeError(f"weight must be a spd_kernels.SparseMatrix, got {type(weight).__name__}")
        n, k = weight.shape
        if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (n,)):
            got = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
            raise ValueError(f"bias must have shape ({n},), got {got}")
        layer = cls(
            k, n, bias is not None, block=weight.block, activation=activation,
            device=weight.device, dtype=weight.dtype,
        )  # fmt: skip
        layer._set_pattern(weight)
        if bias is not None:
            with torch.no_grad():
                layer.bias.copy_(bias)
        return layer

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        mask: Optional[Tensor] = None,
        block: Union[int, Sequence[int]] = (1, 1),
        activation: Optional[str] = None,
    ) -> "SparseLinear":
        """Pack ``linear.weight`` keeping ``mask`` (bool (N, K) or block grid (N/bm, K/bk));
        ``mask=None`` keeps the nonzero weights (a block is stored when any entry is nonzero)."""
        if isinstance(linear, MaskedLinear):
            if mask is not None:
                raise ValueError("pass a MaskedLinear without a mask (use from_masked)")
            return cls.from_masked(linear, activation=activation)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
        weight = SparseMatrix.from_dense(linear.weight.detach(), mask=mask, block=block)
        return cls.from_sparse(weight, linear.bias.detach() if linear.bias is not None else None, activation)

    @classmethod
    def from_masked(cls, masked: MaskedLinear, activation: Optional[str] = None) -> "SparseLinear":
        """Pack a :class:`MaskedLinear` on its effective mask (mask and binarized scores) at its
        block granularity; masked-out entries of a stored block are stored as zeros."""
        if not isinstance(masked, MaskedLinear):
            raise TypeError(f"expected a MaskedLinear, got {type(masked).__name__}")
        pattern = masked.packed_pattern()
        with torch.no_grad():
            weight = pattern.matrix(pattern.gather(masked.weight.detach()).contiguous())
        bias = masked.bias.detach() if masked.bias is not None else None
        return cls.from_sparse(weight, bias, activation)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the dense weight (the fused activation is not part of it)."""
        lin = nn.Linear(
            self.in_features,
            self.out_features,
            self.bias is not None,
            device=self.values.device,
            dtype=self.values.dtype,
        )
        with torch.no_grad():
            lin.weight.copy_(self.weight.to_dense())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    # ------------------------------------------------------------------ use
    @property
    def weight(self) -> SparseMatrix:
        """The packed weight (its ``values`` is the ``values`` parameter itself)."""
        return SparseMatrix(
            self.values,
            self.row_offsets,
            self.col_indices,
            (self.out_features, self.in_features),
            transposed=(self.block_rows, self.col_offsets, self.row_indices_t, self.perm_t),
            validate=False,
        )

    @property
    def density(self) -> float:
        total = self.out_features * self.in_features
        return self.values.numel() / total if total else 0.0

    @property
    def layout(self) -> str:
        return layout_name(self.block)

    def forward(self, x: Tensor) -> Tensor:
        values, bias = self._parameters["values"], self._parameters["bias"]
        if isinstance(x, Tensor) and x.dim() >= 2 and x.shape[-1] == self.in_features:
            if x.dtype == values.dtype and x.device == values.device:
                # the hot path (one linear of a model): the checks sparse_linear makes, inline
                b = self._buffers
                meta = tuple(b[name] for name in _META_NAMES)
                x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)
                y = linear_forward(x2, values, meta, bias, self.activation)
                return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)
        return sparse_linear(x, self.weight, bias, self.activation)  # checks and says what is wrong

    def storage_bytes(self) -> dict:
        """Bytes of the packed values, of the saved index arrays (row offsets + column
        indices), of every index array held in memory, and of the dense weight it replaces."""

        def nbytes(names):
            return sum(getattr(self, n).numel() * getattr(self, n).element_size() for n in names)

        values = self.values.numel() * self.values.element_size()
        dense = self.out_features * self.in_features * self.values.element_size()
        return {
            "values": values,
            "index": nbytes(_STORED),
            "index_in_memory": nbytes(_META_NAMES),
            "dense": dense,
        }

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A state of another pattern: resize our tensors to it first (validated after loading).
        for name in ("values", *_STORED):
            incoming = state_dict.get(prefix + name)
            current = getattr(self, name)
            if isinstance(incoming, Tensor) and incoming.shape != current.shape:
                new = torch.empty(incoming.shape, dtype=current.dtype, device=current.device)
                if name == "values":
                    self.values = nn.Parameter(new, requires_grad=current.requires_grad)
                else:
                    setattr(self, name, new)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, layout={self.layout}, block={self.block}, "
            f"density={self.density:.3f}, activation={self.activation!r}"
        )


def _validate_after_load(module: SparseLinear, incompatible_keys) -> None:
    if tuple(module.values.shape[1:]) != module.block:
        raise ValueError(
            f"loaded SparseLinear values have blocks {tuple(module.values.shape[1:])}, "
            f"the layer has block {module.block}"
        )
    try:
        weight = SparseMatrix(
            module.values.detach(),
            module.row_offsets,
            module.col_indices,
            (module.out_features, module.in_features),
            validate=True,
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"loaded SparseLinear pattern is invalid: {exc}") from exc
    for name, t in zip(_DERIVED, weight.metadata()[2:]):
        setattr(module, name, t)


class FusedActivation(nn.Module):
    """Stands where an activation module was fused into the epilogue of the preceding
    :class:`SparseLinear`: the identity. Keeps the original module so densify can restore it."""

    def __init__(self, original: nn.Module, activation: str) -> None:
        super().__init__()
        self.original = original
        self.activation = check_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        return x

    def extra_repr(self) -> str:
        return f"fused={self.activation!r}"


__all__ = ["FusedActivation", "SparseLinear"]
