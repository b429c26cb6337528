"""pytest-benchmark suites of the sparse kernels and of a pruned encoder, next to dense baselines.

Run with ``pytest benchmarks/ --benchmark-only`` (``make bench``); not part of ``pytest``'s
default run (``testpaths = ["tests"]``). Each benchmark group holds one shape/op/sparsity with
its dense baseline(s), so pytest-benchmark's table puts every sparse case next to dense.
Sizes default to what a 2-core machine runs in a few minutes; scale them with the options below.
"""

from __future__ import annotations

import pytest

from spd_kernels.profiling.grid import OPS, parse_layout, parse_sparsity, preset_shapes
from spd_kernels.profiling.timing import torch_threads


def pytest_addoption(parser):
    g = parser.getgroup("spd benchmarks")
    g.addoption("--bench-preset", default="minilm", help="shape preset: minilm, bert-base, bert-large")
    g.addoption("--bench-tokens", type=int, default=64, help="M = batch x sequence rows of the kernel shapes")
    g.addoption(
        "--bench-layouts", default="csr,bsr32", help="comma-separated layouts (csr, bsr16, bsr32x64, ...)"
    )
    g.addoption("--bench-sparsities", default="0.5,0.9", help="comma-separated sparsities in [0, 1]")
    g.addoption("--bench-ops", default=",".join(OPS), help="comma-separated ops: " + ", ".join(OPS))
    g.addoption("--bench-dtype", default="float32", help="dtype of inputs and weights")
    g.addoption("--bench-compiled", action="store_true", help="add the torch.compile dense baseline")
    g.addoption("--bench-threads", type=int, default=1, help="torch intra-op threads while benchmarking")
    g.addoption("--bench-rounds", type=int, default=10, help="timed rounds per benchmark (after 2 warm-up)")


def _csv(config, name):
    return [v.strip() for v in config.getoption(name).split(",") if v.strip()]


def pytest_generate_tests(metafunc):
    cfg = metafunc.config
    if "kernel_case" in metafunc.fixturenames:
        shapes = preset_shapes(cfg.getoption("--bench-preset"), cfg.getoption("--bench-tokens"))
        layouts = [parse_layout(v) for v in _csv(cfg, "--bench-layouts")]
        sparsities = [parse_sparsity(v) for v in _csv(cfg, "--bench-sparsities")]
        ops = _csv(cfg, "--bench-ops")
        for op in ops:
            if op not in OPS:
                raise pytest.UsageError(f"--bench-ops: unknown op {op!r}; expected {OPS}")
        dense = ["dense_eager"] + (["dense_compiled"] if cfg.getoption("--bench-compiled") else [])
        cases, ids = [], []
        for shape in shapes:
            for op in ops:
                for s in sparsities:
                    impls = [(d, None) for d in dense]
                    impls += [(i, lay) for lay in layouts for i in ("spd_kernels", "torch_sparse")]
                    for impl, lay in impls:
                        cases.append((shape, op, s, impl, lay))
                        ids.append(f"{shape.name}-{op}-s{s:g}-{impl}" + (f"-{lay.name}" if lay else ""))
        metafunc.parametrize("kernel_case", cases, ids=ids)


@pytest.fixture(autouse=True)
def _threads(request):
    with torch_threads(request.config.getoption("--bench-threads")):
        yield


@pytest.fixture
def rounds(request):
    return request.config.getoption("--bench-rounds")
