"""The parts of benchmarks/gpu_csr_bench.py that need no GPU: arguments, the case grid, the
bytes/flops floors, quantiles, the summary, CSV and plots (the timing itself runs on a GPU)."""

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_quantiles(bench):
    p50, p20, p80 = bench.quantiles([0.004, 0.001, 0.002, 0.003, 0.005])  # ms
    assert (p50, p20, p80) == pytest.approx((3.0, 1.8, 4.2))


TIMES = (("cuda", 10.0), ("dense", 30.0), ("cusparse", 50.0), ("dense_gather", 40.0))


def _rows(bench):
    rows = []
    for op in ("fwd", "wgrad"):
        for m in (128, 16384):
            for s in (0.5, 0.9):
                for backend, t in TIMES:
                    if backend == "dense_gather" and op != "wgrad":
                        continue
                    case = bench.Case(op, "bert-base", "ffn-in 768->3072", m, 3072, 768, s, "bf16")
                    b, f, fb, ff, fl = bench.floor_us(case, backend, (3350.0, 67.0, 989.0))
                    row = dict(case.__dict__, backend=backend, nnz=case.nnz, metric="time_us", status="ok")
                    t = t * (m / 128) * (1 - s + 0.1)
                    row.update(p50=t, p20=0.9 * t, p80=1.1 * t, reps=10, bytes=b, flops=f)
                    row.update(floor_bytes_us=fb, floor_flops_us=ff, floor_us=fl, floor_frac=fl / t)
                    rows.append(row)
    rows.append(dict(rows[0], backend="cusparse", status="unsupported: no bf16", p50=""))
    return rows


def test_summary_markdown_csv_and_plots(bench, tmp_path):
    rows = _rows(bench)
    summary = bench.summarize(rows)
    assert len(summary) == 8
    s = next(x for x in summary if x["op"] == "fwd" and x["m"] == 128 and x["sparsity"] == 0.9)
    assert s["speedup_vs_dense"] == pytest.approx(3.0) and s["speedup_vs_cusparse"] == pytest.approx(5.0)
    table = bench.markdown(summary, 0.9)
    assert table.count("\n") == 2 + 4 and "3.00x" in table and "5.00x" in table
    csv_path = tmp_path / "bench.csv"
    bench.write_csv(csv_path, rows, bench.FIELDS)
    back = bench.read_csv(csv_path)
    assert len(back) == len(rows) and list(back[0]) == bench.FIELDS
    assert bench.summarize(back)[0]["cuda_us"] == pytest.approx(summary[0]["cuda_us"])
    written = bench.plot(csv_path, tmp_path / "bars.png", tmp_path / "sweep.png")
    assert written == [tmp_path / "bars.png", tmp_path / "sweep.png"]
    for p in written:
        assert p.stat().st_size > 10_000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _sweep_rows(bench, ratios):
    """Sweep-shape rows: cuda and reference times whose ratio is ratios[(op, m)][density]."""
    model, layer = bench.SWEEP_SHAPE[0], bench.SWEEP_SHAPE[1]
    rows = []
    for (op, m), by_density in ratios.items():
        for density, ratio in by_density.items():
            for backend, t in (("cuda", 10.0 * ratio), ("reference", 10.0)):
                rows.append(
                    dict(op=op, model=model, layer=layer, m=m, dtype="bf16", sparsity=1.0 - density,
                         backend=backend, p50=t, status="ok")
                )  # fmt: skip
    return rows


def test_crossover_from_the_sweep(bench, tmp_path):
    ratios = {
        ("fwd", 128): {0.05: 0.5, 0.2: 0.8, 0.5: 1.2},  # crosses 1 at 0.2 + 0.2 / 0.4 · 0.3 = 0.35
        ("fwd", 16384): {0.05: 0.4, 0.2: 0.6, 0.5: 1.0},  # 0.2 + 0.4 / 0.4 · 0.3 = 0.5
        ("dgrad", 128): {0.05: 1.5, 0.5: 3.0},  # never wins
        ("wgrad", 128): {0.05: 0.2, 0.5: 0.9},  # always wins
        ("fwd_single", 128): {0.1: 0.5},  # one density: no crossover
    }
    rows = _sweep_rows(bench, ratios)
    rows.append(dict(rows[0], model="bert-large"))  # another shape: ignored
    table = bench.crossover(rows)
    assert table == {"dgrad": 0.0, "fwd": pytest.approx(0.35), "wgrad": 1.0}
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
