"""The fused CPU attention kernel (csrc/cpu/attention.cpp, spd_kernels.attention) against float64
``scaled_dot_product_attention``: odd sequence lengths, head dims 32 / 64 / 40, random right and
left key padding, q/k/v read in place from one fused QKV output, 1 vs 2 threads, NaN, bad input."""

import pytest
import torch
import torch.nn.functional as F

from spd_kernels import _ext
from spd_kernels import attention as sa

pytestmark = pytest.mark.skipif(not sa.available(), reason="the cpu attention kernel is not built")


def _qkv(b, s, h, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, s, 3 * h * d, generator=g) * 1.5


def _ranges(b, s, seed=0, left=False):
    """Random key ranges: sequence 0 unpadded, the others padded (right, or left when asked)."""
    g = torch.Generator().manual_seed(seed + 7)
    n = torch.randint(1, s + 1, (b,), generator=g)
    n[0] = s
    start = (s - n) if left else torch.zeros_like(n)
    return start, start + n


def _mask(start, end, s):
    pos = torch.arange(s)
    return (pos >= start[:, None]) & (pos < end[:, None])  # (B, S) True = attend


def _sdpa(q, k, v, keep, dtype):
    """F.scaled_dot_product_attention in ``dtype`` on (B, S, H, D) inputs -> (B, S, H*D)."""
    b, s, h, d = q.shape
    q, k, v = (t.to(dtype).transpose(1, 2) for t in (q, k, v))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
    return o.transpose(1, 2).reshape(b, s, h * d)


@pytest.mark.parametrize("s", [1, 7, 77, 128, 130])
@pytest.mark.parametrize("d", [32, 64, 40])
@pytest.mark.parametrize("b,left", [(1, False), (3, False), (4, True)])
def test_matches_float64_sdpa(s, d, b, left):
    h = 3
    qkv = _qkv(b, s, h, d, seed=s * d + b)
    start, end = _ranges(b, s, seed=s + d, left=left)
    keep = _mask(start, end, s)
    with torch.no_grad():
        got = sa.qkv_attention(qkv, h, keep)
        q, k, v = sa.split_qkv(qkv, h)
        ref = _sdpa(q, k, v, keep, torch.float64)
        f32 = _sdpa(q, k, v, keep, torch.float32)
    assert got.shape == (b, s, h * d) and got.dtype == torch.float32 and got.is_contiguous()
    err = (got.double() - ref).abs().max().item()
    err_torch = (f32.double() - ref).abs().max().item()
    assert err <= 2 * err_torch + 2e-6, (err, err_torch)
    # and the error is small in absolute terms (inputs ~N(0, 1.5^2))
    assert err < 1e-5


def test_reads_strided_views_in_place_and_any_layout():
    b, s, h, d = 2, 33, 2, 32
    g = torch.Generator().manual_seed(3)
    q = torch.randn(b, h, s, d, generator=g).transpose(1, 2)  # (B, S, H, D), head-major storage
    k = torch.randn(b, s, h, d, generator=g)
    v = torch.randn(b, s, h * d * 2, generator=g)[..., : h * d].view(b, s, h, d)  # gaps between rows
    keep = _mask(torch.tensor([0, 0]), torch.tensor([33, 20]), s)
    got = sa.attention(q, k, v, keep)
    ref = _sdpa(q, k, v, keep, torch.float64)
    assert (got.double() - ref).abs().max().item() < 1e-5


def test_no_mask_equals_all_ones_mask_and_scale():
    b, s, h, d = 2, 50, 2, 64
    qkv = _qkv(b, s, h, d, seed=5)
    assert torch.equal(sa.qkv_attention(qkv, h), sa.qkv_attention(qkv, h, torch.ones(b, s, dtype=torch.long)))
    q, k, v = sa.split_qkv(qkv, h)
    got = sa.attention(q, k, v, scale=0.3)
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k, v))
    ref = F.scaled_dot_product_attention(qd, kd, vd, scale=0.3).transpose(1, 2).reshape(b, s, h * d)
    assert (got.double() - ref).abs().max().item() < 1e-5


def test_one_and_two_threads_are_bitwise_equal():
    old = torch.get_num_threads()
    try:
        for b, s, h, d in [(3, 130, 4, 32), (1, 77, 3, 64), (5, 7, 12, 40)]:
            qkv = _qkv(b, s, h, d, seed=b)
            start, end = _ranges(b, s, seed=s)
            keep = _mask(start, end, s)
            torch.set_num_threads(1)
            one = sa.qkv_attention(qkv, h, keep)
            torch.set_num_threads(2)
            two = sa.qkv_attention(qkv, h, keep)
            assert torch.equal(one, two)
    finally:
        torch.set_num_threads(old)


def test_fully_padded_sequence_gives_zeros_like_sdpa():
    b, s, h, d = 3, 9, 2, 32
    qkv = _qkv(b, s, h, d, seed=2)
    keep = torch.ones(b, s, dtype=torch.bool)
    keep[1] = False
    keep[2, 4:] = False
    got = sa.qkv_attention(qkv, h, keep)
    q, k, v = sa.split_qkv(qkv, h)
    ref = _sdpa(q, k, v, keep, torch.float64)
    assert torch.all(got[1] == 0) and torch.all(ref[1] == 0)
    assert (got.double() - ref).abs().max().item() < 1e-5


