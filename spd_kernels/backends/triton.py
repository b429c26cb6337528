"""``triton`` backend: block-sparse Triton kernels (``spd_kernels/triton_ops/bsr_linear.py``).

Runs BSR weights (block dims powers of two from 16 to 128, e.g. 16x16, 32x32, 64x64, 32x64) in
float16, bfloat16 and float32 on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``
(how CI checks the kernels). CSR (block (1, 1)) is left to the ``cuda`` backend. Triton is
imported on first use, not when ``spd_kernels`` is imported.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import List, Optional

import torch

from .base import Backend

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_BLOCK, MAX_BLOCK = 16, 128  # tl.dot needs >= 16; larger tiles exceed registers/shared memory


def interpreter_on() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for the Triton interpreter (as triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> Optional[str]:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # a broken install must not break `import spd_kernels`
        return f"triton is not importable ({type(exc).__name__}: {exc})"
    return None


def _block_reasons(block) -> List[str]:
    bm, bk = block
    if (bm, bk) == (1, 1):
        return ["CSR layout (block (1, 1)) is not supported: BSR blocks only (the cuda backend runs CSR)"]
    bad = [b for b in (bm, bk) if b < MIN_BLOCK or b > MAX_BLOCK or b & (b - 1)]
    if bad:
        return [
            f"block {(bm, bk)} not supported: block dims must be powers of two in "
            f"[{MIN_BLOCK}, {MAX_BLOCK}] (e.g. 16x16, 32x32, 64x64, 32x64)"
        ]
    return []


class TritonBackend(Backend):
    name = "triton"

    def availability(self) -> List[str]:
        if not torch.cuda.is_available() and not interpreter_on():
            return ["no CUDA device (set TRITON_INTERPRET=1 to run it on the CPU interpreter)"]
        err = _triton_import_error()
        return [err] if err else []

    def call_reasons(self, op, device, dtype, block):
        reasons = []
        if device.type == "cuda":
            major, minor = torch.cuda.get_device_capability(device)
            if (major, minor) < (7, 0):
                reasons.append(f"compute capability {major}.{minor} < 7.0 (no tensor cores for tl.dot)")
            elif dtype == torch.bfloat16 and major < 8:
                reasons.append(f"bfloat16 needs compute capability >= 8.0, got {major}.{minor}")
        elif device.type == "cpu":
            if not interpreter_on():
                reasons.append("CPU tensors run only under the Triton interpreter (TRITON_INTERPRET=1)")
        else:
            reasons.append(f"device {device} not supported (CUDA, or CPU under TRITON_INTERPRET=1)")
        if dtype not in DTYPES:
            reasons.append(f"dtype {dtype} not supported (float16, bfloat16, float32)")
        reasons += _block_reasons(block)
        return reasons

    @staticmethod
    def _kernels(device: torch.device):
        from ..triton_ops import load

        # CPU tensors need the interpreted kernels whatever TRITON_INTERPRET was at import time
        return load("bsr_linear", interpret=device.type != "cuda")

    def dds_t(self, x, values, meta, bias, activation, save_preact):
        return self._kernels(x.device).bsr_dds_t(x, values, meta, bias, activation, save_preact)

    def dds(self, dy, values, meta):
        return self._kernels(dy.device).bsr_dds(dy, values, meta)

    def sdd(self, dy, x, values, meta):
        return self._kernels(dy.device).bsr_sdd(dy, x, values, meta)
