"""Hardware floors of the CSR products on a GPU: the least time a kernel can take, from the
bytes it must move (HBM bandwidth) and the flops it must do (CUDA-core FP32 peak for the sparse
kernels, tensor-core peak for dense GEMMs), so a measured time can be read against what the
hardware allows. Datasheet peaks of the common data-centre GPUs; others are passed in.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

Peaks = Tuple[float, float, float]  # HBM GB/s, CUDA-core FP32 TFLOPS, tensor-core bf16/fp16 TFLOPS

# name match -> peaks, first match wins (datasheet values)
DEVICE_PEAKS: List[Tuple[Tuple[str, ...], Peaks]] = [
    (("H200",), (4800.0, 67.0, 989.0)),
    (("H100", "NVL"), (3900.0, 60.0, 835.0)),
    (("H100", "PCIe"), (2000.0, 51.0, 756.0)),
    (("H100",), (3350.0, 67.0, 989.0)),  # SXM5 ("NVIDIA H100 80GB HBM3")
    (("A100", "80GB", "PCIe"), (1935.0, 19.5, 312.0)),
    (("A100", "80GB"), (2039.0, 19.5, 312.0)),
    (("A100",), (1555.0, 19.5, 312.0)),
]
ELEMENT_SIZE = {"bfloat16": 2, "float16": 2, "float32": 4}


def device_peaks(name: str) -> Optional[Peaks]:
    """(HBM GB/s, FP32 TFLOPS, tensor-core TFLOPS) for a device name, None if unknown."""
    for keys, peaks in DEVICE_PEAKS:
        if all(k in name for k in keys):
            return peaks
    return None


def min_bytes(op: str, kind: str, m: int, n: int, k: int, nnz: int, e: int) -> int:
    """Bytes a kernel must move at least: dense operands once, the weight once.
    kind "sparse": CSR values + int32 indices (+ offsets, + the CSC permutation for the input
    grad, + the COO rows for the weight grad); kind "dense": the dense (N, K) weight."""
    acts = m * k * e + m * n * e  # x and y, dy and dx, dy and x
    if kind == "dense":
        return acts + n * k * e
    if op == "forward":
        return acts + nnz * (e + 4) + (n + 1) * 4
    if op == "input_grad":
        return acts + nnz * (e + 8) + (k + 1) * 4
    return acts + nnz * (e + 8)  # weight grad: out values + rows + cols


def flops(kind: str, m: int, n: int, k: int, nnz: int) -> int:
    return 2 * m * (nnz if kind == "sparse" else n * k)


def floor_us(
    op: str, kind: str, dtype: str, m: int, n: int, k: int, nnz: int, peaks: Optional[Peaks]
) -> Tuple[int, int, float, float, float]:
    """(bytes, flops, bytes floor µs, flops floor µs, floor µs) of ``op`` (forward, input_grad,
    weight_grad) for a ``kind`` "sparse" kernel (CUDA cores) or "dense" GEMM (tensor cores,
    CUDA cores for float32); NaN floors when ``peaks`` is None."""
    b = min_bytes(op, kind, m, n, k, nnz, ELEMENT_SIZE[dtype])
    f = flops(kind, m, n, k, nnz)
    if peaks is None:
        return b, f, math.nan, math.nan, math.nan
    hbm, fp32, tc = peaks
    fb = b / (hbm * 1e9) * 1e6
    peak = fp32 if kind == "sparse" else (tc if dtype != "float32" else fp32)
    ff = f / (peak * 1e12) * 1e6
    return b, f, fb, ff, max(fb, ff)
