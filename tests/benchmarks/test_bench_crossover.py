"""benchmarks/bench_crossover.py: the dispatch table is what the committed crossover.csv gives,
and the table arithmetic on made-up rows."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_crossover  # noqa: E402

from spd_kernels.nn import _crossover_table  # noqa: E402
from spd_kernels.profiling.report import read_csv  # noqa: E402


def test_committed_table_is_what_the_committed_csv_gives():
    rows = read_csv(str(ROOT / "benchmarks" / "results" / "crossover.csv"))
    assert bench_crossover.table_from_rows(rows) == _crossover_table.CROSSOVER


def _pair(backend, density, dense_ms, sparse_ms, n=64, k=64, mode="train"):
    common = dict(op=f"masked_linear_{mode}", layout="bsr32", N=str(n), K=str(k), M="128",
                  density=str(density), status="ok")  # fmt: skip
    return [
        dict(common, impl="dense_eager", backend="aten", p50_ms=str(dense_ms)),
        dict(common, impl="spd_kernels", backend=backend, p50_ms=str(sparse_ms)),
    ]


def test_crossing_per_shape_then_the_minimum():
    rows = []
    # shape 1: sparse/dense 0.5 at 0.2, 1.5 at 0.4 -> crosses at 0.3
    rows += _pair("cpu", 0.2, 10, 5) + _pair("cpu", 0.4, 10, 15)
    # shape 2: 0.5 at 0.2, 1.0 at 0.3 -> crosses at 0.3 exactly; shape 3 never loses -> 1.0
    rows += _pair("cpu", 0.2, 10, 5, n=128) + _pair("cpu", 0.3, 10, 10, n=128)
    rows += _pair("cpu", 0.2, 10, 5, n=256)
    # a backend that never wins, and an unpaired sparse row that must be ignored
    rows += _pair("reference", 0.2, 10, 30)
    rows += [dict(_pair("cpu", 0.9, 1, 1)[1])]
    table = bench_crossover.table_from_rows(rows)
    assert table == {"cpu": {"bsr32": {"train": 0.3}}, "reference": {"bsr32": {"train": 0.0}}}
