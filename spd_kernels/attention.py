"""Fused CPU self-attention for BERT-family encoders (inference only).

``out = softmax(Q·Kᵀ·scale + key-padding mask)·V`` per head, computed by the C++ kernel
``spd_kernels_C::cpu_attention`` (csrc/cpu/attention.cpp: fp32, AVX2/FMA, OpenMP). The kernel
reads Q, K and V in place through their strides -- typically three views of one fused QKV
linear's ``(B, S, 3·hidden)`` output -- and writes ``(B, S, hidden)``, the layout the output
projection takes. Padded keys are skipped using a per-sequence key range ``[start, end)``, so
the mask must be plain right or left key padding (:func:`key_range` checks it).

It computes no gradient: the functions here raise ``RuntimeError`` when autograd would need one
(the exported model's attention falls back to SDPA in that case, see ``sk.export``).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _ext

OP = "cpu_attention"


def available() -> bool:
    """Whether the compiled kernel is there (extension built with AVX2/FMA)."""
    return _ext.has_op(OP, "CPU")


if available():

    @torch.library.register_fake(f"{_ext.C_NAMESPACE}::{OP}")
    def _cpu_attention_fake(q, k, v, key_start, key_end, scale):
        b, s, h, d = q.shape
        return q.new_empty((b, s, h * d))


def key_range(mask: Optional[Tensor], batch: int, seq_len: int) -> Tuple[Tensor, Tensor]:
    """Per-sequence unpadded key range ``[start, end)`` (two int32 ``(batch,)`` tensors).

    ``mask``: None (no padding); ``(B, S)`` with True / nonzero = attend (the tokenizer's
    ``attention_mask``); or the 4-D mask a Hugging Face encoder hands its attention,
    ``(B, 1, 1 or S, S)``: bool (True = attend) or additive float (0 = attend, negative = masked),
    the same for every query row. Raises ``ValueError`` for any other mask (not one contiguous
    run of keys per sequence, query-dependent, wrong shape).
    """
    if mask is None:
        start = torch.zeros(batch, dtype=torch.int32)
        return start, torch.full((batch,), seq_len, dtype=torch.int32)
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dim() == 4:
        if mask.shape[0] not in (1, batch) or mask.shape[1] != 1 or mask.shape[3] != seq_len:
            raise ValueError(
                f"a 4-D mask must have shape ({batch}, 1, 1 or {seq_len}, {seq_len}), got {tuple(mask.shape)}"
            )
        if mask.shape[2] not in (1, seq_len):
            raise ValueError(f"a 4-D mask must have 1 or {seq_len} query rows, got {mask.shape[2]}")
        if mask.dtype == torch.bool:
            keep = mask
        elif mask.is_floating_point():
            keep = mask == 0
            if not bool(((mask == 0) | (mask <= torch.finfo(mask.dtype).min / 2)).all()):
                raise ValueError(
                    "an additive float mask must hold 0 (attend) or a large negative value (masked)"
                )
        else:
            raise TypeError(f"a 4-D mask must be bool or floating, got {mask.dtype}")
        if keep.shape[2] > 1 and not bool((keep == keep[:, :, :1, :]).all()):
            raise ValueError("the mask differs between query rows: not a key-padding mask")
        keep = keep[:, 0, 0, :].expand(batch, seq_len)
    elif mask.dim() == 2:
        if tuple(mask.shape) != (batch, seq_len):
            raise ValueError(
                f"a key-padding mask must have shape ({batch}, {seq_len}), got {tuple(mask.shape)}"
            )
        keep = mask if mask.dtype == torch.bool else mask != 0
    else:
        raise ValueError(f"mask must be 2-D (B, S) or 4-D (B, 1, 1|S, S), got shape {tuple(mask.shape)}")
    keep = keep.to("cpu")
    n = keep.sum(1)
    start = torch.where(n > 0, keep.to(torch.uint8).argmax(1), torch.zeros_like(n))
    end = start + n
    pos = torch.arange(seq_len)
    if not bool((((pos >= start[:, None]) & (pos < end[:, None])) == keep).all()):
        raise ValueError("the mask is not plain key padding (one contiguous run of kept keys per sequence)")
    return start.to(torch.int32), end.to(torch.int32)


def _check(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.float32:
            raise TypeError(f"{name} must be float32 for the cpu attention kernel, got {t.dtype}")
        if t.device.type != "cpu":
            raise ValueError(f"{name} must be a CPU tensor for the cpu attention kernel, got {t.device}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, seq, heads, head_dim), got shape {tuple(t.shape)}")
        if t.shape != q.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, q has {tuple(q.shape)}")
    d = q.shape[-1]
    if d % 8 or d == 0:
        raise ValueError(f"head_dim must be a positive multiple of 8 for the cpu attention kernel, got {d}")
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise RuntimeError(
            "the cpu attention kernel is inference only (no backward): call it under torch.no_grad() "
            "or torch.inference_mode(), or use torch.nn.functional.scaled_dot_product_attention"
        )
    if not available():
        why = _ext.IMPORT_ERROR or "extension built without AVX2/FMA"
        raise RuntimeError(f"the cpu attention kernel is not available ({why})")


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Optional[Tensor] = None,
    *,
    scale: Optional[float] = None,
) -> Tensor:
    """Self-attention of ``q, k, v`` (B, S, heads, head_dim) float32 CPU tensors, any strides
    with unit stride along head_dim (copied otherwise); ``key_padding_mask`` as
    :func:`key_range` takes it; ``scale`` defaults to ``head_dim ** -0.5``.
    Returns ``(B, S, heads * head_dim)``. A sequence with no kept key gets zeros (as
    ``scaled_dot_product_attention`` with a bool mask gives)."""
    _check(q, k, v)
    b, s, _, d = q.shape
    start, end = key_range(key_padding_mask, b, s)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    scale = d**-0.5 if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return _ext.c_op(OP)(q, k, v, start, end, scale)


def split_qkv(qkv: Tensor, num_heads: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Views q, k, v (B, S, heads, head_dim) of a fused projection ``qkv`` (B, S, 3·hidden)
    laid out ``[q | k | v]`` along the last dim: no copy."""
    if not isinstance(qkv, Tensor) or qkv.dim() != 3:
        raise ValueError(f"qkv must be a 3-D (B, S, 3*hidden) tensor, got {getattr(qkv, 'shape', qkv)!r}")
    if not isinstance(num_heads, int) or num_heads < 1 or qkv.shape[-1] % (3 * num_heads):
        raise ValueError(
            f"qkv's last dim {qkv.shape[-1]} is not 3 * num_heads * head_dim (num_heads={num_heads!r})"
        )
    b, s, n3 = qkv.shape
    parts = qkv.view(b, s, 3, num_heads, n3 // (3 * num_heads)).unbind(2)
    return parts[0], parts[1], parts[2]


def qkv_attention(
    qkv: Tensor, num_heads: int, key_padding_mask: Optional[Tensor] = None, *, scale: Optional[float] = None
) -> Tensor:
    """:func:`attention` on the output of one fused QKV linear, ``(B, S, 3·hidden)`` (q, k, v
    concatenated along the last dim), read in place. Returns ``(B, S, hidden)``."""
    q, k, v = split_qkv(qkv, num_heads)
    return attention(q, k, v, key_padding_mask, scale=scale)


__all__ = ["attention", "available", "key_range", "qkv_attention", "split_qkv"]
