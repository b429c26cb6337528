"""Census of bad inputs to the custom ops ``torch.ops.spd_kernels.{dds_t, dds, sdd}`` (called
directly, on every CPU backend: the same error wherever the op runs) and to the raw C++ ops
``torch.ops.spd_kernels_C.cpu_*``: what was tried, the error type, a message fragment."""

import pytest
import torch

import spd_kernels as sk
from helpers import assert_clear_error, census

OPS = torch.ops.spd_kernels
W = sk.SparseMatrix.from_dense(torch.randn(64, 96), block=(32, 32))
V, META = W.values, W.metadata()
X, DY = torch.randn(5, 96), torch.randn(5, 64)


def dds_t(x=X, values=V, meta=META, bias=None, activation="none"):
    return lambda: OPS.dds_t(x, values, *meta, bias, activation, False)


def dds(dy=DY, values=V, meta=META):
    return lambda: OPS.dds(dy, values, *meta)


def sdd(dy=DY, x=X, values=V, meta=META):
    return lambda: OPS.sdd(dy, x, values, *meta)


CASES = [
    ("dds_t: x wrong K", dds_t(x=torch.randn(5, 95)), ValueError, "x must have shape (M, 96), got (5, 95)"),
    ("dds_t: x 1-D", dds_t(x=torch.randn(96)), ValueError, "x must have shape (M, 96), got (96,)"),
    ("dds_t: x 3-D", dds_t(x=torch.randn(2, 5, 96)), ValueError, "x must have shape (M, 96)"),
    ("dds_t: x int64", dds_t(x=X.long()), TypeError, "x has dtype torch.int64"),
    ("dds_t: x float64, values float32", dds_t(x=X.double()), TypeError, "x has dtype torch.float64"),
    ("dds_t: values 2-D", dds_t(values=V[0]), ValueError, "values must have shape (nnz_blocks, bm, bk)"),
    ("dds_t: values int64", dds_t(values=V.long()), TypeError, "values must be a floating tensor"),
    (
        "dds_t: bias wrong length",
        dds_t(bias=torch.randn(63)),
        ValueError,
        "bias must have shape (64,), got (63,)",
    ),
    ("dds_t: bias float64", dds_t(bias=torch.randn(64).double()), TypeError, "bias has dtype torch.float64"),
    ("dds_t: unknown activation", dds_t(activation="swish"), ValueError, "activation must be one of"),
    ("dds_t: int64 metadata", dds_t(meta=[m.long() for m in META]), TypeError, "must have dtype torch.int32"),
    (
        "dds_t: float metadata",
        dds_t(meta=[m.float() for m in META]),
        TypeError,
        "must have dtype torch.int32",
    ),
    ("dds_t: 2-D row_offsets", dds_t(meta=[META[0][None], *META[1:]]), ValueError, "row_offsets must be 1-D"),
    ("dds: dy wrong N", dds(dy=torch.randn(5, 63)), ValueError, "dy must have shape (M, 64), got (5, 63)"),
    ("dds: dy 1-D", dds(dy=torch.randn(64)), ValueError, "dy must have shape (M, 64), got (64,)"),
    ("dds: dy int64", dds(dy=DY.long()), TypeError, "dy has dtype torch.int64"),
    ("dds: dy float64", dds(dy=DY.double()), TypeError, "dy has dtype torch.float64"),
    ("sdd: rows of dy and x differ", sdd(x=torch.randn(4, 96)), ValueError, "same number of rows"),
    ("sdd: x wrong K", sdd(x=torch.randn(5, 95)), ValueError, "x must have shape (M, 96)"),
    ("sdd: dy wrong N", sdd(dy=torch.randn(5, 63)), ValueError, "dy must have shape (M, 64)"),
    ("sdd: dy float64", sdd(dy=DY.double()), TypeError, "dy has dtype torch.float64"),
]

BACKENDS = ["reference", pytest.param("cpu", marks=pytest.mark.requires_ext)]


@pytest.mark.parametrize("backend", BACKENDS)
@census(CASES)
def test_bad_op_input(backend, call, error, fragment):
    if sk.available_backends()[backend]:
        pytest.skip(f"{backend}: {sk.available_backends()[backend]}")
    with sk.use_backend(backend):
        assert_clear_error(call, error, fragment)


def raw(name, *args):
    return lambda: getattr(torch.ops.spd_kernels_C, name)(*args)


RAW_CASES = [
    (
        "cpu_dds_t: x wrong K",
        raw("cpu_dds_t", torch.randn(5, 95), V, *META, None, "none", False),
        ValueError,
        "x must have 96 columns",
    ),
    (
        "cpu_dds_t: float64",
        raw("cpu_dds_t", X.double(), V.double(), *META, None, "none", False),
        TypeError,
        "values must be float32 or bfloat16",
    ),
    (
        "cpu_dds_t: unknown activation",
        raw("cpu_dds_t", X, V, *META, None, "swish", False),
        ValueError,
        "activation must be one of",
    ),
    (
        "cpu_dds_t: bias wrong length",
        raw("cpu_dds_t", X, V, *META, torch.randn(63), "none", False),
        ValueError,
        "bias must have shape (64,)",
    ),
    (
        "cpu_dds_t: int64 metadata",
        raw("cpu_dds_t", X, V, *[m.long() for m in META], None, "none", False),
        RuntimeError,
        "row_offsets must have dtype Int",
    ),
    (
        "cpu_dds: dy wrong N",
        raw("cpu_dds", torch.randn(5, 63), V, *META),
        ValueError,
        "dy must have 64 columns",
    ),
    (
        "cpu_sdd: rows differ",
        raw("cpu_sdd", DY, torch.randn(4, 96), V, *META),
        ValueError,
        "same number of rows",
    ),
]


@pytest.mark.requires_ext
@census(RAW_CASES)
def test_bad_raw_cpu_op_input(call, error, fragment):
    if sk.available_backends()["cpu"]:
        pytest.skip(f"cpu: {sk.available_backends()['cpu']}")
    assert_clear_error(call, error, fragment)
