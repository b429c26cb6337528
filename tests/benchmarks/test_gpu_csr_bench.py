"""The parts of benchmarks/gpu_csr_bench.py that need no GPU: arguments, the case grid, the
bytes/flops floors, the summary, the crossover, and a whole run on the CPU with the backends
that run there (the profiler's CSV, table and plot)."""

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

from spd_kernels.profiling import CSV_COLUMNS, read_csv

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_csr_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_csr_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_csr_bench"] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("gpu_csr_bench", None)


def test_help_runs_without_a_gpu():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True)
    for flag in ("--out", "--ms", "--dtypes", "--sweep", "--backends", "--dry-run", "--hbm-gbps"):
        assert flag in out.stdout


def test_dry_run_lists_the_grid_with_floors():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--device-name", "NVIDIA H200"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # 2 dtypes x 2 M x (5 shapes + 6 extra sweep points) x 3 ops
    assert out.splitlines()[0].startswith("132 cases")
    assert "(4800.0, 67.0, 989.0)" in out
    assert "ffn-out 4096->1024" in out and "M=16384" in out and "s=0.99" in out


def test_bad_arguments_are_refused(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--backends", "cuda,magma"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--sweep", "0.5,1.0"])
    args = bench.parse_args(["--sweep", "", "--ms", "1,7"])
    assert args.sweep == [] and args.ms == [1, 7]


def test_case_grid(bench):
    cases = bench.build_cases(["bert-base"], [128], ["bf16"], 0.9, [0.5, 0.9], ["fwd"])
    assert [(c.layer, c.sparsity) for c in cases] == [
        ("attn 768->768", 0.9),
        ("ffn-in 768->3072", 0.9),
        ("ffn-out 3072->768", 0.9),
        ("ffn-in 768->3072", 0.5),  # the sweep skips the point the grid already has
    ]
    assert cases[1].k == 768 and cases[1].n == 3072 and cases[1].nnz == round(0.1 * 768 * 3072)


def test_device_peaks(bench):
    assert bench.device_peaks("NVIDIA H100 80GB HBM3") == (3350.0, 67.0, 989.0)
    assert bench.device_peaks("NVIDIA H100 PCIe")[0] == 2000.0
    assert bench.device_peaks("NVIDIA H200")[0] == 4800.0
    assert bench.device_peaks("NVIDIA A100-SXM4-80GB")[0] == 2039.0
    assert bench.device_peaks("Tesla T4") is None


def test_floors_follow_bytes_and_flops(bench):
    peaks = (3350.0, 67.0, 989.0)
    m, k, n = 16384, 768, 3072
    case = bench.Case("fwd", "bert-base", "ffn-in", m, n, k, 0.9, "bf16")
    b, f, fb, ff, fl = bench.floor_us(case, "dense", peaks)
    assert b == 2 * (m * k + m * n + n * k)
    assert f == 2 * m * n * k
    assert fb == pytest.approx(b / 3350e9 * 1e6) and ff == pytest.approx(f / 989e12 * 1e6)
    assert fl == max(fb, ff) == ff  # large M: dense is compute-bound on tensor cores
    bs, fs, fbs, ffs, fls = bench.floor_us(case, "cuda", peaks)
    assert fs == 2 * m * case.nnz and bs == 2 * (m * k + m * n) + case.nnz * 6 + (n + 1) * 4
    assert ffs == pytest.approx(fs / 67e12 * 1e6)  # the sparse kernels run on CUDA cores
    small = bench.Case("fwd", "bert-base", "ffn-in", 128, n, k, 0.9, "bf16")
    _, _, sfb, sff, sfl = bench.floor_us(small, "dense", peaks)
    assert sfl == sfb  # M = 128: dense is memory-bound
    assert math.isnan(bench.floor_us(small, "cuda", None)[4])


def _rows(bench):
    """CSV rows of the benchmark's schema: times (ms) per --backends name, op, M and sparsity."""
    rows = []
    for op in ("forward", "weight_grad"):
        for m in (128, 16384):
            for s in (0.5, 0.9):
                for name, t in TIMES:
                    if name == "dense_gather" and op != "weight_grad":
                        continue
                    impl, backend = bench.IMPLS[name]
                    t = t * (m / 128) * (1 - s + 0.1) / 1e3
                    rows.append(
                        dict(op=op, impl=impl, backend=backend, model="bert-base", layer="ffn-in 768->3072",
                             M=m, sparsity=s, dtype="bfloat16", status="ok", p50_ms=t, floor_us=1.0,
                             floor_frac=1e-3 / t)
                    )  # fmt: skip
    rows.append(dict(rows[0], impl="torch_sparse", backend="torch.sparse", status="skipped", p50_ms=""))
    return rows