def test_nan_in_nan_out():
    b, s, h, d = 2, 20, 2, 32
    qkv = _qkv(b, s, h, d, seed=4)
    keep = _mask(torch.tensor([0, 0]), torch.tensor([20, 12]), s)
    q, k, v = (t.clone() for t in sa.split_qkv(qkv, h))
    k[0, 3, 1, 5] = float("nan")  # a kept key of head 1 of sequence 0: every row of that head
    q[1, 2, 0, 0] = float("nan")  # one query row of head 0 of sequence 1
    v[1, 5, 1, 9] = float("nan")  # a kept value: column 9 of head 1 of sequence 1
    got = sa.attention(q, k, v, keep)
    ref = _sdpa(q, k, v, keep, torch.float64)
    assert torch.equal(torch.isnan(got), torch.isnan(ref))
    assert torch.isnan(got[0, :, 32:]).all() and torch.isnan(got[1, 2, :32]).all()
    assert torch.isnan(got[1, :, 32 + 9]).all() and not torch.isnan(got[0, :, :32]).any()
    finite = ~torch.isnan(ref)
    assert (got.double()[finite] - ref[finite]).abs().max().item() < 1e-5
    # a NaN in a padded key is never read
    k2 = k.clone()
    k2[1, 15, 0, 0] = float("nan")
    assert torch.equal(sa.attention(q, k2, v, keep).isnan(), got.isnan())


def test_key_range_reads_the_masks_encoders_use():
    b, s = 3, 6
    start, end = torch.tensor([0, 2, 0]), torch.tensor([6, 6, 3])
    keep = _mask(start, end, s)
    for m in (
        keep,
        keep.long(),
        keep[:, None, None, :],
        keep[:, None, None, :].expand(b, 1, s, s),
        torch.where(keep, 0.0, torch.finfo(torch.float32).min)[:, None, None, :],
    ):
        got = sa.key_range(m, b, s)
        assert torch.equal(got[0], start.int()) and torch.equal(got[1], end.int())
        assert got[0].dtype == torch.int32
    assert torch.equal(sa.key_range(None, 2, 5)[1], torch.tensor([5, 5], dtype=torch.int32))
    holes = torch.tensor([[1, 0, 1, 1]])
    with pytest.raises(ValueError, match="not plain key padding"):
        sa.key_range(holes, 1, 4)
    causal = torch.ones(4, 4, dtype=torch.bool).tril()[None, None]
    with pytest.raises(ValueError, match="differs between query rows"):
        sa.key_range(causal, 1, 4)
    with pytest.raises(ValueError, match=r"shape \(2, 5\)"):
        sa.key_range(torch.ones(2, 4), 2, 5)
    with pytest.raises(ValueError, match="additive float mask"):
        sa.key_range(torch.full((1, 1, 1, 4), -1.0), 1, 4)


def test_bad_inputs_get_clear_errors():
    q = torch.randn(2, 5, 2, 32)
    with pytest.raises(TypeError, match="q must be float32.*float64"):
        sa.attention(q.double(), q, q)
    with pytest.raises(ValueError, match="k must be a CPU tensor.*meta"):
        sa.attention(q, q.to("meta"), q)
    with pytest.raises(ValueError, match="head_dim must be a positive multiple of 8.*12"):
        x = torch.randn(2, 5, 2, 12)
        sa.attention(x, x, x)
    with pytest.raises(ValueError, match=r"v has shape \(2, 5, 2, 16\)"):
        sa.attention(q, q, torch.randn(2, 5, 2, 16))
    with pytest.raises(ValueError, match="4-D"):
        sa.attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="not 3 \\* num_heads"):
        sa.qkv_attention(torch.randn(2, 5, 100), 3)
    with pytest.raises(ValueError, match="not plain key padding"):
        sa.attention(q, q, q, torch.tensor([[1, 0, 1, 1, 1], [1, 1, 1, 1, 1]]))
    w = q.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="inference only"):
        sa.attention(w, q, q)
    with torch.no_grad():
        sa.attention(w, q, q)  # no graph recorded: fine
    # the C++ op checks its own contract
    op = _ext.c_op("cpu_attention")
    start = torch.zeros(2, dtype=torch.int32)
    with pytest.raises(ValueError, match="key range of sequence 1 is \\[0, 6\\)"):
        op(q, q, q, start, torch.tensor([5, 6], dtype=torch.int32), 0.5)
    with pytest.raises(TypeError, match="key_end must be int32"):
        op(q, q, q, start, torch.tensor([5, 5]), 0.5)
    with pytest.raises(ValueError, match="unit stride along head_dim"):
        op(q, q, torch.randn(2, 5, 32, 2).transpose(2, 3), start, start + 5, 0.5)


def test_empty_shapes():
    q = torch.randn(0, 5, 2, 32)
    assert sa.attention(q, q, q).shape == (0, 5, 64)
    q = torch.randn(2, 0, 2, 32)
    assert sa.attention(q, q, q).shape == (2, 0, 64)


def test_benchmark_front_end_smoke(tmp_path):
    import importlib.util
    from pathlib import Path

    from spd_kernels.profiling import read_csv

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_attention_cpu.py"
    spec = importlib.util.spec_from_file_location("bench_attention_cpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "a.csv"
    assert bench.main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    rows = read_csv(out)
    assert {r["impl"] for r in rows} == {"spd_kernels", "dense_eager", "dense_eager_attention"}
    assert len(rows) == 6 and all(float(r["max_rel_err"]) < 1e-5 and float(r["gflops"]) > 0 for r in rows)
    with pytest.raises(SystemExit):
        bench.parse_args(["--rounds", "3", "--calls", "2"])  # fewer than 15 samples
