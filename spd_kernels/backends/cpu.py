"""``cpu`` backend: the C++/OpenMP kernels of ``csrc/cpu`` (via ``torch.ops.spd_kernels_C``).

float32 (and bfloat16 with float32 accumulation) on CPU tensors; CSR (block (1, 1)), BSR
with bm and bk multiples of 8 (16x16, 32x32, 64x64, 32x64, ...), and small blocks with both
sides at most 32 (column vectors 8x1, 16x1, ... with their own kernels; 4x4, 2x1, ... on the
CSR kernels through their element view). AVX2 + FMA register-tiled
micro-kernels, OpenMP over independent output tiles (``torch.get_num_threads()`` threads);
results do not depend on the thread count.
"""

from __future__ import annotations

from typing import List

import torch

from .. import _ext
from .base import Backend

DTYPES = (torch.float32, torch.bfloat16)


def block_supported(block) -> bool:
    """Both block sides multiples of 8 (the AVX2 tile width), or both at most 32 (CSR included)."""
    bm, bk = block
    return (bm % 8 == 0 and bk % 8 == 0) or (bm <= 32 and bk <= 32)


class CpuBackend(Backend):
    name = "cpu"
    OPS = {"dds_t": "cpu_dds_t", "dds": "cpu_dds", "sdd": "cpu_sdd"}

    def availability(self) -> List[str]:
        if _ext._C is None:
            return [f"compiled extension not loaded ({_ext.IMPORT_ERROR})"]
        missing = [c for c in self.OPS.values() if not _ext.has_op(c, "CPU")]
        if missing:
            return [
                f"extension has no CPU kernels ({', '.join(missing)} not registered; "
                "they need an x86-64 build with AVX2 and FMA)"
            ]
        cap = torch.backends.cpu.get_cpu_capability()
        if cap not in ("AVX2", "AVX512"):
            return [f"this CPU lacks AVX2/FMA (torch reports capability {cap})"]
        return []

    def call_reasons(self, op, device, dtype, block):
        reasons = []
        if device.type != "cpu":
            reasons.append(f"runs on CPU tensors only, got device {device}")
        if dtype not in DTYPES:
            reasons.append(f"dtype {dtype} not supported (float32, bfloat16)")
        if not block_supported(block):
            reasons.append(
                f"block {tuple(block)} not supported (bm and bk multiples of 8, or both at most 32)"
            )
        return reasons

    def dds_t(self, x, values, meta, bias, activation, save_preact):
        return _ext.c_op("cpu_dds_t")(x, values, *meta, bias, activation, save_preact)

    def dds(self, dy, values, meta):
        return _ext.c_op("cpu_dds")(dy, values, *meta)

    def sdd(self, dy, x, values, meta):
        return _ext.c_op("cpu_sdd")(dy, x, values, *meta)
