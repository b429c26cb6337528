"""Grid parsing and validation: every bad value is a clear error before anything is timed."""

import math

import pytest
import torch

from spd_kernels.backends import BACKENDS
from spd_kernels.backends.base import Backend
from spd_kernels.profiling import ProfileSpec, parse_layout, plan, preset_shapes, run_profile
from spd_kernels.profiling.grid import parse_dtype, parse_shape, parse_sparsity


def _never_timed(*args, **kwargs):
    raise AssertionError("the timer ran before validation finished")


def _spec(**kw):
    base = dict(shapes=["8,64,64"], layouts=["csr", "bsr32"], sparsities=[0.5], baselines=["eager"])
    base.update(kw)
    return ProfileSpec(**base)


@pytest.mark.parametrize(
    "text, name, block",
    [
        ("csr", "csr", (1, 1)),
        ("CSR", "csr", (1, 1)),
        ("bsr16", "bsr16", (16, 16)),
        ("bsr32", "bsr32", (32, 32)),
        ("bsr64", "bsr64", (64, 64)),
        ("bsr32x64", "bsr32x64", (32, 64)),
        ("bsr32x32", "bsr32", (32, 32)),
    ],
)
def test_parse_layout(text, name, block):
    lay = parse_layout(text)
    assert (lay.name, lay.block) == (name, block)


def test_presets_are_the_encoder_linears():
    shapes = preset_shapes("minilm", tokens=64)
    assert [(s.M, s.N, s.K) for s in shapes] == [(64, 384, 384), (64, 1536, 384), (64, 384, 1536)]
    base = preset_shapes("bert-base")
    assert [(s.N, s.K) for s in base] == [(768, 768), (3072, 768), (768, 3072)]
    large = preset_shapes("bert-large")
    assert [(s.N, s.K) for s in large] == [(1024, 1024), (4096, 1024), (1024, 4096)]
    with pytest.raises(ValueError, match="'gpt9'"):
        preset_shapes("gpt9")


@pytest.mark.parametrize("bad", ["coo", "bsr", "bsr0", "bsr16x0", "dense", "bsrx32"])
def test_unknown_layout_errors_before_timing(bad):
    with pytest.raises(ValueError, match=f"unknown layout '{bad}'|zero block"):
        run_profile(_spec(layouts=["csr", bad]), timer=_never_timed, progress=False)


def test_block_that_does_not_divide_a_shape_names_layout_and_shape():
    spec = _spec(shapes=["8,64,64", "8,96,80"], layouts=["bsr16", "bsr32"])
    with pytest.raises(ValueError, match=r"bsr32.*does not divide.*N=96, K=80"):
        run_profile(spec, timer=_never_timed, progress=False)
    # rectangular blocks check each side: 64 rows divide N=64, 64 columns do not divide K=96
    with pytest.raises(ValueError, match=r"bsr64x32|bsr32x64"):
        plan(_spec(shapes=["8,64,96"], layouts=["bsr32x64"]))


class _NoHalfBackend(Backend):
    """Available, but without float16: stands in for a backend that lacks a dtype."""

    name = "nohalf"

    def call_reasons(self, op, device, dtype, block):
        return [f"dtype {dtype} not supported (float32 only)"] if dtype != torch.float32 else []


def test_dtype_the_backend_lacks_errors_before_timing(monkeypatch):
    monkeypatch.setitem(BACKENDS, "nohalf", _NoHalfBackend())
    plan(_spec(backend="nohalf", dtypes=["float32"]))  # fine
    with pytest.raises(ValueError, match=r"(?s)'nohalf' cannot run op forward.*float16.*float32 only"):
        run_profile(_spec(backend="nohalf", dtypes=["float32", "fp16"]), timer=_never_timed, progress=False)


def test_unavailable_backend_errors_with_its_reasons():
    reasons = BACKENDS["triton"].not_supported_reasons("dds_t", torch.device("cpu"), torch.float32, (32, 32))
    if not reasons:
        pytest.skip("triton backend can run here")
    with pytest.raises(ValueError, match="'triton' cannot run"):
        plan(_spec(backend="triton"))


@pytest.mark.parametrize("bad", [1.5, -0.1, "nan", "abc", math.inf])
def test_sparsity_outside_unit_interval_names_the_value(bad):
    with pytest.raises(ValueError, match="sparsity") as e:
        run_profile(_spec(sparsities=[0.5, bad]), timer=_never_timed, progress=False)
    assert str(bad) in str(e.value) or repr(bad) in str(e.value)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(ops=["forward", "backward"]), "unknown op 'backward'"),
        (dict(baselines=["eager", "cusparse"]), "unknown baseline 'cusparse'"),
        (dict(backend="fastest"), "unknown backend 'fastest'"),
        (dict(dtypes=["float8"]), "unknown dtype 'float8'"),
        (dict(shapes=["8,64"]), "three integers"),
        (dict(shapes=["0,64,64"]), "positive"),
        (dict(device="tpu"), "tpu"),
        (dict(threads=0), "threads"),
        (dict(min_run_time=0), "min_run_time"),
        (dict(min_samples=0), "repeats"),
        (dict(layouts=[]), "no layouts"),
    ],
)
def test_other_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        run_profile(_spec(**kw), timer=_never_timed, progress=False)


def test_parsers():
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("torch.float32") is torch.float32
    assert parse_sparsity("0.9") == 0.9 and parse_sparsity(1) == 1.0
    s = parse_shape("128x384x1536")
    assert (s.M, s.N, s.K) == (128, 384, 1536)


def test_plan_expands_the_grid_and_names_the_backend():
    p = plan(_spec(ops=["forward", "fwd_bwd"], sparsities=[0.5, 0.9], dtypes=["float32", "float64"]))
    assert len(p.cases) == 1 * 2 * 2 * 2 * 2  # shapes x dtypes x layouts x sparsities x ops
    # reference is the only backend that runs on this CPU without the extension; cpu when built
    assert p.backend_names[("forward", torch.float32, (32, 32))] in ("reference", "cpu")
    assert p.n_timings() == 1 * 2 * 2 * 1 + len(p.cases) * 1  # dense eager + spd per case
