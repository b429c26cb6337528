"""Kernel benchmarks: forward, input grad, weight grad, forward+backward per shape and sparsity.

One group per (shape, op, sparsity): dense eager (and compiled with --bench-compiled),
spd_kernels and torch.sparse for each layout. Cases torch.sparse cannot run are skipped with
the reason. Every sparse result is checked against the float64 dense product before timing.
"""

from __future__ import annotations

import functools

import pytest
import torch

from spd_kernels.profiling.grid import parse_dtype
from spd_kernels.profiling.runner import (
    Unsupported,
    check,
    dense_bench,
    make_inputs,
    make_sparse,
    reference,
    spd_bench,
    torch_sparse_bench,
)


@functools.lru_cache(maxsize=8)
def _inputs(shape, dtype):
    return make_inputs(shape, dtype, torch.device("cpu"))


@functools.lru_cache(maxsize=32)
def _sparse(shape, dtype, layout, sparsity):
    return make_sparse(_inputs(shape, dtype).w, layout, sparsity)


def test_kernels(benchmark, kernel_case, rounds, request):
    shape, op, sparsity, impl, layout = kernel_case
    dtype = parse_dtype(request.config.getoption("--bench-dtype"))
    inp = _inputs(shape, dtype)
    benchmark.group = f"{shape.name} {shape.M}x{shape.N}x{shape.K} | {op} | sparsity {sparsity:g}"
    benchmark.extra_info.update(
        op=op, impl=impl, sparsity=sparsity, dtype=str(dtype), M=shape.M, N=shape.N, K=shape.K
    )
    if impl.startswith("dense"):
        bench = dense_bench(op, inp, compiled=impl == "dense_compiled")
    else:
        sp = _sparse(shape, dtype, layout, sparsity)
        benchmark.extra_info.update(layout=layout.name, density=sp.W.density)
        try:
            bench = (
                spd_bench(op, inp, sp.W, "auto")
                if impl == "spd_kernels"
                else torch_sparse_bench(op, inp, sp.W)
            )
        except Unsupported as exc:
            pytest.skip(str(exc))
        bad = check(bench.canon(bench.fn()), reference(op, inp, sp), dtype)
        assert bad is None, f"{impl} {layout.name} {op}: {bad}"
    benchmark.extra_info["note"] = bench.note
    benchmark.pedantic(bench.fn, rounds=rounds, warmup_rounds=2, iterations=1)
