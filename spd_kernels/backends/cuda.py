"""``cuda`` backend: the CUDA C++ kernels of ``csrc/cuda`` for CSR weights (block (1, 1)).

=========  =====================================  ==============================================
op         kernel                                 scheme
=========  =====================================  ==============================================
``dds_t``  ``spd_kernels_C::cuda_dds_t``          SpMM over balanced row tiles, fused bias +
                                                  activation epilogue (``csr_spmm.cu``)
``dds``    ``spd_kernels_C::cuda_dds``            the same SpMM over W's CSC metadata
``sdd``    ``spd_kernels_C::cuda_sdd``            SDDMM, one thread per nonzero (``csr_sddmm.cu``)
=========  =====================================  ==============================================

float32, float16 and bfloat16 with float32 accumulation; compute capability 8.0 or newer.

The automatic choice takes these kernels only for a weight whose density is below the crossover
measured for the op on a GPU (``_gpu_crossover.py``, written by ``benchmarks/gpu_csr_bench.py
--write-crossover``), as ``MaskedLinear`` does on the CPU; otherwise, and while nothing is
measured, the dense product (reference backend) runs the call, and :func:`dispatch_reasons` says
why. Forcing the backend (``use_backend("cuda")``) skips the crossover.
"""

from __future__ import annotations

import functools
from typing import List, Optional, Tuple

import torch

from .. import _ext
from . import _gpu_crossover
from .base import Backend, Meta

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MIN_CAPABILITY = (8, 0)


def crossover_density(op: str, layout: str = "csr") -> float:
    """Density below which the cuda kernel of ``op`` beats the dense product; 0.0 if unmeasured."""
    return float(_gpu_crossover.CROSSOVER.get("cuda", {}).get(layout, {}).get(op, 0.0))


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> Tuple[int, int]:
    return torch.cuda.get_device_capability(index)


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

    def call_reasons(self, op, device, dtype, block):
        reasons = []
        if device.type != "cuda":
            reasons.append(f"runs on CUDA tensors only, got device {device}")
        elif torch.cuda.is_available():
            index = device.index if device.index is not None else torch.cuda.current_device()
            cap = _capability(index)
            if cap < MIN_CAPABILITY:
                reasons.append(
                    f"needs compute capability >= {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}, "
                    f"device {device} has {cap[0]}.{cap[1]}"
                )
        if dtype not in DTYPES:
            reasons.append(f"dtype {dtype} not supported (float32, float16, bfloat16)")
        if tuple(block) != (1, 1):
            reasons.append(
                f"CSR weights only (block (1, 1)), got block {tuple(block)}; block-sparse weights "
                "run on the triton backend"
            )
        return reasons

    def preference_reasons(self, op, device, dtype, block, density):
        limit = crossover_density(op)
        if limit <= 0.0:
            return [
                f"no measured crossover for cuda csr {op} (benchmarks/gpu_csr_bench.py "
                "--write-crossover): the dense product runs it"
            ]
        if density >= limit:
            return [
                f"density {density:.3f} is not below the measured cuda csr {op} crossover "
                f"{limit:.3f}: the dense product is faster"
            ]
        return []

    def dds_t(
        self,
        x: torch.Tensor,
        values: torch.Tensor,
        meta: Meta,
        bias: Optional[torch.Tensor],
        activation: str,
        save_preact: bool,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        return _ext.c_op("cuda_dds_t")(x, values, *meta, bias, activation, save_preact)

    def dds(self, dy: torch.Tensor, values: torch.Tensor, meta: Meta) -> torch.Tensor:
        return _ext.c_op("cuda_dds")(dy, values, *meta)

    def sdd(self, dy: torch.Tensor, x: torch.Tensor, values: torch.Tensor, meta: Meta) -> torch.Tensor:
        return _ext.c_op("cuda_sdd")(dy, x, values, *meta)
