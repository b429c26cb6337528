"""Dropout for CPU training: the C++ kernel ``spd_kernels_C::cpu_dropout`` (csrc/cpu/dropout.cpp)
and its autograd.

One pass writes the scaled output and a bit mask (one bit per element, 1 = kept); the backward
multiplies the output gradient by the same mask and ``1 / (1 - p)``. The mask comes from a
counter-based generator (Philox4x32-10) keyed by a seed and an offset that every call draws from
torch's default CPU generator, so ``torch.manual_seed`` fixes the masks, saving and restoring
``torch.get_rng_state()`` resumes them, and the result does not depend on the thread count.
Keep decisions use 16 random bits, so ``p`` is rounded to a multiple of 2^-16 (the keep rate is
off by at most 7.7e-6); the scale is exactly ``1 / (1 - p)``.

Calls the kernel does not take (another device or dtype, no compiled extension, ``inplace``)
run ``torch.nn.functional.dropout``.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ._ext import c_op, has_op

KERNEL_DTYPES = (torch.float32, torch.bfloat16)


def check_p(p: float) -> float:
    """``p`` as a float; ``ValueError`` unless 0 <= p <= 1."""
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"dropout probability p must be a number, got {type(p).__name__}")
    p = float(p)
    if not 0.0 <= p <= 1.0:  # also refuses NaN
        raise ValueError(f"dropout probability p must lie in [0, 1], got {p}")
    return p


def kernel_available() -> bool:
    """Whether the compiled CPU dropout kernel is loaded."""
    return has_op("cpu_dropout", "CPU")


def draw_seed(generator=None) -> Tuple[int, int]:
    """(seed, offset) of one call: two 64-bit draws from ``generator`` (default: torch's CPU
    generator), in C++ because a tensor draw costs ~10x more than the lock and two draws."""
    return c_op("cpu_dropout_seed")(generator)


def dropout_forward(x: Tensor, p: float, seed: int, offset: int) -> Tuple[Tensor, Tensor]:
    """``(y, mask)``: y (x's shape, contiguous) = x · keep / (1 - p); mask (uint8, ceil(numel/8))
    holds keep of element ``8 b + j`` in bit j of byte b. Deterministic in (seed, offset)."""
    return c_op("cpu_dropout")(x, p, seed, offset)


def dropout_backward(dy: Tensor, mask: Tensor, p: float) -> Tensor:
    """``dx = dy · keep / (1 - p)`` with ``mask`` from :func:`dropout_forward`."""
    return c_op("cpu_dropout_backward")(dy, mask, p)


class DropoutFunction(torch.autograd.Function):
    """Dropout through the CPU kernel; saves only the bit mask for the backward."""

    @staticmethod
    def forward(ctx, x: Tensor, p: float, generator=None) -> Tensor:
        seed, offset = draw_seed(generator)
        y, mask = dropout_forward(x, p, seed, offset)
        ctx.save_for_backward(mask)
        ctx.p = p
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        (mask,) = ctx.saved_tensors
        return dropout_backward(dy, mask, ctx.p), None, None


def uses_kernel(x: Tensor) -> bool:
    """Whether :func:`dropout` runs the C++ kernel for ``x`` (else torch's dropout)."""
    return x.device.type == "cpu" and x.dtype in KERNEL_DTYPES and kernel_available()


def dropout(
    x: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, generator=None
) -> Tensor:
    """Drop-in for ``torch.nn.functional.dropout``: the C++ kernel on CPU float32 / bfloat16
    tensors, torch's dropout otherwise (and for ``inplace``)."""
    p = check_p(p)
    if not training or p == 0.0:
        return x
    if inplace or not uses_kernel(x):
        return torch.nn.functional.dropout(x, p, training=True, inplace=inplace)
    return DropoutFunction.apply(x, p, generator)


def _register_fake() -> None:
    if not kernel_available():
        return

    @torch.library.register_fake("spd_kernels_C::cpu_dropout")
    def _(x, p, seed, offset):
        return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(
            (x.numel() + 7) // 8, dtype=torch.uint8
        )

    @torch.library.register_fake("spd_kernels_C::cpu_dropout_backward")
    def _(dy, mask, p):
        return torch.empty_like(dy, memory_format=torch.contiguous_format)


_register_fake()
