"""End-to-end model timing: dense twin, profile_model on a tiny in-memory BERT, the loader hook."""

import pytest
import torch
from torch import nn

import spd_kernels as sk
from spd_kernels.nn import MaskedLinear, topk_mask
from spd_kernels.profiling.model import (
    dense_twin,
    example_inputs,
    linear_sparsity,
    load_pruned_model,
    profile_model,
)
from spd_kernels.profiling.timing import Timing


def KernelLinear(linear: nn.Linear, block=(16, 16), density=0.5):
    """A packed sparse layer with a random block pattern of the given density."""
    n, k = linear.weight.shape
    keep = topk_mask(torch.rand(n // block[0], k // block[1]), density)
    return sk.SparseLinear.from_linear(linear, mask=keep, block=block)


def _tiny_bert():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return BertModel(cfg).eval()


def _swap(model, make):
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and "encoder" in n]
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, make(model.get_submodule(name)))
    return names


def test_dense_twin_of_masked_model_computes_the_same():
    model = _tiny_bert()

    def masked(lin):
        m = MaskedLinear.from_linear(lin, block=(16, 16))
        m.prune_magnitude(0.25)
        return m

    names = _swap(model, masked)
    twin, replaced = dense_twin(model)
    assert sorted(replaced) == sorted(names) and len(names) == 6  # q, k, v, attn out, inter, out
    assert all(type(twin.get_submodule(n)) is nn.Linear for n in names)
    assert isinstance(model.get_submodule(names[0]), MaskedLinear)  # the original is untouched
    assert linear_sparsity(twin, replaced) == pytest.approx(0.75, abs=0.02)
    inputs = example_inputs(model, batch=2, seq_len=8)
    with torch.no_grad():
        a, b = model(**inputs).last_hidden_state, twin(**inputs).last_hidden_state
    torch.testing.assert_close(a, b)


def test_profile_model_times_sparse_against_dense_twin():
    model = _tiny_bert()
    _swap(model, KernelLinear)
    inputs = example_inputs(model, batch=1, seq_len=8)
    seen = []

    def timer(fn, **kw):
        seen.append(fn)
        fn()
        return Timing(1e-3, 2e-3 if len(seen) % 2 else 4e-3, 5e-3, 5, "fake")

    rows = profile_model(model, inputs, ops=("model_forward", "model_fwd_bwd"), compile=False, timer=timer)
    assert [(r["op"], r["impl"]) for r in rows] == [
        ("model_forward", "spd_kernels"),
        ("model_forward", "dense_eager"),
        ("model_fwd_bwd", "spd_kernels"),
        ("model_fwd_bwd", "dense_eager"),
    ]
    assert all(r["status"] == "ok" and r["M"] == 8 for r in rows)
    assert rows[0]["speedup_vs_best_dense"] == pytest.approx(2.0)  # dense 4 ms / sparse 2 ms
    assert float(rows[0]["sparsity"]) == pytest.approx(0.5, abs=0.05)
    assert "6 pruned linears" in rows[0]["note"]


def test_profile_model_with_the_real_timer():
    model = _tiny_bert()
    _swap(model, KernelLinear)
    inputs = example_inputs(model, 1, 4)
    rows = profile_model(model, inputs, compile=False, warmup=0, min_run_time=0.005, min_samples=2)
    assert all(r["status"] == "ok" and float(r["p50_ms"]) > 0 for r in rows)


def test_profile_model_errors():
    plain = _tiny_bert()
    with pytest.raises(ValueError, match="no pruned layers"):
        profile_model(plain, example_inputs(plain, 1, 4))
    with pytest.raises(ValueError, match="unknown model op 'backward'"):
        profile_model(plain, {}, ops=("backward",))
    with pytest.raises(ValueError, match="max_position_embeddings=32"):
        example_inputs(plain, 1, 64)
    with pytest.raises(ValueError, match="vocab_size"):
        example_inputs(nn.Linear(2, 2))


