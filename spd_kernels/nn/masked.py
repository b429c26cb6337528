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

Two ways to compute the product (``extra_repr`` says which one a call takes now):

* ``path=dense-masked``: ``F.linear(x, W ⊙ M, b)``. Always right.
* ``path=sparse(<layout>)``: ``sk.sparse_linear`` on the pattern packed from the effective
  mask (``block`` granularity -> BSR of that block, ``(1, 1)`` -> CSR). The pattern is packed
  once per mask change (cached, keyed by a mask version counter); every call gathers the stored
  values from ``weight`` differentiably, so the weight gradient of the kernels (computed at the
  stored positions only) lands in ``weight.grad`` and the optimizer keeps updating ``weight``.
  Without autograd (``no_grad``/``inference_mode``) the gathered values are cached as well,
  until ``weight`` changes. While movement scores train, the pattern is the committed
  ``mask`` (fixed between mask updates) and the binarised scores are folded into the gathered
  values, so the score gradient (straight-through, ``∂L/∂W' ⊙ W``) is computed at the stored
  positions only, where it can be non-zero.

``sparse_path`` chooses: ``"never"``; ``"always"`` (whenever the pattern is fixed for the
call); ``"auto"`` (fixed pattern and density below the crossover measured for the backend,
layout and kind of call in :mod:`spd_kernels.nn.crossover`).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backends import NoBackendError, choose_backend
from ..formats import _check_block, _check_divisible
from ..ops import sparse_linear
from . import packing
from .binarizers import BINARIZERS, topk_mask
from .crossover import crossover_density, layout_name

SCORE_MODES = (None, "topk", "threshold", "sigmoid_threshold")
SPARSE_PATHS = ("auto", "never", "always")
DENSE_PATH = "dense-masked"


def check_sparse_path(sparse_path: str) -> str:
    if sparse_path not in SPARSE_PATHS:
        raise ValueError(f"sparse_path must be one of {SPARSE_PATHS}, got {sparse_path!r}")
    return sparse_path


def _version(t: Tensor) -> int:
    # inference tensors (a module built under inference_mode) keep no version counter
    try:
        return t._version
    except RuntimeError:
        return -1


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
        sparse_path: ``"auto"`` | ``"never"`` | ``"always"`` (see the module docstring).

    ``last_path`` is the path the latest eager forward took (``"dense-masked"`` or
    ``"sparse(<layout>)"``). Freezing the scores (``scores.requires_grad_(False)``) fixes the
    pattern, so the sparse path becomes possible.
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
        sparse_path: str = "auto",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.block = _check_block(block)
        _check_divisible((out_features, in_features), self.block, what="MaskedLinear weight")
        if scores not in SCORE_MODES:
            raise ValueError(f"scores must be one of {SCORE_MODES}, got {scores!r}")
        self.score_mode = scores
        self.sparse_path = check_sparse_path(sparse_path)
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
        self.min_density: float = 0.0  # threshold binarizers keep at least this fraction
        # set_mask bumps the counter; the packed pattern is rebuilt only when its key changes
        self._mask_version = 0
        self._packed: Optional[Tuple[tuple, packing.PackedPattern]] = None
        self._packed_committed: Optional[Tuple[tuple, packing.PackedPattern]] = None
        self._density_cache: Optional[Tuple[tuple, float]] = None
        self._values_cache: Optional[Tuple[tuple, Tensor]] = None
        self.last_path: Optional[str] = None
        # False: the dense masked product while the scores train, even on a fixed committed pattern
        self.sparse_with_trained_scores = True

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
        sparse_path: str = "auto",
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
            sparse_path=sparse_path,
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
        self._mask_version += 1

    def update_mask(self, mask: Tensor, allow_regrow: bool = False) -> None:
        """Alias of :meth:`set_mask`."""
        self.set_mask(mask, allow_regrow=allow_regrow)

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
        if self.score_mode == "topk":
            return fn.apply(self.scores, self.density)
        return fn.apply(self.scores, self.threshold, self.min_density)

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

    # ------------------------------------------------------------------ sparse path
    def _pattern_key(self) -> tuple:
        # set_mask bumps _mask_version; _version/data_ptr also catch in-place edits of the
        # buffers (load_state_dict, direct writes) and moves to another device.
        key: tuple = (self._mask_version, _version(self.mask), self.mask.data_ptr(), self.block)
        if self.scores is not None:
            arg = self.density if self.score_mode == "topk" else self.threshold
            key += (
                _version(self.scores),
                self.scores.data_ptr(),
                self.score_mode,
                float(arg),
                self.min_density,
            )
        return key

    def packed_pattern(self) -> packing.PackedPattern:
        """The effective mask packed at ``block`` granularity; packed once, then cached until
        the mask (or the frozen scores, or their density/threshold target) changes."""
        key = self._pattern_key()
        if self._packed is None or self._packed[0] != key:
            with torch.no_grad():
                m = self.effective_mask()
                m = m if m.dtype == torch.bool else m != 0
            self._packed = (key, packing.pack_pattern(m, self.block))
            self._values_cache = None
        return self._packed[1]

    def _scores_trained(self) -> bool:
        return self.scores is not None and self.scores.requires_grad and torch.is_grad_enabled()

    def _pattern_density(self) -> float:
        """Fraction of blocks the sparse path would store, from the mask alone (no packing:
        a layer that stays dense never packs), cached until the pattern changes."""
        trained = self._scores_trained()
        key = (trained,) + (
            (self._mask_version, _version(self.mask), self.mask.data_ptr())
            if trained
            else self._pattern_key()
        )
        if self._density_cache is None or self._density_cache[0] != key:
            with torch.no_grad():
                m = self.mask if trained else self.effective_mask()
                m = m if m.dtype == torch.bool else m != 0
                d = float(reduce_to_blocks(m, self.block, "any").float().mean()) if m.numel() else 0.0
            self._density_cache = (key, d)
        return self._density_cache[1]

    def _committed_pattern(self) -> packing.PackedPattern:
        """The committed ``mask`` alone, packed (cached until it changes). While the scores
        train, the effective mask changes every step but always lies inside it."""
        key = (self._mask_version, _version(self.mask), self.mask.data_ptr(), self.block)
        if self._packed_committed is None or self._packed_committed[0] != key:
            self._packed_committed = (key, packing.pack_pattern(self.mask, self.block))
        return self._packed_committed[1]

    def _mode(self, x: Optional[Tensor]) -> str:
        needs = self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad)
        needs = needs or (x is not None and x.requires_grad)
        return "train" if torch.is_grad_enabled() and needs else "infer"

    def sparse_path_reason(self, device: torch.device, dtype: torch.dtype, mode: str) -> Optional[str]:
        """None when a call on ``device``/``dtype`` (``mode`` "train" or "infer") takes the
        sparse path, else the reason it computes the dense masked product."""
        if self.sparse_path == "never":
            return "sparse_path='never'"
        if self._scores_trained() and not self.sparse_with_trained_scores:
            return "the scores are trained (sparse_with_trained_scores=False)"
        if torch.compiler.is_compiling():
            return "under torch.compile (export to SparseLinear to compile the sparse kernels)"
        if dtype != self.weight.dtype or torch.is_autocast_enabled(device.type):
            return f"input dtype {dtype} differs from the weight's {self.weight.dtype} (or autocast)"
        if self.sparse_path == "always":
            return None
        try:
            backend = choose_backend("dds_t", device, dtype, self.block).name
        except NoBackendError:
            return "no backend can run the sparse product"
        limit = crossover_density(backend, self.block, mode)
        if limit <= 0.0:
            return f"no measured crossover for backend {backend!r}, layout {layout_name(self.block)}"
        density = self._pattern_density()
        if density >= limit:
            return f"density {density:.3f} is not below the {backend} crossover {limit:.3f}"
        return None

    def current_path(self) -> str:
        """The path a call with an input of the weight's dtype and device would take now,
        under the current grad mode: ``"dense-masked"`` or ``"sparse(<layout>)"``."""
        reason = self.sparse_path_reason(self.weight.device, self.weight.dtype, self._mode(None))
        return DENSE_PATH if reason is not None else f"sparse({layout_name(self.block)})"

    def _sparse_forward(self, x: Tensor) -> Tensor:
        if self._scores_trained():
            # the binarised scores are folded into the values gathered on the committed
            # pattern: the kernels' sampled weight gradient then reaches both the weight and
            # (straight through) the scores, exactly the dense masked gradients, which are
            # zero outside the committed pattern anyway
            pattern = self._committed_pattern()
            w = self.weight * expand_block_mask(self.score_mask(), self.block).to(self.weight.dtype)
            return sparse_linear(x, pattern.matrix(pattern.gather(w)), self.bias)
        pattern = self.packed_pattern()
        if torch.is_grad_enabled() and self.weight.requires_grad:
            values = pattern.gather(self.weight)
        else:
            # no autograd to the weight: reuse the gathered values until the weight changes
            key = (self._packed[0], _version(self.weight), self.weight.data_ptr(), self.weight.dtype)
            if self._values_cache is None or self._values_cache[0] != key:
                with torch.inference_mode(False), torch.no_grad():
                    self._values_cache = (key, pattern.gather(self.weight).contiguous())
            values = self._values_cache[1]
        return sparse_linear(x, pattern.matrix(values), self.bias)

    def _apply(self, fn, recurse=True):
        # .to()/.cuda()/.half() replace the tensors: drop what was packed from the old ones
        self._packed = None
        self._packed_committed = None
        self._density_cache = None
        self._values_cache = None
        return super()._apply(fn, recurse)

    def forward(self, x: Tensor) -> Tensor:
        compiling = torch.compiler.is_compiling()
        if not compiling and isinstance(x, Tensor):
            if self.sparse_path_reason(x.device, x.dtype, self._mode(x)) is None:
                self.last_path = f"sparse({layout_name(self.block)})"
                return self._sparse_forward(x)
            self.last_path = DENSE_PATH
        m = self.effective_mask()
        w = self.weight * m.to(self.weight.dtype)
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        s += f", block={self.block}, density={self.weight_density:.3f}"
        if self.score_mode:
            s += f", scores={self.score_mode!r}"
        if self.sparse_path != "auto":
            s += f", sparse_path={self.sparse_path!r}"
        return s + f", path={self.current_path()}"