TIMES = (("cuda", 10.0), ("dense", 30.0), ("cusparse", 50.0), ("dense_gather", 40.0))


def test_summary_and_markdown(bench):
    summary = bench.summarize(_rows(bench))
    assert len(summary) == 8
    s = next(x for x in summary if x["op"] == "forward" and x["m"] == 128 and x["sparsity"] == 0.9)
    assert s["speedup_vs_dense"] == pytest.approx(3.0) and s["speedup_vs_cusparse"] == pytest.approx(5.0)
    assert s["cuda_us"] == pytest.approx(2.0)
    table = bench.markdown(summary, 0.9)
    assert table.count("\n") == 2 + 4 and "3.00x" in table and "5.00x" in table


def test_run_writes_the_profiler_schema_on_cpu(bench, tmp_path):
    """run() end to end on the CPU with the backends that run there (no cuda, no compile)."""
    args = bench.parse_args(
        ["--models", "bert-base", "--ms", "4", "--dtypes", "fp32", "--sweep", "0.5", "--rep-ms", "1",
         "--backends", "reference,dense,cusparse,dense_gather", "--out", str(tmp_path)]
    )  # fmt: skip
    assert bench.run(args, device="cpu") == 0
    rows = read_csv(tmp_path / "gpu_csr_bench.csv")
    assert list(rows[0]) == list(CSV_COLUMNS) + list(bench.EXTRA)
    # 3 layers at 0.9 + the sweep point, 3 ops; dense_gather on the weight grad only
    assert len(rows) == 4 * 3 * 3 + 4
    assert {bench.bench_name(r) for r in rows} == {"reference", "dense", "cusparse", "dense_gather"}
    assert {r["op"] for r in rows} == {"forward", "input_grad", "weight_grad"}
    for r in rows:
        assert r["command"].startswith("python benchmarks/gpu_csr_bench.py --models bert-base")
        if r["impl"] == "spd_kernels":
            assert r["status"] == "ok" and float(r["max_rel_err"]) < 1e-4, r
            assert float(r["p50_ms"]) > 0 and float(r["speedup_vs_best_dense"]) > 0
        if r["status"] == "ok":
            assert int(r["bytes"]) > 0 and r["floor_us"] == ""  # a CPU has no peaks: no floor
    md = (tmp_path / "gpu_csr_summary.md").read_text()
    assert "machine:" in md and "command: `python benchmarks/gpu_csr_bench.py" in md
    assert (tmp_path / "gpu_csr_bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _sweep_rows(bench, ratios):
    """Sweep-shape rows: cuda and reference times whose ratio is ratios[(op, m)][density]."""
    model, layer = bench.SWEEP_SHAPE[0], bench.SWEEP_SHAPE[1]
    rows = []
    for (op, m), by_density in ratios.items():
        for density, ratio in by_density.items():
            for backend, t in (("cuda", 10.0 * ratio), ("reference", 10.0)):
                rows.append(
                    dict(op=op, impl="spd_kernels", backend=backend, model=model, layer=layer, M=m,
                         dtype="bfloat16", sparsity=1.0 - density, p50_ms=t, status="ok")
                )  # fmt: skip
    return rows


def test_crossover_from_the_sweep(bench, tmp_path):
    ratios = {
        ("forward", 128): {0.05: 0.5, 0.2: 0.8, 0.5: 1.2},  # crosses 1 at 0.2 + 0.2 / 0.4 · 0.3 = 0.35
        ("forward", 16384): {0.05: 0.4, 0.2: 0.6, 0.5: 1.0},  # 0.2 + 0.4 / 0.4 · 0.3 = 0.5
        ("input_grad", 128): {0.05: 1.5, 0.5: 3.0},  # never wins
        ("weight_grad", 128): {0.05: 0.2, 0.5: 0.9},  # always wins
        ("weight_grad", 7): {0.1: 0.5},  # one density: no curve
    }
    rows = _sweep_rows(bench, ratios)
    rows.append(dict(rows[0], model="bert-large"))  # another shape: ignored
    table = bench.crossover(rows)
    # keyed by the kernel ops the dispatch looks up (spd_kernels.backends.cuda.crossover_density)
    assert table == {"dds": 0.0, "dds_t": pytest.approx(0.35), "sdd": 1.0}
    source = bench.crossover_source(table, ["measured on a test"])
    path = tmp_path / "table.py"
    path.write_text(source)
    namespace = {}
    exec(compile(source, str(path), "exec"), namespace)
    assert namespace["CROSSOVER"] == {"cuda": {"csr": table}}
    assert "# measured on a test" in source
    # the file the dispatch reads has the same form
    spec = importlib.util.spec_from_file_location("_gpu_crossover", bench.CROSSOVER_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert isinstance(mod.CROSSOVER, dict)