def test_loader_hook(tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        load_pruned_model(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a pruned-model directory"):
        load_pruned_model(str(tmp_path))
    model = load_pruned_model(str(tmp_path), loader=lambda d: nn.Linear(2, 2))
    assert isinstance(model, nn.Linear)
    with pytest.raises(TypeError, match="expected an nn.Module"):
        load_pruned_model(str(tmp_path), loader=lambda d: "not a model")


def test_loader_reads_a_saved_pruned_model(tmp_path):
    model = _tiny_bert()
    _swap(model, KernelLinear)
    sk.save_pruned(model, tmp_path / "pruned")
    loaded = load_pruned_model(str(tmp_path / "pruned"))
    inputs = example_inputs(model, 1, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).last_hidden_state, model(**inputs).last_hidden_state)
    rows = profile_model(loaded, inputs, compile=False, warmup=0, min_run_time=0.005, min_samples=2)
    assert all(r["status"] == "ok" for r in rows)


def _exported_tiny_bert(block=(16, 16), density=0.5):
    """A tiny BERT sparsified, pruned by magnitude and exported (GELU fused into the FFN)."""
    model = _tiny_bert()
    model.set_attn_implementation("eager")
    sk.sparsify(model, block=block)
    for layer in sk.surgery.sparse_layers(model).values():
        layer.prune_magnitude(density)
    with torch.no_grad():
        for layer in sk.surgery.sparse_layers(model).values():
            layer.bias.normal_()  # nonzero biases: a dropped bias or activation would show
    sk.export(model)
    return model


def test_dense_twin_keeps_the_fused_activations():
    """The exported model runs GELU in the FFN's epilogue; its twin must run it too."""
    model = _exported_tiny_bert()
    assert any(isinstance(m, sk.nn.FusedActivation) for m in model.modules())
    assert model.config._attn_implementation == "sdpa"  # export switched the attention
    twin, replaced = dense_twin(model)
    assert len(replaced) == 6
    assert not any(isinstance(m, (sk.nn.FusedActivation, sk.SparseLinear)) for m in twin.modules())
    inputs = example_inputs(model, batch=2, seq_len=8)
    with torch.no_grad():
        a, b = model(**inputs).last_hidden_state, twin(**inputs).last_hidden_state
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert linear_sparsity(twin, replaced) == pytest.approx(0.5, abs=0.02)
    assert float(profile_model(model, inputs, engines=())[0]["sparsity"]) == pytest.approx(0.5, abs=0.02)


def test_every_engine_runs_checks_and_compares():
    pytest.importorskip("onnxruntime")
    model = _exported_tiny_bert()
    inputs = example_inputs(model, batch=2, seq_len=8)
    rows = profile_model(
        model,
        inputs,
        engines=("eager", "eager-attention", "compiled", "onnxruntime", "onnxruntime-fused"),
        compile_sparse=True,
        variants={"csr": _exported_tiny_bert(block=(1, 1), density=0.3)},
        rounds=2,
        min_samples=2,
        warmup=1,
    )
    impls = [r["impl"] for r in rows]
    assert impls == [
        "spd_kernels",
        "spd_kernels_compiled",
        "spd_kernels/csr",
        "spd_kernels_compiled/csr",
        "dense_eager",
        "dense_eager_attention",
        "dense_compiled",
        "onnxruntime",
        "onnxruntime_fused",
    ]
    assert all(r["status"] == "ok" and int(r["samples"]) == 2 for r in rows), rows
    assert all("max abs diff vs dense" in r["note"] for r in rows)
    assert "Attention" in rows[-1]["note"]  # ORT's fusions found the attention subgraphs
    best = min(float(r["p50_ms"]) for r in rows if not r["impl"].startswith("spd_kernels"))
    assert float(rows[0]["speedup_vs_best_dense"]) == pytest.approx(best / float(rows[0]["p50_ms"]))


def test_missing_onnxruntime_is_a_skipped_row_with_the_reason(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    model = _exported_tiny_bert()
    rows = profile_model(model, example_inputs(model, 1, 4), engines=("eager", "onnxruntime"), rounds=2)
    skipped = [r for r in rows if r["impl"] == "onnxruntime"]
    assert skipped[0]["status"] == "skipped"
    assert "not installed" in skipped[0]["note"] and "requirements/bench.txt" in skipped[0]["note"]
    assert [r["status"] for r in rows if r["impl"] != "onnxruntime"] == ["ok", "ok"]


def test_an_engine_that_disagrees_is_an_error_row(monkeypatch):
    model = _exported_tiny_bert()
    layer = model.get_submodule("encoder.layer.0.intermediate.dense")
    real = layer.forward
    monkeypatch.setattr(layer, "forward", lambda x: real(x) * 2.0)  # a wrong kernel
    rows = profile_model(model, example_inputs(model, 1, 4), engines=("eager",), rounds=2)
    assert rows[0]["status"] == "error" and "differs from the dense twin" in rows[0]["note"]


def test_time_interleaved_alternates_the_callables():
    from spd_kernels.profiling.timing import time_interleaved

    calls = []
    out = time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, calls=2, warmup=1
    )
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert out["a"].samples == 6 and out["b"].p50 >= 0
    with pytest.raises(ValueError, match="calls must be >= 1"):
        time_interleaved({"a": lambda: None}, calls=0)
