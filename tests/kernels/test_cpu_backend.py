"""What is specific to the ``cpu`` backend (C++/OpenMP kernels of csrc/cpu): bfloat16, thread
count determinism, default choice, strided and batched inputs, every block shape it takes
(including the tails of its register tiles), the epilogue's activations, and the argument
checks of the raw ops. The products themselves are also covered by test_products.py."""

import csv
import math
import os
import subprocess
import sys

import pytest
import torch

import spd_kernels as sk
from helpers import assert_close_to_ref, random_sparse, ref_linear
from spd_kernels import _ext
from spd_kernels.activations import apply_activation
from spd_kernels.profiling import CSV_COLUMNS

pytestmark = [pytest.mark.requires_ext]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _needs_cpu_backend():
    reasons = sk.available_backends()["cpu"]
    if reasons:
        pytest.skip(f"cpu backend unavailable: {reasons}")


@pytest.fixture
def threads():
    """Restores torch's thread count after a test that changes it."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def op(name):
    return _ext.c_op(name)


def products(x, W, dy, bias=None, activation="none", save_preact=False):
    """(y, z, dx, dw) straight from the cpu ops."""
    meta = W.metadata()
    y, z = op("cpu_dds_t")(x, W.values, *meta, bias, activation, save_preact)
    dx = op("cpu_dds")(dy, W.values, *meta)
    dw = op("cpu_sdd")(dy, x, W.values, *meta)
    return y, z, dx, dw


def sampled(full, W):
    """The blocks of a dense (N, K) tensor at W's pattern, shaped like W.values."""
    n, k = W.shape
    bm, bk = W.block
    blocks = full.reshape(n // bm, bm, k // bk, bk).permute(0, 2, 1, 3)
    return blocks[W.block_rows.long(), W.col_indices.long()]


def check_all(x, W, dense, dy, bias=None, activation="none", factor=2.0):
    """Forward (and pre-activation), input grad and weight grad against float64."""
    y, z, dx, dw = products(x, W, dy, bias, activation, save_preact=True)
    ref, zref = ref_linear(x, dense, bias, activation)
    zd = x @ dense.t() + (bias if bias is not None else 0)
    assert_close_to_ref(z, zref, zd, "pre-activation", factor)
    assert_close_to_ref(y, ref, apply_activation(zd, activation), "forward", factor)
    assert_close_to_ref(dx, dy.double() @ dense.double(), dy @ dense, "input grad", factor)
    assert_close_to_ref(
        dw, sampled(dy.double().t() @ x.double(), W), sampled(dy.t() @ x, W), "weight grad", factor
    )


# ------------------------------------------------------------------ every block and tile tail
# (bm, bk): CSR; 16-wide tiles; rectangular; 8-wide tiles (bm or bk not a multiple of 16).
BLOCKS = [(1, 1), (16, 16), (32, 32), (64, 64), (32, 64), (64, 32), (16, 48), (8, 8), (24, 40)]


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("m", [1, 13, 97, 130])  # tails of the 6-row tile, the 96/64-row panels
def test_every_block_shape(block, m):
    bm, bk = block
    n, k = (bm * 3, bk * 5) if block != (1, 1) else (75, 91)
    W, dense = random_sparse(n, k, block, 0.4)
    x, dy, bias = torch.randn(m, k), torch.randn(m, n), torch.randn(n)
    check_all(x, W, dense, dy, bias, "gelu")


@pytest.mark.parametrize("n, k", [(37, 1500), (1500, 37)])
def test_csr_wide_operand_uses_narrow_panels(n, k):
    # more than 1280 columns in the packed operand (x for dds_t, dy for dds): 32-row panels,
    # two output columns interleaved, odd counts leaving a single column
    W, dense = random_sparse(n, k, (1, 1), 0.8)
    x, dy, bias = torch.randn(70, k), torch.randn(70, n), torch.randn(n)
    check_all(x, W, dense, dy, bias, "gelu_tanh")


@pytest.mark.parametrize("block,n", [((1, 1), 512), ((1, 1), 516), ((32, 32), 512)])
def test_large_outputs_are_streamed_to_memory_correctly(block, n):
    """From 4 MB the forward and input-grad outputs are written with non-temporal stores (float32,
    widths a multiple of 8); a width that is not (516) takes the normal stores."""
    W, dense = random_sparse(n, n, block, 0.9)
    x, dy, bias = torch.randn(2048, n), torch.randn(2048, n), torch.randn(n)
    assert 2048 * n * 4 >= 4 << 20
    y, z, dx, _ = products(x, W, dy, bias, "gelu", save_preact=True)
    ref, zref = ref_linear(x, dense, bias, "gelu")
    zd = x @ dense.t() + bias
    assert_close_to_ref(z, zref, zd, "pre-activation")
    assert_close_to_ref(y, ref, apply_activation(zd, "gelu"), "forward")
    assert_close_to_ref(dx, dy.double() @ dense.double(), dy @ dense, "input grad")


@pytest.mark.parametrize("block", [(1, 1), (32, 32)])
@pytest.mark.parametrize("sparsity", [0.0, 1.0])
def test_dense_and_empty_patterns(block, sparsity):
    n, k = (64, 96)
    W, dense = random_sparse(n, k, block, sparsity)
    x, dy, bias = torch.randn(37, k), torch.randn(37, n), torch.randn(n)
    check_all(x, W, dense, dy, bias, "relu")
    if sparsity == 1.0:
        y, _, dx, dw = products(x, W, dy, bias, "relu")
        assert torch.equal(y, torch.relu(bias).expand(37, n))
        assert torch.equal(dx, torch.zeros(37, k)) and dw.numel() == 0


# ------------------------------------------------------------------ bfloat16
@pytest.mark.parametrize("block", [(1, 1), (16, 16), (32, 64), (24, 40)])
@pytest.mark.parametrize("activation", ["none", "gelu"])
def test_bfloat16_against_float64(block, activation):
    bm, bk = block
    n, k = (bm * 4, bk * 3) if block != (1, 1) else (70, 90)
    W, dense = random_sparse(n, k, block, 0.5, dtype=torch.bfloat16)
    m = 45
    x = torch.randn(m, k, dtype=torch.bfloat16)
    dy = torch.randn(m, n, dtype=torch.bfloat16)
    bias = torch.randn(n, dtype=torch.bfloat16)
    y, z, dx, dw = products(x, W, dy, bias, activation, save_preact=True)
    assert y.dtype == z.dtype == dx.dtype == dw.dtype == torch.bfloat16
    check_all(x, W, dense, dy, bias, activation)
    # float32 accumulation: at least as close to float64 as bfloat16 rounding of the exact value
    ref = (x.double() @ dense.double().t() + bias.double()).to(torch.bfloat16).double()
    exact = x.double() @ dense.double().t() + bias.double()
    assert (z.double() - exact).abs().max() <= 1.01 * (ref - exact).abs().max() + 1e-6


def test_bfloat16_rounding_is_round_to_nearest_even():
    # a CSR identity: y = x + bias exactly in float32, then one rounding to bfloat16
    k = 64
    W = sk.SparseMatrix.from_dense(torch.eye(k), block=(1, 1))
    x = torch.randn(5, k)
    bias = torch.randn(k)
    y32, _ = op("cpu_dds_t")(x, W.values, *W.metadata(), bias, "none", False)
    xb, bb = x.to(torch.bfloat16), bias.to(torch.bfloat16)
    Wb = W.to(torch.bfloat16)
    yb, _ = op("cpu_dds_t")(xb, Wb.values, *Wb.metadata(), bb, "none", False)
    assert torch.equal(yb, (xb.float() + bb.float()).to(torch.bfloat16))
    assert torch.equal(y32, x + bias)


# ------------------------------------------------------------------ determinism
@pytest.mark.parametrize("block", [(1, 1), (32, 32), (16, 48)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_bits_for_one_and_two_threads(block, dtype, threads):
    bm, bk = block
    n, k = (bm * 6, bk * 4) if block != (1, 1) else (150, 130)
    W, _ = random_sparse(n, k, block, 0.6, dtype=dtype)
    x = torch.randn(301, k, dtype=dtype)
    dy = torch.randn(301, n, dtype=dtype)
    bias = torch.randn(n, dtype=dtype)
    outs = []
    for t in (1, 2, 1):
        torch.set_num_threads(t)
        outs.append(products(x, W, dy, bias, "gelu_tanh", save_preact=True))
    for a, b in zip(outs[0], outs[1]):
        assert torch.equal(a, b)
    for a, b in zip(outs[0], outs[2]):
        assert torch.equal(a, b)


# ------------------------------------------------------------------ choice and dispatch
@pytest.mark.parametrize("block", [(1, 1), (16, 16), (32, 32), (64, 64), (32, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_backend_is_the_default_on_cpu(block, dtype):
    for o in ("dds_t", "dds", "sdd"):
        assert sk.choose_backend(o, torch.device("cpu"), dtype, block).name == "cpu"


def test_what_the_cpu_backend_does_not_take():
    cpu = sk.BACKENDS["cpu"]
    dev = torch.device("cpu")
    assert "block (2, 64) not supported" in " ".join(cpu.call_reasons("dds_t", dev, torch.float32, (2, 64)))
    assert "block (40, 36) not supported" in " ".join(cpu.call_reasons("dds", dev, torch.float32, (40, 36)))
    assert "dtype torch.float64 not supported" in " ".join(
        cpu.call_reasons("sdd", dev, torch.float64, (1, 1))
    )
    assert "dtype torch.float16 not supported" in " ".join(
        cpu.call_reasons("sdd", dev, torch.float16, (1, 1))
    )
    assert "CPU tensors only" in " ".join(
        cpu.call_reasons("sdd", torch.device("meta"), torch.float32, (1, 1))
    )
    # those fall back to the reference backend
    assert sk.choose_backend("dds_t", dev, torch.float32, (2, 64)).name == "reference"
    assert sk.choose_backend("dds_t", dev, torch.float64, (32, 32)).name == "reference"


def test_sparse_linear_autograd_runs_the_cpu_kernels():
    W, dense = random_sparse(96, 64, (32, 32), 0.5)
    x = torch.randn(2, 9, 64, requires_grad=True)
    v = W.values.clone().requires_grad_(True)
    b = torch.randn(96, requires_grad=True)
    y = sk.sparse_linear(x, W.with_values(v), b, activation="gelu")
    y.backward(torch.ones_like(y))
    # the same numbers as the cpu ops called directly (bit for bit): the default path is cpu
    x2 = x.detach().reshape(-1, 64)
    y_op, z_op = op("cpu_dds_t")(x2, W.values, *W.metadata(), b.detach(), "gelu", True)
    assert torch.equal(y.detach().reshape(-1, 96), y_op)
    with sk.use_backend("reference"):
        y_ref = sk.sparse_linear(x.detach(), W, b.detach(), activation="gelu")
    assert_close_to_ref(y.detach(), ref_linear(x.detach(), dense, b.detach(), "gelu")[0], y_ref, factor=4)


# ------------------------------------------------------------------ strided and batched x
@pytest.mark.parametrize("block", [(1, 1), (32, 32)])
def test_strided_and_transposed_operands(block):
    W, dense = random_sparse(64, 96, block, 0.5)
    wide = torch.randn(50, 200)
    x_rows = wide[:, 10:106]  # row stride 200, unit column stride: read in place
    x_t = torch.randn(96, 50).t()  # column stride 50: copied once
    dy_rows = torch.randn(50, 160)[:, 3:67]
    for x in (x_rows, x_t):
        assert not x.is_contiguous()
        check_all(x, W, dense, dy_rows)
    one = wide[7:8, 10:106]  # a single row
    check_all(one, W, dense, dy_rows[:1])


def test_noncontiguous_values_are_read_as_values():
    W, dense = random_sparse(64, 96, (32, 32), 0.5)
    v = W.values.transpose(1, 2).contiguous().transpose(1, 2)  # same numbers, other strides
    assert not v.is_contiguous()
    x, dy = torch.randn(9, 96), torch.randn(9, 64)
    for a, b in zip(products(x, W.with_values(v), dy), products(x, W, dy)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("block", [(1, 1), (16, 16)])
def test_batched_noncontiguous_x_through_sparse_linear(block):
    W, dense = random_sparse(64, 96, block, 0.7)
    x = torch.randn(96, 4, 3).permute(2, 1, 0).requires_grad_(True)  # (3, 4, 96), non-contiguous
    y = sk.sparse_linear(x, W, activation="relu")
    assert sk.choose_backend("dds_t", x.device, x.dtype, block).name == "cpu"
    assert y.shape == (3, 4, 64)
    ref = ref_linear(x.detach().reshape(-1, 96), dense, None, "relu")[0]
    assert_close_to_ref(y.detach().reshape(-1, 64), ref, torch.relu(x.detach().reshape(-1, 96) @ dense.t()))
    y.sum().backward()
    assert x.grad.shape == x.shape


# ------------------------------------------------------------------ the epilogue's activations
@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
def test_activation_epilogue_matches_definition(activation):
    # identity weight (CSR): z = x + bias exactly, so y isolates the activation
    k = 128
    W = sk.SparseMatrix.from_dense(torch.eye(k), block=(1, 1))
    z = torch.cat([torch.linspace(-12, 12, 1000), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0, 1e4])])
    z = torch.cat([z, torch.zeros((-z.numel()) % k)]).view(-1, k)
    y, zz = op("cpu_dds_t")(z, W.values, *W.metadata(), None, activation, True)
    assert torch.equal(zz, z)
    exact = apply_activation(z.double(), activation)
    bound = 3e-7 * torch.clamp(z.double().abs(), min=1.0)
    assert ((y.double() - exact).abs() <= bound).all(), (y.double() - exact).abs().max()
    # and within the same bound of torch's own float32 activation
    assert ((y - apply_activation(z, activation)).double().abs() <= 2 * bound).all()


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
def test_activation_epilogue_non_finite(activation):
    k = 8
    W = sk.SparseMatrix.from_dense(torch.eye(k), block=(1, 1))  # only the diagonal is stored
    z = torch.tensor([[math.nan, math.inf, -math.inf, 0.0, 1.0, -1.0, 100.0, -100.0]])
    y, _ = op("cpu_dds_t")(z, W.values, *W.metadata(), None, activation, False)
    want = apply_activation(z, activation)
    assert torch.isnan(y[0, 0]) and y[0, 1] == math.inf
    torch.testing.assert_close(y[:, 3:], want[:, 3:], rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ argument checks of the raw ops
def _args():
    W, _ = random_sparse(64, 96, (32, 32), 0.5)
    return W, torch.randn(4, 96), torch.randn(4, 64)


def test_raw_op_bad_inputs_name_the_value():
    W, x, dy = _args()
    meta = list(W.metadata())
    fwd, dds, sdd = op("cpu_dds_t"), op("cpu_dds"), op("cpu_sdd")
    with pytest.raises(ValueError, match=r"x must have 96 columns, got shape \[4, 95\]"):
        fwd(torch.randn(4, 95), W.values, *meta, None, "none", False)
    with pytest.raises(ValueError, match=r"x must be 2-D \(M, 96\), got shape \[2, 2, 96\]"):
        fwd(torch.randn(2, 2, 96), W.values, *meta, None, "none", False)
    with pytest.raises(TypeError, match=r"x has dtype Double but values have dtype Float"):
        fwd(x.double(), W.values, *meta, None, "none", False)
    with pytest.raises(TypeError, match=r"values must be float32 or bfloat16 .* got Half"):
        fwd(x.half(), W.values.half(), *meta, None, "none", False)
    with pytest.raises(ValueError, match=r"activation must be one of .* got 'swish'"):
        fwd(x, W.values, *meta, None, "swish", False)
    with pytest.raises(ValueError, match=r"bias must have shape \(64,\), got \[63\]"):
        fwd(x, W.values, *meta, torch.randn(63), "none", False)
    with pytest.raises(ValueError, match=r"block \(2, 64\)"):
        fwd(x, torch.randn(W.nnz_blocks, 2, 64), *meta, None, "none", False)
    with pytest.raises(RuntimeError, match=r"values must be 3-D, got shape \[3, 1024\]"):
        fwd(x, W.values.reshape(3, -1), *meta, None, "none", False)
    with pytest.raises(RuntimeError, match=r"row_offsets must have dtype Int, got Long"):
        fwd(x, W.values, meta[0].long(), *meta[1:], None, "none", False)
    with pytest.raises(ValueError, match=r"dy must have 64 columns, got shape \[4, 65\]"):
        dds(torch.randn(4, 65), W.values, *meta)
    with pytest.raises(
        ValueError, match=r"dy and x must have the same number of rows, got \[4, 64\] and \[5, 96\]"
    ):
        sdd(dy, torch.randn(5, 96), W.values, *meta)


def test_raw_op_bad_metadata_is_an_error_not_a_crash():
    W, x, dy = _args()
    meta = list(W.metadata())
    fwd, dds, sdd = op("cpu_dds_t"), op("cpu_dds"), op("cpu_sdd")
    bad_cols = meta[1].clone()
    bad_cols[1] = 99
    with pytest.raises(ValueError, match=r"col_indices\[1\] = 99 is outside \[0, 3\)"):
        fwd(x, W.values, meta[0], bad_cols, *meta[2:], None, "none", False)
    with pytest.raises(ValueError, match=r"col_indices\[1\] = 99 is outside"):
        sdd(dy, x, W.values, meta[0], bad_cols, *meta[2:])
    bad_offsets = meta[0].clone()
    bad_offsets[-1] += 1
    with pytest.raises(
        ValueError, match=r"row_offsets must start at 0 and end at nnz_blocks=3, got 0 \.\.\. 4"
    ):
        fwd(x, W.values, bad_offsets, *meta[1:], None, "none", False)
    bad_perm = meta[5].clone()
    bad_perm[0] = -1
    with pytest.raises(ValueError, match=r"perm_t\[0\] = -1 is outside \[0, 3\)"):
        dds(dy, W.values, *meta[:5], bad_perm)
    bad_rows = meta[4].clone()
    bad_rows[0] = 2
    with pytest.raises(ValueError, match=r"row_indices_t\[0\] = 2 is outside \[0, 2\)"):
        dds(dy, W.values, *meta[:4], bad_rows, meta[5])
    with pytest.raises(ValueError, match=r"index arrays must have nnz_blocks=3 entries, got 2"):
        dds(dy, W.values, meta[0], meta[1][:2], *meta[2:])


# ------------------------------------------------------------------ the benchmark's smoke mode
def test_benchmark_quick_writes_the_csv_schema(tmp_path):
    out = tmp_path / "cpu_kernels.csv"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "bench_cpu_kernels.py"),
            "--quick",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| layout | sparsity | forward ms |" in proc.stdout

    rows = list(csv.DictReader(out.open()))
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import bench_cpu_kernels as bench
    finally:
        sys.path.pop(0)
    assert list(rows[0]) == list(CSV_COLUMNS) + list(bench.EXTRA)
    ours = [r for r in rows if r["impl"] == "spd_kernels"]
    assert {r["backend"] for r in ours} == {"cpu"}
    assert {r["layout"] for r in ours} == set(bench.LAYOUTS)  # every layout of the default grid
    assert {r["op"] for r in ours} == {"forward", "input_grad", "weight_grad"}
    assert {r["impl"] for r in rows} >= {"spd_kernels", "dense_eager", "torch_sparse"}
    assert all(r["status"] == "ok" for r in ours)
    for r in rows:
        assert r["threads"] == "1" and r["torch"] == torch.__version__
        assert r["command"].startswith("python benchmarks/bench_cpu_kernels.py --quick")
        if r["status"] != "ok":
            assert r["impl"] == "torch_sparse" and r["note"]
            continue
        p20, p50, p80 = float(r["p20_ms"]), float(r["p50_ms"]), float(r["p80_ms"])
        assert 0 < p20 <= p50 <= p80
        assert float(r["gflops"]) > 0
    # the saved CSV prints the same table
    again = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_cpu_kernels.py"), "--from-csv", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert "| layout | sparsity | forward ms |" in again.stdout and "command: `python" in again.stdout


def test_benchmark_minilm_preset():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import bench_cpu_kernels as bench
    finally:
        sys.path.pop(0)
    args = bench.parse_args(["--preset", "minilm"])
    assert args.layouts == list(bench.PRESET_LAYOUTS)
    assert {"csr", "bsr8x1", "bsr4", "bsr32"} <= set(args.layouts)
    assert sorted({(s.M, s.N, s.K) for s in args.shapes}) == [
        (m, n, k) for m in (128, 4096) for n, k in ((384, 384), (384, 1536), (1536, 384))
    ]
    assert bench.parse_args(["--preset", "minilm", "--m", "64", "--layouts", "csr"]).layouts == ["csr"]
