"""The ``triton`` backend's kernels on CPU tensors, run by the Triton interpreter.

``TRITON_INTERPRET=1`` is set for this module's tests only (a module fixture); the backend
builds an interpreted instance of the kernel module for CPU tensors whatever the variable was
when triton was imported (``spd_kernels.triton_ops.load``), so other test modules are not
affected. The interpreter is slow: shapes are small (N, K <= 192, a handful of blocks).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

import spd_kernels as sk  # noqa: E402
from helpers import assert_close_to_ref, check_kernel_products, check_products, random_sparse, ref_linear  # noqa: E402
from helpers import sampled as _sampled  # noqa: E402
from spd_kernels.activations import apply_activation  # noqa: E402
from spd_kernels.backends import BACKENDS, choose_backend  # noqa: E402
from spd_kernels.profiling import CSV_COLUMNS  # noqa: E402
from spd_kernels.triton_ops import load  # noqa: E402

pytestmark = pytest.mark.triton_interp

ROOT = Path(__file__).resolve().parents[2]
# (N, K) per block: N/bm x K/bk grids of 6 to 15 blocks, so 90 % sparsity keeps at least one
SHAPES = {(16, 16): (48, 80), (32, 32): (96, 128), (64, 64): (128, 192), (32, 64): (96, 192)}
BLOCKS = list(SHAPES)
SPARSITIES = (0.0, 0.5, 0.9, 1.0)


@pytest.fixture(scope="module", autouse=True)
def interpreter():
    mp = pytest.MonkeyPatch()
    mp.setenv("TRITON_INTERPRET", "1")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def kernels(interpreter):
    return load("bsr_linear", interpret=True)


def _check(block, sparsity, m, dtype, activation=None, factor=None):
    n, k = SHAPES[block]
    W, dense = random_sparse(n, k, block, sparsity, dtype=dtype)
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n).to(dtype)
    dy = torch.randn(m, n).to(dtype)
    if dtype is torch.bfloat16 and factor is None and activation is None:
        # the interpreter casts float32 -> bfloat16 by truncation (triton/runtime/interpreter.py,
        # cast_impl -> _convert_float with no rounding mode): up to 1 ulp where torch's
        # round-to-nearest makes 1/2, so twice the rule's factor (test_triton_gpu.py keeps 2;
        # with an activation check_products allows 4 already)
        factor = 4.0
    check_products("triton", W, dense, x, dy, bias, activation, factor)


@pytest.mark.parametrize("m", [0, 1, 7, 65])
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b[0]}x{b[1]}")
def test_products_fp32(block, sparsity, m):
    _check(block, sparsity, m, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b[0]}x{b[1]}")
def test_products_half(block, sparsity, dtype):
    _check(block, sparsity, 65, dtype)


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
def test_fused_activation(activation, dtype):
    # the epilogue applies act() to the float32 accumulator: check_products allows 4x with an
    # activation
    _check((16, 16), 0.5, 33, dtype, activation)


def test_preact_is_saved_only_when_needed(kernels):
    W, dense = random_sparse(48, 80, (16, 16), 0.5)
    x = torch.randn(7, 80)
    bias = torch.randn(48)
    y, z = kernels.bsr_dds_t(x, W.values, W.metadata(), bias, "gelu", True)
    z_ref = x.double() @ dense.double().t() + bias.double()
    assert_close_to_ref(z, z_ref, x @ dense.t() + bias, "pre-activation")
    assert_close_to_ref(y, torch.nn.functional.gelu(z_ref), torch.nn.functional.gelu(z), "gelu")
    y2, z2 = kernels.bsr_dds_t(x, W.values, W.metadata(), bias, "gelu", False)
    assert z2.numel() == 0 and torch.equal(y, y2)


@pytest.mark.parametrize("split", [1, 2, 3, 7])
def test_weight_grad_split_over_m(kernels, split):
    W, dense = random_sparse(96, 128, (32, 32), 0.5)
    m = 97
    x, dy = torch.randn(m, 128), torch.randn(m, 96)
    got = kernels.bsr_sdd(dy, x, W.values, W.metadata(), split=split)
    ref = _sampled(W, dy.double().t() @ x.double())
    assert_close_to_ref(got, ref, _sampled(W, dy.t() @ x), f"weight grad, split={split}")


def test_default_split_covers_long_m(kernels):
    # few blocks and a long M: the default splits the reduction, and chunks stay >= 32 rows
    assert kernels.sdd_split(97, 1, torch.device("cpu")) == 3
    assert kernels.sdd_split(97, 100, torch.device("cpu")) == 1
    assert kernels.sdd_split(31, 1, torch.device("cpu")) == 1
    assert kernels.sdd_split(0, 0, torch.device("cpu")) == 1


def test_strided_operands(kernels):
    # column-major x and dy (transposed views): the kernels read through strides, no copy
    W, dense = random_sparse(64, 96, (32, 32), 0.5)
    x = torch.randn(96, 9).t()
    dy = torch.randn(64, 9).t()
    assert not x.is_contiguous() and not dy.is_contiguous()
    check_kernel_products(W, dense, x, dy, kernels.bsr_dds_t, kernels.bsr_dds, kernels.bsr_sdd, "strided")


def test_batched_input_through_sparse_linear():
    W, dense = random_sparse(64, 96, (32, 32), 0.5)
    x = torch.randn(2, 3, 96, requires_grad=True)
    with sk.use_backend("triton"):
        y = sk.sparse_linear(x, W, activation="relu")
        y.sum().backward()
    assert y.shape == (2, 3, 64) and x.grad.shape == x.shape
    ref, _ = ref_linear(x.detach().reshape(6, 96), dense, activation="relu")
    assert_close_to_ref(y.detach().reshape(6, 64), ref, torch.relu(x.detach().reshape(6, 96) @ dense.t()))


def test_structural_zeros_are_not_multiplied(kernels):
    # a non-finite input meeting only pruned blocks does not reach the output (README semantics)
    block_mask = torch.tensor([[True, False, True], [True, False, False]])
    w = torch.randn(64, 96)
    W = sk.SparseMatrix.from_dense(w, mask=block_mask, block=(32, 32))
    x = torch.randn(5, 96)
    x[:, 32:64] = float("nan")  # block column 1 is pruned everywhere
    y, _ = kernels.bsr_dds_t(x, W.values, W.metadata())
    assert torch.isfinite(y).all()
    x[:, 0] = float("inf")  # block column 0 is stored in both block rows
    y, _ = kernels.bsr_dds_t(x, W.values, W.metadata())
    assert not torch.isfinite(y).any()


def test_bad_inputs_raise(kernels):
    W, _ = random_sparse(64, 96, (32, 32), 0.5)
    with pytest.raises(ValueError, match="96"):
        kernels.bsr_dds_t(torch.randn(3, 64), W.values, W.metadata())
    with pytest.raises(TypeError, match="float64"):
        kernels.bsr_dds_t(torch.randn(3, 96, dtype=torch.float64), W.values, W.metadata())
    with pytest.raises(ValueError, match="activation"):
        kernels.bsr_dds_t(torch.randn(3, 96), W.values, W.metadata(), None, "tanh")
    with pytest.raises(ValueError, match=r"bias must have shape \(64,\)"):
        kernels.bsr_dds_t(torch.randn(3, 96), W.values, W.metadata(), torch.randn(96))
    with pytest.raises(ValueError, match="rows"):
        kernels.bsr_sdd(torch.randn(3, 64), torch.randn(4, 96), W.values, W.metadata())
    with pytest.raises(ValueError, match="split"):
        kernels.bsr_sdd(torch.randn(3, 64), torch.randn(3, 96), W.values, W.metadata(), split=0)


@pytest.mark.parametrize(
    "block, dtype, reason",
    [
        ((1, 1), torch.float32, "CSR layout"),
        ((8, 8), torch.float32, "powers of two"),
        ((16, 24), torch.float32, "powers of two"),
        ((256, 256), torch.float32, "powers of two"),
        ((32, 32), torch.float64, "dtype torch.float64"),
    ],
)
def test_call_reasons(block, dtype, reason):
    reasons = BACKENDS["triton"].not_supported_reasons("dds_t", torch.device("cpu"), dtype, block)
    assert any(reason in r for r in reasons), reasons


def test_cpu_needs_the_interpreter(monkeypatch):
    assert BACKENDS["triton"].not_supported_reasons("sdd", torch.device("cpu"), torch.float16, (32, 64)) == []
    monkeypatch.delenv("TRITON_INTERPRET")
    reasons = BACKENDS["triton"].not_supported_reasons("sdd", torch.device("cpu"), torch.float16, (32, 64))
    assert reasons and "TRITON_INTERPRET=1" in reasons[0]


def test_not_chosen_automatically_on_cpu():
    # CPU priority is cpu ▸ reference: the interpreter is for checking, never the default
    assert choose_backend("dds_t", torch.device("cpu"), torch.float32, (32, 32)).name != "triton"


def test_lazy_import_and_interpreted_copy():
    """``import spd_kernels`` does not import triton; CPU calls get interpreted kernels even when
    the kernel module was first imported compiled (TRITON_INTERPRET unset)."""
    code = (
        "import os, sys, torch\n"
        "import spd_kernels as sk\n"
        "assert 'triton' not in sys.modules, 'triton imported eagerly'\n"
        "import spd_kernels.triton_ops.bsr_linear as compiled\n"
        "assert not compiled.INTERPRETED\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "W = sk.SparseMatrix.from_dense(torch.randn(32, 32), block=(16, 16))\n"
        "x = torch.randn(3, 32)\n"
        "with sk.use_backend('triton'):\n"
        "    y = sk.sparse_linear(x, W)\n"
        "torch.testing.assert_close(y, x @ W.to_dense().t())\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_gpu_benchmark_smoke(tmp_path):
    """benchmarks/gpu_bsr_bench.py end to end on tiny shapes (interpreter, CPU clock): every
    implementation and op runs, the sparse results are checked, CSV/PNG/tables are written."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "OUT")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable,
        "-W",
        "ignore",
        str(ROOT / "benchmarks" / "gpu_bsr_bench.py"),
        "--smoke",
        "--shapes",
        "64x96",
        "--blocks",
        "32",
        "--sparsities",
        "0.5",
        "--dtype",
        "fp32",
        "--out",
        str(tmp_path),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    import csv

    with (tmp_path / "gpu_bsr_bench_smoke.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(CSV_COLUMNS)
    seen = {(r["impl"], r["op"]): r for r in rows}
    assert {r["backend"] for r in rows if r["impl"] == "spd_kernels"} == {"triton"}
    for op in ("forward", "input_grad", "weight_grad", "fwd_bwd"):
        for impl in ("spd_kernels", "dense_eager", "dense_compiled"):
            assert seen[(impl, op)]["status"] == "ok", seen[(impl, op)]
            assert float(seen[(impl, op)]["p50_ms"]) > 0
        # checked against the float64 dense product before timing
        assert float(seen[("spd_kernels", op)]["max_rel_err"]) < 1e-4
    assert seen[("torch_sparse", "forward")]["status"] == "ok"  # fp32 BSR runs on the CPU too
    assert ("torch_sparse_triton", "forward") in seen  # torch's Triton kernels: a row, run or not
    assert (tmp_path / "gpu_bsr_bench_smoke.png").stat().st_size > 0
    assert "| 64→96 | 32x32 | 0.5 |" in (tmp_path / "gpu_bsr_bench_smoke.md").read_text()


def test_gpu_benchmark_help():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_bsr_bench.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0 and "--smoke" in out.stdout and "--sparsities" in out.stdout


def test_config_pruning_by_shared_memory(kernels, monkeypatch):
    # what a GPU's autotuner may try: configs whose tiles overflow shared memory are dropped
    import triton

    configs = [
        triton.Config({"BLOCK_M": 256, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 64, "GROUP_M": 8}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_M": 32, "GROUP_M": 8}, num_warps=4, num_stages=2),
    ]
    v32 = torch.empty(1, 128, 128)
    monkeypatch.setattr(kernels, "_smem_limit", lambda: 163 * 1024)  # an A100
    # fp32 128x128 blocks: 2 x (256·128 + 128·128) x 4 B is too much; 1 x (64·128 + 128·128) x 4 B fits
    kept = kernels._prune_dds_t(configs, {"v_ptr": v32}, BM=128, BK=128)
    assert [c.kwargs["BLOCK_M"] for c in kept] == [64, 32]
    monkeypatch.setattr(kernels, "_smem_limit", lambda: 1024)  # nothing fits: the smallest stays
    kept = kernels._prune_sdd(configs, {"v_ptr": v32}, BM=128, BK=128)
    assert [c.kwargs["BLOCK_M"] for c in kept] == [32]


@pytest.mark.skipif(torch.cuda.is_available(), reason="compiled and run for real by test_triton_gpu.py")
def test_kernels_compile_for_sm90_without_a_gpu(monkeypatch):
    """The compiled (not interpreted) kernels go through Triton's whole CUDA pipeline, down to
    ptxas, for an H100 target, specialised as the JIT would for contiguous operands, and their
    loads are software-pipelined (asynchronous copies into shared memory)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    monkeypatch.delenv("TRITON_INTERPRET")
    mod = importlib.import_module("spd_kernels.triton_ops.bsr_linear")
    if mod.INTERPRETED:
        pytest.skip("the kernel module was imported under TRITON_INTERPRET=1 in this process")
    one = {"stride_xk", "stride_vk", "stride_yn", "stride_zn", "stride_dyn", "stride_dxk", "stride_ok"}
    p = "*bf16"
    cases = [
        (
            mod._bsr_dds_t_kernel,
            dict(x_ptr=p, v_ptr=p, bias_ptr=p, y_ptr=p, z_ptr=p),
            dict(HAS_BIAS=True, ACTIVATION=2, SAVE_PREACT=True),
        ),
        (mod._bsr_dds_kernel, dict(dy_ptr=p, v_ptr=p, dx_ptr=p), {}),
        (mod._bsr_sdd_kernel, dict(dy_ptr=p, x_ptr=p, v_ptr=p, out_ptr="*fp32"), {}),
    ]
    for kernel, ptrs, extra in cases:
        cfg = kernel.configs[0]
        consts = dict(BM=64, BK=64, UPCAST=False, INPUT_PRECISION="ieee", **extra, **cfg.kwargs)
        signature, attrs = {}, {}
        for i, name in enumerate(kernel.fn.arg_names):
            if name in consts or name in one:
                signature[name] = "constexpr"
                consts.setdefault(name, 1)
            elif name.endswith("_ptr"):
                signature[name] = ptrs.get(name, "*i32")
                attrs[(i,)] = [["tt.divisibility", 16]]
            else:
                signature[name] = "i32"
                if name.startswith("stride") or name in ("M", "ROWS_PER_SPLIT"):
                    attrs[(i,)] = [["tt.divisibility", 16]]
        src = ASTSource(fn=kernel.fn, signature=signature, constexprs=consts, attrs=attrs)
        options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
        assert compiled.asm["cubin"], kernel.fn.__name__
        assert "async_copy_global_to_local" in compiled.asm["ttgir"], f"{kernel.fn.__name__} is not pipelined"


def test_strided_bias(kernels):
    # a bias that is a strided view (every other element of a buffer) is read through its stride
    W, dense = random_sparse(64, 96, (32, 32), 0.5)
    x = torch.randn(7, 96)
    bias = torch.randn(128)[::2]
    assert bias.stride(0) == 2
    for activation in ("none", "gelu"):
        y, z = kernels.bsr_dds_t(x, W.values, W.metadata(), bias, activation, True)
        z_ref = x.double() @ dense.double().t() + bias.double()
        assert_close_to_ref(z, z_ref, x @ dense.t() + bias, "pre-activation, strided bias")
        base = apply_activation(x @ dense.t() + bias, activation)
        assert_close_to_ref(y, apply_activation(z_ref, activation), base, "output, strided bias")
    with sk.use_backend("triton"):
        y = sk.sparse_linear(x, W, bias)
    assert_close_to_ref(y, x.double() @ dense.double().t() + bias.double(), x @ dense.t() + bias)


LARGE_OFFSETS = """
import os, torch
os.environ["TRITON_INTERPRET"] = "1"
import spd_kernels as sk
from spd_kernels.triton_ops import load
k = load("bsr_linear", interpret=True)
torch.manual_seed(0)
M, N, K, B = 5, 64, 64, 16
S = (1 << 31) // (K - B) + 1  # column stride: the last block column starts past 2^31 elements
def strided(rows, cols):
    # (rows, cols) with strides (1, S) over ~6 GB of address space; only the touched pages exist
    t = torch.empty((cols - 1) * S + rows, dtype=torch.float16).as_strided((rows, cols), (1, S))
    t.copy_(torch.randn(rows, cols).half())
    return t
x, dy = strided(M, K), strided(M, N)
W = sk.SparseMatrix.from_dense(torch.randn(N, K).half(), block=(B, B))
d = W.to_dense().float()
y, _ = k.bsr_dds_t(x, W.values, W.metadata())
print("forward", (y.float() - x.float() @ d.t()).abs().max().item(), flush=True)
dx = k.bsr_dds(dy, W.values, W.metadata())
print("input_grad", (dx.float() - dy.float() @ d).abs().max().item(), flush=True)
dw = k.bsr_sdd(dy, x, W.values, W.metadata(), split=1)
ref = sk.SparseMatrix.from_dense(dy.float().t() @ x.float(), block=(B, B)).values
print("weight_grad", (dw.float() - ref).abs().max().item(), flush=True)
"""


def test_offsets_past_int32():
    """Column-major operands whose offsets (block column x bk x column stride) pass 2³¹ elements:
    int32 products would wrap and read elsewhere. In a subprocess: a wrapped read may crash."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", LARGE_OFFSETS],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    errors = dict(line.split() for line in out.stdout.splitlines() if line.count(" ") == 1)
    assert out.returncode == 0 and len(errors) == 3, out.stdout[-2000:] + out.stderr[-2000:]
    for op, err in errors.items():
        assert float(err) < 0.05, f"{op}: max error {err} (fp16 products of 64 terms)"


def test_autotune_keys_are_kernel_arguments(kernels):
    # Triton skips key names that are not arguments without a word; the forward's config depends
    # on its epilogue, every kernel's on the input precision
    for kernel in (kernels._bsr_dds_t_kernel, kernels._bsr_dds_kernel, kernels._bsr_sdd_kernel):
        missing = [k for k in kernel.keys if k not in kernel.arg_names]
        assert not missing, f"{kernel.fn.__name__}: key names {missing} are not arguments"
        assert {"INPUT_PRECISION", "UPCAST", "M_BUCKET", "DENSITY_BUCKET"} <= set(kernel.keys)
    assert {"HAS_BIAS", "ACTIVATION", "SAVE_PREACT"} <= set(kernels._bsr_dds_t_kernel.keys)


def _unread_arguments(fn) -> set:
    """Arguments of a @triton.jit function that its body never reads."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    func = tree.body[0]
    read = {n.id for stmt in func.body for n in ast.walk(stmt) if isinstance(n, ast.Name)}
    return {a.arg for a in func.args.args} - read


def test_key_only_arguments_are_not_specialised(monkeypatch):
    """Arguments a kernel gets only for the autotune key must not be specialised (value 1,
    divisibility by 16): calls that differ only in them reuse one compiled kernel."""
    import importlib

    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    monkeypatch.delenv("TRITON_INTERPRET")
    mod = importlib.import_module("spd_kernels.triton_ops.bsr_linear")
    if mod.INTERPRETED:
        pytest.skip("the kernel module was imported under TRITON_INTERPRET=1 in this process")
    for kernel in (mod._bsr_dds_t_kernel, mod._bsr_dds_kernel, mod._bsr_sdd_kernel):
        unread = _unread_arguments(kernel.fn.fn)
        assert {"M_BUCKET", "DENSITY_BUCKET"} <= unread
        not_specialised = {p.name for p in kernel.fn.params if p.do_not_specialize}
        assert unread - {"v_ptr"} <= not_specialised, kernel.fn.__name__  # v_ptr: the pruner's
    # the specialisation the CUDA launcher keys its compiled-kernel cache on, computed on the host
    fn = mod._bsr_dds_t_kernel.fn
    bind = create_function_from_signature(fn.signature, fn.params, make_backend(GPUTarget("cuda", 90, 32)))
    t = torch.empty(64)
    ptrs = [t] * 7
    consts = dict(BM=32, BK=32, HAS_BIAS=False, ACTIVATION=0, SAVE_PREACT=False, UPCAST=False)
    consts.update(INPUT_PRECISION="ieee", BLOCK_M=64, GROUP_M=8)

    def key(m_bucket, density_bucket):
        ints = [48, 3, 5, m_bucket, density_bucket] + [64, 1] * 5
        return str(bind(*ptrs, *ints, **consts)[1])

    assert key(1, 1) == key(2, 0) == key(16, 4) == key(64, 3)


class _FakeKernel:
    """Stands in for an autotuned kernel: ``fn[grid](...)`` records the BLOCK_M it was launched
    with and raises Triton's OutOfResources for the BLOCK_M values in ``too_big``."""

    def __init__(self, configs, too_big):
        self.configs, self.too_big, self.launched = configs, set(too_big), []
        self.fn = self

    __name__ = "_fake_kernel"

    def __getitem__(self, grid):
        from triton.runtime.errors import OutOfResources

        def run(*args, **kwargs):
            self.launched.append(kwargs["BLOCK_M"])
            if kwargs["BLOCK_M"] in self.too_big:
                raise OutOfResources(300_000, 232_448, "shared memory")

        return run


@pytest.mark.parametrize("env", [{"SPD_TRITON_AUTOTUNE": "0"}, {"SPD_TRITON_CONFIG": "1"}])
def test_fixed_config_that_does_not_fit_falls_back(kernels, monkeypatch, env):
    import triton

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    configs = [
        triton.Config({"BLOCK_M": 128, "GROUP_M": 8}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 256, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 64, "GROUP_M": 8}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_M": 32, "GROUP_M": 8}, num_warps=4, num_stages=2),
    ]
    fake = _FakeKernel(configs, too_big={128, 256})
    values = torch.empty(1, 64, 64, dtype=torch.bfloat16)
    kw = dict(BM=64, BK=64, HAS_BIAS=False)
    with pytest.warns(RuntimeWarning, match="does not fit"):
        kernels._launch(fake, kernels._prune_dds_t, values, (1,), (), kw)
    # the forced config first, then the others smallest first: the first that runs is kept
    assert fake.launched == [128 if "SPD_TRITON_AUTOTUNE" in env else 256, 32]
    fake.launched.clear()
    kernels._launch(fake, kernels._prune_dds_t, values, (1,), (), kw)
    assert fake.launched == [32]  # remembered: no second failure, no second warning
    fake.too_big = {128, 256, 64, 32}
    with pytest.raises(triton.runtime.errors.OutOfResources):
        kernels._launch(fake, kernels._prune_dds_t, values, (1,), (), dict(kw, HAS_BIAS=True))
