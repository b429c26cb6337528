"""The runner on real kernels: the correctness check before timing, error/mismatch rows."""

import pytest
import torch

from spd_kernels import ops as sk_ops
from spd_kernels.profiling import ProfileSpec, run_profile
from spd_kernels.profiling.grid import Shape, parse_layout
from spd_kernels.profiling.runner import make_inputs, make_sparse, torch_sparse_weight
from spd_kernels.profiling.timing import Timing


def _fake_timer(fn, **kw):
    fn()
    return Timing(1e-3, 1e-3, 1e-3, 1, "fake")


def test_sparsity_pattern_and_torch_sparse_copy_match():
    inp = make_inputs(Shape("s", 4, 64, 96), torch.float32, torch.device("cpu"))
    for layout in ("csr", "bsr32", "bsr16x32"):
        lay = parse_layout(layout)
        sp = make_sparse(inp.w, lay, 0.75)
        nb = (64 // lay.block[0]) * (96 // lay.block[1])
        assert sp.W.nnz_blocks == round(0.25 * nb)
        assert torch.equal(sp.dense, torch.where(sp.mask, inp.w, torch.zeros(())))
        assert torch.equal(torch_sparse_weight(sp.W).to_dense(), sp.dense)
        assert torch.equal(torch_sparse_weight(sp.W, transposed=True).to_dense(), sp.dense.t())


def test_every_case_passes_the_float64_check():
    spec = ProfileSpec(
        shapes=["5,32,48"],
        layouts=["csr", "bsr16"],
        sparsities=[0.0, 0.9, 1.0],
        dtypes=["float32", "float64"],
        baselines=["torch-sparse"],
    )
    rows = run_profile(spec, timer=_fake_timer, progress=False)
    ours = [r for r in rows if r["impl"] == "spd_kernels"]
    assert len(ours) == 4 * 2 * 3 * 2
    assert all(r["status"] == "ok" for r in ours), [r["note"] for r in ours if r["status"] != "ok"]
    assert all(r["speedup_vs_best_dense"] == "" for r in rows)  # no dense baseline asked for


def test_wrong_results_are_flagged_not_timed(monkeypatch):
    timed = []

    def timer(fn, **kw):
        timed.append(fn)
        return Timing(1e-3, 1e-3, 1e-3, 1, "fake")

    real = sk_ops.sparse_input_grad
    monkeypatch.setattr(sk_ops, "sparse_input_grad", lambda dy, W: real(dy, W) * 1.01)
    spec = ProfileSpec(shapes=["4,32,32"], layouts=["bsr16"], sparsities=[0.5], ops=["input_grad", "forward"],
                       baselines=[])  # fmt: skip
    rows = run_profile(spec, timer=timer, progress=False)
    by_op = {r["op"]: r for r in rows}
    assert by_op["input_grad"]["status"] == "mismatch" and "max error" in by_op["input_grad"]["note"]
    assert by_op["forward"]["status"] == "ok"
    assert len(timed) == 1


def test_a_crashing_kernel_is_an_error_row(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(sk_ops, "sparse_weight_grad", boom)
    spec = ProfileSpec(
        shapes=["4,32,32"], layouts=["csr"], sparsities=[0.5], ops=["weight_grad"], baselines=["eager"]
    )
    rows = run_profile(spec, timer=_fake_timer, progress=False)
    ours = next(r for r in rows if r["impl"] == "spd_kernels")
    assert ours["status"] == "error" and "kernel exploded" in ours["note"]
    assert next(r for r in rows if r["impl"] == "dense_eager")["status"] == "ok"


def test_forced_backend_is_active_while_timing(monkeypatch):
    from spd_kernels.backends import forced_backend

    seen = []

    def timer(fn, **kw):
        seen.append(forced_backend())
        return Timing(1e-3, 1e-3, 1e-3, 1, "fake")

    spec = ProfileSpec(shapes=["4,32,32"], layouts=["csr"], sparsities=[0.5], ops=["forward"], baselines=[],
                       backend="reference")  # fmt: skip
    rows = run_profile(spec, timer=timer, progress=False)
    assert seen == ["reference"] and rows[0]["backend"] == "reference"


@pytest.mark.parametrize("op", ["forward", "fwd_bwd"])
def test_compiled_dense_baseline_runs(op):
    spec = ProfileSpec(
        shapes=["4,32,32"], layouts=["csr"], sparsities=[0.5], ops=[op], baselines=["compiled"]
    )
    rows = run_profile(spec, timer=_fake_timer, progress=False)
    comp = next(r for r in rows if r["impl"] == "dense_compiled")
    assert comp["status"] == "ok" and comp["backend"] == "inductor", comp["note"]
