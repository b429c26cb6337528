"""Sparse weight containers.

One container, :class:`SparseMatrix`, holds an ``(N, K)`` weight in block-sparse row form
(BSR). ``block=(1, 1)`` *is* the unstructured CSR layout, so every op and backend is written
once against the same metadata:

=================  ===========================  ===========================================
field              shape / dtype                meaning
=================  ===========================  ===========================================
``values``         (nnz_blocks, bm, bk) float   stored blocks in row-major (CSR) order
``row_offsets``    (N/bm + 1,) int32            CSR row pointer over block rows
``col_indices``    (nnz_blocks,) int32          block column of each stored block
``block_rows``     (nnz_blocks,) int32          block row of each stored block (COO rows)
``col_offsets``    (K/bk + 1,) int32            CSC column pointer over block columns
``row_indices_t``  (nnz_blocks,) int32          block row of each entry in CSC order
``perm_t``         (nnz_blocks,) int32          CSC entry -> index into ``values``
=================  ===========================  ===========================================

The transposed (CSC) metadata lets ``dX = dY · W`` walk ``W`` by columns without a
transposed copy of the values (stk's convention).
"""

from __future__ import annotations

import weakref as _weakref
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

INDEX_DTYPE = torch.int32
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

Block = Tuple[int, int]


def _check_block(block: Union[int, Sequence[int]]) -> Block:
    if isinstance(block, int) and not isinstance(block, bool):
        block = (block, block)
    if (
        not isinstance(block, (tuple, list))
        or len(block) != 2
        or not all(isinstance(b, int) and not isinstance(b, bool) for b in block)
    ):
        raise TypeError(f"block must be an int or a pair of ints (bm, bk), got {block!r}")
    bm, bk = int(block[0]), int(block[1])
    if bm < 1 or bk < 1:
        raise ValueError(f"block sizes must be positive, got block={(bm, bk)}")
    return bm, bk


def _check_divisible(shape: Tuple[int, int], block: Block, what: str = "weight") -> None:
    n, k = shape
    bm, bk = block
    if n % bm or k % bk:
        raise ValueError(
            f"{what} shape {tuple(shape)} is not divisible by block {block}: "
            f"{n} % {bm} = {n % bm}, {k} % {bk} = {k % bk}"
        )


