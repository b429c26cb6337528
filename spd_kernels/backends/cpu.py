"""``cpu`` backend: the C++/OpenMP kernels of ``csrc/cpu`` (via ``torch.ops.spd_kernels_C``)."""

from __future__ import annotations

from typing import List

import torch

from .. import _ext
from .base import Backend


class CpuBackend(Backend):
    name = "cpu"
    OPS = {"dds_t": "cpu_dds_t", "dds": "cpu_dds", "sdd": "cpu_sdd"}

    def availability(self) -> List[str]:
        if _ext._C is None:
            return [f"compiled extension not loaded ({_ext.IMPORT_ERROR})"]
        missing = [c for c in self.OPS.values() if not _ext.has_op(c, "CPU")]
        if missing:
            return [f"extension has no CPU kernels ({', '.join(missing)} not registered)"]
        return []

    def call_reasons(self, op, device, dtype, block):
        reasons = []
        if device.type != "cpu":
            reasons.append(f"runs on CPU tensors only, got device {device}")
        if dtype not in (torch.float32, torch.bfloat16):
            reasons.append(f"dtype {dtype} not supported (float32, bfloat16)")
        return reasons
