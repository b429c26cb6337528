"""``cuda`` backend: the CUDA C++ kernels of ``csrc/cuda`` (CSR SpMM / SDDMM)."""

from __future__ import annotations

from typing import List

import torch

from .. import _ext
from .base import Backend


class CudaBackend(Backend):
    name = "cuda"
    OPS = {"dds_t": "cuda_dds_t", "dds": "cuda_dds", "sdd": "cuda_sdd"}

    def availability(self) -> List[str]:
        if torch.version.cuda is None:
            return ["this torch build has no CUDA"]
        if not torch.cuda.is_available():
            return ["no CUDA device"]
        if _ext._C is None:
            return [f"compiled extension not loaded ({_ext.IMPORT_ERROR})"]
        missing = [c for c in self.OPS.values() if not _ext.has_op(c, "CUDA")]
        if missing:
            return [f"extension built without CUDA kernels ({', '.join(missing)} missing)"]
        return []
