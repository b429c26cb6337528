"""CSV schema, the speedup arithmetic, the markdown table and the plot."""

import math

import pytest
import torch

from spd_kernels.profiling import CSV_COLUMNS, ProfileSpec, add_speedups, read_csv, run_profile, write_csv
from spd_kernels.profiling.grid import OPS
from spd_kernels.profiling.report import markdown_report, plot_speedup
from spd_kernels.profiling.timing import Timing


def _row(impl, p50, op="forward", shape="s", M=8, N=64, K=64, status="ok", layout="csr", sparsity=0.5):
    dense = impl.startswith("dense")
    return dict(
        op=op, impl=impl, dtype="float32", shape=shape, M=M, N=N, K=K, p50_ms=p50, status=status,
        layout="dense" if dense else layout, sparsity="" if dense else sparsity,
    )  # fmt: skip


def test_speedup_is_best_dense_p50_over_p50():
    rows = [
        _row("dense_eager", 2.0),
        _row("dense_compiled", 1.0),
        _row("spd_kernels", 0.25),
        _row("torch_sparse", 4.0),
        _row("torch_sparse", "", status="skipped"),
        # another shape has its own dense baseline: eager only
        _row("dense_eager", 3.0, shape="t", N=128),
        _row("spd_kernels", 1.5, shape="t", N=128),
        # another op without any dense row: no speedup
        _row("spd_kernels", 1.0, op="input_grad"),
    ]
    add_speedups(rows)
    sp = [r["speedup_vs_best_dense"] for r in rows]
    assert sp[0] == pytest.approx(0.5)  # eager vs compiled
    assert sp[1] == pytest.approx(1.0)
    assert sp[2] == pytest.approx(4.0)  # 1.0 / 0.25, vs compiled (the faster dense)
    assert sp[3] == pytest.approx(0.25)
    assert sp[4] == ""
    assert sp[5] == pytest.approx(1.0) and sp[6] == pytest.approx(2.0)
    assert sp[7] == ""


def test_failed_dense_rows_do_not_count():
    rows = [_row("dense_eager", 2.0), _row("dense_compiled", 0.1, status="error"), _row("spd_kernels", 1.0)]
    add_speedups(rows)
    assert rows[2]["speedup_vs_best_dense"] == pytest.approx(2.0)


class _FakeTimer:
    """Deterministic timings: p50 = 1 ms for dense, 0.5 ms for everything else."""

    def __init__(self):
        self.calls = 0

    def __call__(self, fn, **kw):
        self.calls += 1
        fn()
        p = 1e-3 if getattr(fn, "__qualname__", "").startswith("dense_bench") else 5e-4
        return Timing(0.9 * p, p, 1.1 * p, 5, "fake")


@pytest.fixture(scope="module")
def tiny_rows():
    spec = ProfileSpec(
        shapes=["8,32,64"],
        layouts=["csr", "bsr16"],
        sparsities=[0.0, 0.5, 1.0],
        baselines=["eager", "torch-sparse"],
    )
    torch.manual_seed(0)
    timer = _FakeTimer()
    rows = run_profile(spec, timer=timer, progress=False)
    return rows, timer


def test_csv_schema_round_trip(tmp_path, tiny_rows):
    rows, timer = tiny_rows
    path = write_csv(rows, str(tmp_path / "p.csv"))
    with open(path) as f:
        assert f.readline().strip().split(",") == list(CSV_COLUMNS)
    back = read_csv(path)
    assert len(back) == len(rows) == 4 * 1 + 4 * 2 * 3 * 2  # dense per op + (spd, torch.sparse) per case
    assert sum(r["status"] == "ok" for r in back) == timer.calls
    best = {r["op"]: float(r["p50_ms"]) for r in back if r["impl"] == "dense_eager"}
    for r in back:
        assert r["op"] in OPS
        assert r["impl"] in ("spd_kernels", "torch_sparse", "dense_eager")
        assert r["status"] in ("ok", "skipped"), r
        assert (r["M"], r["N"], r["K"], r["dtype"]) == ("8", "32", "64", "float32")
        assert r["torch"] == torch.__version__ and r["device"] and r["timestamp"] and r["triton"]
        if r["impl"] == "spd_kernels":
            assert r["status"] == "ok" and r["backend"]
            assert r["block"] == {"csr": "1x1", "bsr16": "16x16"}[r["layout"]]
            assert float(r["density"]) == pytest.approx(1 - float(r["sparsity"]), abs=1e-6)
        if r["status"] == "ok":
            p20, p50, p80 = float(r["p20_ms"]), float(r["p50_ms"]), float(r["p80_ms"])
            assert p20 <= p50 <= p80 and int(r["samples"]) >= 1
            assert float(r["speedup_vs_best_dense"]) == pytest.approx(best[r["op"]] / p50, rel=1e-5)
        else:
            assert r["p50_ms"] == "" and r["speedup_vs_best_dense"] == "" and r["note"]


def test_torch_sparse_gaps_are_recorded_with_the_reason(tiny_rows):
    rows, _ = tiny_rows
    bsr_wgrad = [
        r for r in rows if r["impl"] == "torch_sparse" and r["layout"] == "bsr16" and r["op"] == "weight_grad"
    ]
    assert bsr_wgrad and all(
        r["status"] == "skipped" and "torch.sparse has no" in r["note"] for r in bsr_wgrad
    )
    csr_fwd = [
        r for r in rows if r["impl"] == "torch_sparse" and r["layout"] == "csr" and r["op"] == "forward"
    ]
    assert all(r["status"] == "ok" for r in csr_fwd)


def test_markdown_has_machine_line_command_and_notes(tiny_rows):
    rows, _ = tiny_rows
    md = markdown_report(rows, "spd profile --shapes 8,32,64")
    assert "machine:" in md and torch.__version__ in md
    assert "`spd profile --shapes 8,32,64`" in md
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(lines) == 1 + 4 * 2 * 3  # header + one per (op, layout, sparsity)
    assert "| forward | custom | 8×32×64 | float32 | bsr16 | 0.5 | 0.5 | 0.5 | 1 | – | 2.00× | 2.00× |" in md
    assert "skipped [1]" in md and "\n[1] skipped: torch.sparse has no" in md


def test_plot_is_written(tmp_path, tiny_rows):
    rows, _ = tiny_rows
    path = plot_speedup(rows, str(tmp_path / "sub" / "speedup.png"))
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.shape[0] > 400 and img.shape[1] > 600
    assert float(img[..., :3].std()) > 0.01  # not a blank canvas


def test_plot_without_successful_rows(tmp_path):
    rows = [_row("spd_kernels", "", status="error")]
    rows[0].update(note="boom")
    add_speedups(rows)
    path = plot_speedup(rows, str(tmp_path / "empty.png"))
    assert open(path, "rb").read(4) == b"\x89PNG"
    assert not math.isnan(0.0)
