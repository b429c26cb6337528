"""Side-by-side timing: settle pauses, blocks of fast calls, the kernel grid timed per (shape, op)
with dense and sparse interleaved, ONNX Runtime's spinning engines."""

import time

import pytest
import torch

from spd_kernels.profiling import ProfileSpec, run_profile
from spd_kernels.profiling import runner as runner_mod
from spd_kernels.profiling.engines import ENGINES, IMPL_OF, ORT_ENGINES, check_engines
from spd_kernels.profiling.report import DENSE_IMPLS, add_speedups
from spd_kernels.profiling.timing import time_interleaved


def test_settle_pauses_only_between_implementations(monkeypatch):
    events = []
    monkeypatch.setattr(time, "sleep", lambda s: events.append(("sleep", s)))
    out = time_interleaved(
        {"a": lambda: events.append("a"), "b": lambda: events.append("b")},
        rounds=2, calls=2, warmup=1, settle=0.25,
    )  # fmt: skip
    assert events == [("sleep", 0.25), "a", ("sleep", 0.25), "b"] + [
        ("sleep", 0.25), "a", "a", ("sleep", 0.25), "b", "b",
    ] * 2  # fmt: skip
    assert out["a"].samples == 4 and "settle 250 ms" in out["a"].method


def test_fast_calls_are_averaged_over_a_block():
    n = {"fast": 0, "slow": 0}

    def fast():
        n["fast"] += 1

    def slow():
        n["slow"] += 1
        time.sleep(0.004)

    out = time_interleaved({"fast": fast, "slow": slow}, rounds=3, calls=1, warmup=1, min_block_time=0.002)
    assert n["slow"] == 1 + 3  # 4 ms > the block: one call a sample
    assert n["fast"] > 1 + 3 * 10  # microseconds: many calls a sample
    assert out["fast"].samples == out["slow"].samples == 3
    assert out["fast"].p50 < 1e-4 < 3e-3 < out["slow"].p50
    with pytest.raises(ValueError, match="settle"):
        time_interleaved({"a": fast}, settle=-1)


def test_kernel_grid_times_dense_beside_its_sparse_cases(monkeypatch):
    groups = []
    real = runner_mod.time_interleaved

    def spy(fns, **kw):
        groups.append((len(fns), kw["rounds"]))
        return real(fns, **kw)

    monkeypatch.setattr(runner_mod, "time_interleaved", spy)
    spec = ProfileSpec(
        shapes=["8,32,32"], ops=["forward", "weight_grad"], layouts=["csr", "bsr16"],
        sparsities=[0.5, 0.9], baselines=["eager"], backend="reference", min_samples=3,
        min_run_time=0.003, warmup=1, interleave=True,
    )  # fmt: skip
    rows = run_profile(spec, progress=False)
    # one interleaved group per op: the dense row and the 2 x 2 sparse cases
    assert groups == [(5, 3), (5, 3)]
    assert all(r["status"] == "ok" and int(r["samples"]) == 3 for r in rows)
    assert [r["impl"] for r in rows[:5]] == ["dense_eager"] + ["spd_kernels"] * 4
    assert all(r["speedup_vs_best_dense"] != "" for r in rows)


def test_spinning_ort_engines_are_dense_engines():
    assert set(ORT_ENGINES) <= set(ENGINES)
    assert {IMPL_OF[e] for e in ORT_ENGINES} <= set(DENSE_IMPLS)
    assert check_engines(["onnxruntime-spin", "eager"]) == ["onnxruntime-spin", "eager"]
    # the faster of spinning off / on is the best dense
    rows = [
        {"op": "model_forward", "dtype": "float32", "shape": "m", "M": 1, "N": 0, "K": 0, "impl": i,
         "status": "ok", "p50_ms": p}
        for i, p in (("onnxruntime", 10.0), ("onnxruntime_spin", 8.0), ("spd_kernels", 2.0))
    ]  # fmt: skip
    add_speedups(rows)
    assert rows[2]["speedup_vs_best_dense"] == pytest.approx(4.0)


def test_ort_spin_sessions(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from spd_kernels.profiling.engines import onnxruntime_engines

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.lin(x)

    twin = Tiny().eval()
    x = torch.randn(2, 8)
    engines = onnxruntime_engines(twin, {"x": x}, ["onnxruntime", "onnxruntime-spin"], 1, str(tmp_path))
    assert [e.name for e in engines] == ["onnxruntime", "onnxruntime-spin"]
    assert "spinning off" in engines[0].note and "spinning on" in engines[1].note
    for e in engines:
        torch.testing.assert_close(e.fn(), twin(x).detach(), rtol=1e-5, atol=1e-5)