def transpose_metadata(
    row_offsets: torch.Tensor, col_indices: torch.Tensor, n_block_cols: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """From CSR block metadata, compute ``(block_rows, col_offsets, row_indices_t, perm_t)``.

    ``perm_t`` orders the stored blocks by (column, row); it is a stable sort of the column
    indices, so within a column the rows stay ascending.
    """
    device = row_offsets.device
    n_block_rows = row_offsets.numel() - 1
    counts = (row_offsets[1:] - row_offsets[:-1]).long()
    block_rows = torch.repeat_interleave(torch.arange(n_block_rows, device=device), counts)
    cols = col_indices.long()
    perm = torch.sort(cols, stable=True).indices
    col_counts = torch.bincount(cols, minlength=n_block_cols)
    col_offsets = torch.zeros(n_block_cols + 1, dtype=torch.long, device=device)
    torch.cumsum(col_counts, 0, out=col_offsets[1:])
    return (
        block_rows.to(INDEX_DTYPE),
        col_offsets.to(INDEX_DTYPE),
        block_rows[perm].to(INDEX_DTYPE),
        perm.to(INDEX_DTYPE),
    )


@dataclass(frozen=True)
class _Meta:
    row_offsets: torch.Tensor
    col_indices: torch.Tensor
    block_rows: torch.Tensor
    col_offsets: torch.Tensor
    row_indices_t: torch.Tensor
    perm_t: torch.Tensor

    def tensors(self) -> Tuple[torch.Tensor, ...]:
        return (
            self.row_offsets,
            self.col_indices,
            self.block_rows,
            self.col_offsets,
            self.row_indices_t,
            self.perm_t,
        )


class SparseMatrix:
    """A block-sparse ``(N, K)`` matrix; ``block=(1, 1)`` is the CSR layout.

    Build one with :meth:`from_dense`; the constructor takes the raw CSR-of-blocks arrays and
    validates them (``validate=False`` skips the checks for metadata known to be good, e.g.
    when only the values change).
    """

    __slots__ = ("values", "shape", "block", "_meta")

    def __init__(
        self,
        values: torch.Tensor,
        row_offsets: torch.Tensor,
        col_indices: torch.Tensor,
        shape: Sequence[int],
        *,
        transposed: Optional[Sequence[torch.Tensor]] = None,
        validate: bool = True,
    ) -> None:
        if not isinstance(values, torch.Tensor):
            raise TypeError(f"values must be a torch.Tensor, got {type(values).__name__}")
        if values.dim() != 3:
            raise ValueError(f"values must have shape (nnz_blocks, bm, bk), got {tuple(values.shape)}")
        if not (isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 2):
            raise TypeError(f"shape must be a pair (N, K), got {shape!r}")
        shape = (int(shape[0]), int(shape[1]))
        if shape[0] < 0 or shape[1] < 0:
            raise ValueError(f"shape must be non-negative, got {shape}")
        block = _check_block(tuple(int(b) for b in values.shape[1:]))
        if validate:
            _check_divisible(shape, block)
            _validate_csr(values, row_offsets, col_indices, shape, block)
        if transposed is None:
            transposed = transpose_metadata(row_offsets, col_indices, shape[1] // block[1])
        elif validate:
            _validate_transposed(row_offsets, col_indices, shape, block, transposed)
        self.values = values
        self.shape = shape
        self.block = block
        self._meta = _Meta(row_offsets, col_indices, *transposed)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dense(
        cls,
        weight: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        block: Union[int, Sequence[int]] = (32, 32),
    ) -> "SparseMatrix":
        """Pack ``weight`` (N, K) keeping the blocks selected by ``mask``.

        ``mask`` is a bool tensor of shape (N, K) (a block is kept when any of its elements
        is set; elements of a kept block outside the mask are stored as zeros) or of shape
        (N/bm, K/bk) (one flag per block). With ``mask=None`` the pattern is the weight's
        nonzeros (a block is kept when any element is nonzero; NaN counts as nonzero).
        ``to_dense()`` returns ``weight`` with the unselected entries zeroed, exactly.
        """
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D (N, K), got shape {tuple(weight.shape)}")
        if weight.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"weight must be a floating tensor {_FLOAT_DTYPES}, got {weight.dtype}")
        bm, bk = _check_block(block)
        n, k = weight.shape
        _check_divisible((n, k), (bm, bk))
        nbr, nbc = n // bm, k // bk
        blocks = weight.detach().reshape(nbr, bm, nbc, bk).permute(0, 2, 1, 3)
        if mask is None:
            elem = weight.detach() != 0
            block_mask = (blocks != 0).flatten(2).any(-1)
        else:
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
            if mask.dtype != torch.bool:
                raise TypeError(f"mask must have dtype torch.bool, got {mask.dtype}")
            if mask.device != weight.device:
                raise ValueError(f"mask is on {mask.device} but weight is on {weight.device}")
            if tuple(mask.shape) == (n, k):
                elem = mask
                block_mask = mask.reshape(nbr, bm, nbc, bk).permute(0, 2, 1, 3).flatten(2).any(-1)
            elif tuple(mask.shape) == (nbr, nbc):
                block_mask = mask
                elem = None
            else:
                raise ValueError(
                    f"mask shape {tuple(mask.shape)} matches neither the weight {(n, k)} "
                    f"nor its block grid {(nbr, nbc)} for block {(bm, bk)}"
                )
        rows, cols = block_mask.nonzero(as_tuple=True)
        values = blocks[rows, cols]
        if elem is not None:
            emask = elem.reshape(nbr, bm, nbc, bk).permute(0, 2, 1, 3)[rows, cols]
            values = torch.where(emask, values, torch.zeros((), dtype=values.dtype, device=values.device))
        values = values.contiguous()
        counts = torch.bincount(rows, minlength=nbr)
        row_offsets = torch.zeros(nbr + 1, dtype=torch.long, device=weight.device)
        torch.cumsum(counts, 0, out=row_offsets[1:])
        return cls(
            values,
            row_offsets.to(INDEX_DTYPE),
            cols.to(INDEX_DTYPE),
            (n, k),
            validate=False,
        )

    def with_values(self, values: torch.Tensor) -> "SparseMatrix":
        """The same pattern with new values (e.g. a trainable parameter)."""
        if not isinstance(values, torch.Tensor) or tuple(values.shape) != tuple(self.values.shape):
            got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise ValueError(f"values must have shape {tuple(self.values.shape)}, got {got}")
        if values.device != self.values.device:
            raise ValueError(f"values are on {values.device}, the pattern on {self.values.device}")
        m = self._meta
        return SparseMatrix(
            values,
            m.row_offsets,
            m.col_indices,
            self.shape,
            transposed=m.tensors()[2:],
            validate=False,
        )

    # ------------------------------------------------------------------ properties
    @property
    def layout(self) -> str:
        """``"csr"`` for block (1, 1), else ``"bsr"``."""
        return "csr" if self.block == (1, 1) else "bsr"

    @property
    def nnz_blocks(self) -> int:
        return int(self.values.shape[0])

    @property
    def nnz(self) -> int:
        """Stored elements (zeros inside kept blocks included)."""
        return self.values.numel()

    @property
    def density(self) -> float:
        total = self.shape[0] * self.shape[1]
        return self.nnz / total if total else 0.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def row_offsets(self) -> torch.Tensor:
        return self._meta.row_offsets

    @property
    def col_indices(self) -> torch.Tensor:
        return self._meta.col_indices

    @property
    def block_rows(self) -> torch.Tensor:
        return self._meta.block_rows

    @property
    def col_offsets(self) -> torch.Tensor:
        return self._meta.col_offsets

    @property
    def row_indices_t(self) -> torch.Tensor:
        return self._meta.row_indices_t

    @property
    def perm_t(self) -> torch.Tensor:
        return self._meta.perm_t

    def metadata(self) -> Tuple[torch.Tensor, ...]:
        """``(row_offsets, col_indices, block_rows, col_offsets, row_indices_t, perm_t)``."""
        return self._meta.tensors()

    def index_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.metadata())

    # ------------------------------------------------------------------ conversion
    def to_dense(self) -> torch.Tensor:
        """The dense ``(N, K)`` matrix (differentiable w.r.t. ``values``)."""
        return blocks_to_dense(self.values, self.block_rows, self.col_indices, self.shape)

    def block_mask(self) -> torch.Tensor:
        """Bool (N/bm, K/bk): which blocks are stored."""
        bm, bk = self.block
        out = torch.zeros(self.shape[0] // bm, self.shape[1] // bk, dtype=torch.bool, device=self.device)
        out[self.block_rows.long(), self.col_indices.long()] = True
        return out

    def to(self, device=None, dtype=None) -> "SparseMatrix":
        """Move to ``device`` and/or cast the values to ``dtype`` (indices stay int32)."""
        if isinstance(device, torch.dtype) and dtype is None:
            device, dtype = None, device
        if dtype is not None and dtype not in _FLOAT_DTYPES:
            raise TypeError(f"dtype must be one of {_FLOAT_DTYPES}, got {dtype}")
        values = self.values.to(device=device, dtype=dtype)
        meta = [t.to(device=device) for t in self.metadata()]
        return SparseMatrix(values, meta[0], meta[1], self.shape, transposed=meta[2:], validate=False)

    def __repr__(self) -> str:
        return (
            f"SparseMatrix(shape={self.shape}, layout={self.layout!r}, block={self.block}, "
            f"density={self.density:.4f}, dtype={self.dtype}, device={self.device})"
        )


def blocks_to_dense(
    values: torch.Tensor, block_rows: torch.Tensor, col_indices: torch.Tensor, shape
) -> torch.Tensor:
    """Scatter stored blocks into a dense (N, K) tensor (differentiable w.r.t. values)."""
    n, k = shape
    _, bm, bk = values.shape
    nbr, nbc = n // bm, k // bk
    flat = values.new_zeros(nbr * nbc, bm, bk)
    idx = block_rows.long() * nbc + col_indices.long()
    flat = flat.index_copy(0, idx, values)
    return flat.view(nbr, nbc, bm, bk).permute(0, 2, 1, 3).reshape(n, k)


# ---------------------------------------------------------------------- validation
def _check_index(name: str, t: torch.Tensor, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != INDEX_DTYPE:
        raise TypeError(f"{name} must have dtype {INDEX_DTYPE}, got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but values are on {device}")


def _validate_csr(values, row_offsets, col_indices, shape, block) -> None:
    if values.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"values must be floating {_FLOAT_DTYPES}, got {values.dtype}")
    dev = values.device
    _check_index("row_offsets", row_offsets, dev)
    _check_index("col_indices", col_indices, dev)
    nbr, nbc = shape[0] // block[0], shape[1] // block[1]
    nnz = values.shape[0]
    if row_offsets.numel() != nbr + 1:
        raise ValueError(f"row_offsets must have N/bm + 1 = {nbr + 1} entries, got {row_offsets.numel()}")
    if col_indices.numel() != nnz:
        raise ValueError(f"col_indices has {col_indices.numel()} entries but values hold {nnz} blocks")
    ro = row_offsets.long()
    if int(ro[0]) != 0 or int(ro[-1]) != nnz:
        raise ValueError(
            f"row_offsets must start at 0 and end at nnz_blocks={nnz}, got {int(ro[0])} ... {int(ro[-1])}"
        )
    steps = ro[1:] - ro[:-1]
    if bool((steps < 0).any()):
        bad = int((steps < 0).nonzero()[0])
        raise ValueError(f"row_offsets must be non-decreasing, decreases at block row {bad}")
    if nnz:
        ci = col_indices.long()
        lo, hi = int(ci.min()), int(ci.max())
        if lo < 0 or hi >= nbc:
            raise ValueError(
                f"col_indices must lie in [0, {nbc}) for K={shape[1]}, block={block}; got range [{lo}, {hi}]"
            )
        # strictly increasing inside each row: a drop is allowed only at a row start
        starts = torch.zeros(nnz, dtype=torch.bool, device=dev)
        starts[ro[:-1][steps > 0]] = True
        d = ci[1:] - ci[:-1]
        bad = (d <= 0) & ~starts[1:]
        if bool(bad.any()):
            i = int(bad.nonzero()[0]) + 1
            raise ValueError(
                f"col_indices must be strictly increasing within a row; entry {i} "
                f"(column {int(ci[i])}) follows column {int(ci[i - 1])}"
            )


def _validate_transposed(row_offsets, col_indices, shape, block, transposed) -> None:
    if len(transposed) != 4:
        raise ValueError("transposed must be (block_rows, col_offsets, row_indices_t, perm_t)")
    expected = transpose_metadata(row_offsets, col_indices, shape[1] // block[1])
    names = ("block_rows", "col_offsets", "row_indices_t", "perm_t")
    for name, got, want in zip(names, transposed, expected):
        _check_index(name, got, row_offsets.device)
        if got.shape != want.shape or not torch.equal(got, want):
            raise ValueError(f"{name} does not match the CSR metadata")


# ---------------------------------------------------------------------- the kernels' metadata
META_NAMES = ("row_offsets", "col_indices", "block_rows", "col_offsets", "row_indices_t", "perm_t")
_CHECKED_ATTR = "_spd_meta_checked"


def _versions(meta: Sequence[torch.Tensor]) -> Tuple[Optional[int], ...]:
    out = []
    for t in meta:
        try:
            out.append(t._version)
        except RuntimeError:  # an inference tensor has no version counter
            out.append(None)
    return tuple(out)


def _already_checked(values: torch.Tensor, meta: Sequence[torch.Tensor]) -> bool:
    mark = getattr(meta[0], _CHECKED_ATTR, None)
    if mark is None:
        return False
    refs, versions, nnz = mark
    return (
        nnz == values.shape[0] and all(r() is t for r, t in zip(refs, meta)) and versions == _versions(meta)
    )


def check_metadata(values: torch.Tensor, meta: Sequence[torch.Tensor]) -> None:
    """The one check of the metadata every backend's kernels walk, on any device.

    values: (nnz_blocks, bm, bk); meta: the six int32 arrays in :data:`META_NAMES` order. Raises
    ``ValueError`` naming the offending array and value when an offset array does not run from 0
    to nnz_blocks without decreasing, or an index lies outside its range (a kernel would read out
    of bounds), ``TypeError`` for a wrong dtype. The same arrays (same tensors, not modified since)
    with the same number of blocks are checked once: a CUDA check waits for the device, so it is
    not repeated on every call.
    """
    if not isinstance(values, torch.Tensor) or values.dim() != 3:
        got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(f"values must have shape (nnz_blocks, bm, bk), got {got}")
    if len(meta) != len(META_NAMES):
        raise ValueError(f"expected the {len(META_NAMES)} metadata arrays {META_NAMES}, got {len(meta)}")
    if _already_checked(values, meta):
        return
    dev = values.device
    for name, t in zip(META_NAMES, meta):
        _check_index(name, t, dev)
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous, got stride {t.stride()}")
    row_offsets, col_indices, block_rows, col_offsets, row_indices_t, perm_t = meta
    nnz = values.shape[0]
    if row_offsets.numel() < 1 or col_offsets.numel() < 1:
        raise ValueError(
            f"row_offsets and col_offsets need at least one entry, got {row_offsets.numel()} and "
            f"{col_offsets.numel()}"
        )
    for name, t in zip(META_NAMES, meta):
        if name not in ("row_offsets", "col_offsets") and t.numel() != nnz:
            raise ValueError(f"{name} must have nnz_blocks={nnz} entries, got {t.numel()}")
    nbr, nbc = row_offsets.numel() - 1, col_offsets.numel() - 1
    offsets = (("row_offsets", row_offsets), ("col_offsets", col_offsets))
    ranges = (
        ("col_indices", col_indices, nbc),
        ("block_rows", block_rows, nbr),
        ("row_indices_t", row_indices_t, nbr),
        ("perm_t", perm_t, nnz),
    )
    # every condition on the device, one transfer of a few flags: a single wait on CUDA
    flags = []
    for _, t in offsets:
        flags += [t[0] != 0, t[-1] != nnz, (t[1:] < t[:-1]).any()]
    for _, t, hi in ranges:
        flags.append(((t < 0) | (t >= hi)).any())
    if not bool(torch.stack(flags).any()):
        refs = tuple(_weakref.ref(t) for t in meta)
        setattr(row_offsets, _CHECKED_ATTR, (refs, _versions(meta), nnz))
        return
    for name, t in offsets:
        first, last = int(t[0]), int(t[-1])
        if first != 0 or last != nnz:
            raise ValueError(f"{name} must start at 0 and end at nnz_blocks={nnz}, got {first} ... {last}")
        drops = (t[1:] < t[:-1]).nonzero()
        if drops.numel():
            i = int(drops[0])
            raise ValueError(f"{name} must be non-decreasing, got {int(t[i])} then {int(t[i + 1])} at {i}")
    for name, t, hi in ranges:
        bad = ((t < 0) | (t >= hi)).nonzero()
        if bad.numel():
            i = int(bad[0])
            raise ValueError(f"{name}[{i}] = {int(t[i])} is outside [0, {hi})")
