"""One check of the weight's metadata in front of every backend (``formats.check_metadata``):
bad offsets or indices are the same ``ValueError`` whatever the backend and device, before any
kernel could read out of bounds; good metadata is checked once, not on every call.

CPU backends here (reference, cpu, triton under the interpreter); the CUDA device repeats the
cases in test_cuda_gpu.py / test_triton_gpu.py.
"""

import pytest
import torch

import spd_kernels as sk
from helpers import METADATA_CASES, corrupt_metadata, random_sparse
from spd_kernels import formats, ops
from spd_kernels.formats import check_metadata

# (backend, block): what each CPU backend runs
RUNS = [("reference", (1, 1)), ("reference", (32, 32)), ("cpu", (1, 1)), ("cpu", (32, 32))]


def _call_each_op(values, meta, x, dy):
    yield lambda: ops.dds_t(x, values, *meta, None, "none", False)
    yield lambda: ops.dds(dy, values, *meta)
    yield lambda: ops.sdd(dy, x, values, *meta)


def _weight(block):
    n, k = (64, 96) if block != (1, 1) else (12, 20)
    W, _ = random_sparse(n, k, block, 0.5)
    return W, torch.randn(5, k), torch.randn(5, n)


@pytest.mark.parametrize("case", METADATA_CASES)
@pytest.mark.parametrize(
    "backend, block", RUNS, ids=lambda v: f"{v[0]}x{v[1]}" if isinstance(v, tuple) else v
)
def test_bad_metadata_is_one_value_error_on_every_backend(backend, block, case):
    if sk.available_backends()[backend]:
        pytest.skip(f"{backend}: {sk.available_backends()[backend]}")
    W, x, dy = _weight(block)
    meta, message = corrupt_metadata(W, case)
    with sk.use_backend(backend):
        for call in _call_each_op(W.values, meta, x, dy):
            with pytest.raises(ValueError, match=message):
                call()


@pytest.mark.triton_interp
@pytest.mark.parametrize("case", METADATA_CASES)
def test_bad_metadata_under_the_triton_interpreter(monkeypatch, case):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    W, x, dy = _weight((32, 32))
    meta, message = corrupt_metadata(W, case)
    with sk.use_backend("triton"):
        for call in _call_each_op(W.values, meta, x, dy):
            with pytest.raises(ValueError, match=message):
                call()


def test_sparse_linear_checks_a_matrix_built_without_validation():
    W, _ = random_sparse(64, 96, (32, 32), 0.5)
    meta, message = corrupt_metadata(W, "col_index_too_big")
    bad = sk.SparseMatrix(W.values, meta[0], meta[1], W.shape, transposed=meta[2:], validate=False)
    with pytest.raises(ValueError, match=message):
        sk.sparse_linear(torch.randn(3, 96), bad)


def test_good_metadata_is_checked_once(monkeypatch):
    W, x, dy = _weight((32, 32))
    meta = [t.clone() for t in W.metadata()]
    calls = []
    original = formats._check_index
    monkeypatch.setattr(formats, "_check_index", lambda *a: calls.append(a[0]) or original(*a))
    check_metadata(W.values, meta)
    assert len(calls) == 6
    ops.dds_t(x, W.values, *meta, None, "none", False)
    ops.dds(dy, W.values.clone(), *meta)  # other values, same pattern: still checked
    assert len(calls) == 6
    # a modified array, another array in its place, another number of blocks: checked again
    meta[1][0] = 7
    with pytest.raises(ValueError, match=r"col_indices\[0\] = 7 is outside \[0, 3\)"):
        ops.dds_t(x, W.values, *meta, None, "none", False)
    meta = [t.clone() for t in W.metadata()]
    check_metadata(W.values, meta)
    n_calls = len(calls)
    check_metadata(W.values, [meta[0], meta[1].clone(), *meta[2:]])
    assert len(calls) == n_calls + 6
    with pytest.raises(ValueError, match="nnz_blocks"):
        check_metadata(W.values[:-1], meta)
