"""The CPU dropout kernel (csrc/cpu/dropout.cpp): its generator against Philox4x32-10's published
answers, its mask bit for bit against a Python model of the documented layout, keep rate, scale,
gradient, determinism, independence, thread count, edge values of p and bad input."""

import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from spd_kernels import dropout as D
from spd_kernels.nn.dropout import FastDropout, use_fast_dropout

pytestmark = pytest.mark.requires_ext

M32 = 0xFFFFFFFF


def philox4x32_10(ctr, key):
    c = list(ctr)
    k0, k1 = key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & M32, (p0 >> 32) ^ c[3] ^ k1, p0 & M32]
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return c


def test_reference_philox_matches_published_answers():
    # Random123's known-answer vectors for philox4x32 with 10 rounds
    assert philox4x32_10([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert philox4x32_10([M32] * 4, [M32, M32]) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert philox4x32_10([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0]) == [
        0xD16CFE09,
        0x94FDCCEB,
        0x5001E420,
        0x24126EA1,
    ]


def reference_keep(n, p, seed, offset):
    """The documented mask: element e keeps iff its 16-bit word >= round(p * 2^16)."""
    s, o = seed % 2**64, offset % 2**64
    key = [s & M32, s >> 32]
    t = math.floor(p * 65536 + 0.5)
    keep = []
    for e in range(n):
        c, r = divmod(e, 64)
        k, lane = divmod(r, 8)
        block = 8 * c + lane
        x = philox4x32_10([block & M32, block >> 32, o & M32, o >> 32], key)
        keep.append(((x[k // 2] >> (16 * (k % 2))) & 0xFFFF) >= t)
    return torch.tensor(keep)


def unpack(mask, n):
    bits = (mask.to(torch.int32).unsqueeze(1) >> torch.arange(8)) & 1
    return bits.reshape(-1)[:n].bool()


@pytest.mark.parametrize("n", [1, 7, 8, 63, 64, 65, 200, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_and_output_match_the_reference_bit_for_bit(n, dtype):
    p, seed, offset = 0.3, -1234567890123, 2**40 + 17  # negative seed: all 64 bits used
    x = torch.randn(n, dtype=torch.float64).to(dtype)
    y, mask = D.dropout_forward(x, p, seed, offset)
    keep = reference_keep(n, p, seed, offset)
    assert mask.dtype == torch.uint8 and mask.shape == ((n + 7) // 8,)
    assert torch.equal(unpack(mask, n), keep)
    expected = torch.where(keep, x.float() * (1 / (1 - p)), 0.0).to(dtype)
    assert torch.equal(y, expected)


def test_odd_shapes_and_non_contiguous_input():
    x = torch.randn(13, 37, 5).transpose(0, 2)  # not contiguous
    y, mask = D.dropout_forward(x, 0.5, 3, 4)
    y2, mask2 = D.dropout_forward(x.contiguous(), 0.5, 3, 4)
    assert y.shape == x.shape and torch.equal(y, y2) and torch.equal(mask, mask2)
    keep = unpack(mask, x.numel()).reshape(x.shape)
    assert torch.equal(y, torch.where(keep, x * 2.0, 0.0))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_within_binomial_bounds_and_scale(p):
    n = 32 * 64 * 384
    x = torch.ones(n)
    y = D.dropout(x, p)
    kept = (y != 0).sum().item()
    sd = math.sqrt(n * p * (1 - p))
    assert abs(kept - n * (1 - p)) < 5 * sd, (kept, n * (1 - p), sd)
    assert torch.all((y == 0) | (y == torch.tensor(1 / (1 - p), dtype=torch.float32)))


def test_mask_bits_are_balanced_per_position():
    # every position of the 64-element layout (word, half, lane) keeps at the right rate
    x = torch.ones(4096, 64)
    keep = D.dropout(x, 0.5) != 0
    rate = keep.float().mean(0)
    assert torch.all((rate - 0.5).abs() < 5 * math.sqrt(0.25 / 4096)), rate


def test_p_zero_is_identity_and_p_one_gives_zeros():
    x = torch.randn(33, 17, requires_grad=True)
    assert D.dropout(x, 0.0) is x
    y = D.dropout(x, 1.0)
    assert torch.equal(y, torch.zeros_like(x))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    y0, _ = D.dropout_forward(x.detach(), 0.0, 1, 2)
    assert torch.equal(y0, x.detach())
    z = torch.full((100,), float("inf"))
    assert torch.equal(D.dropout(z, 1.0), torch.zeros(100))  # no inf * 0 = NaN


def test_eval_mode_and_not_training_are_identity():
    x = torch.randn(10, 10)
    assert D.dropout(x, 0.5, training=False) is x
    m = FastDropout(0.5).eval()
    assert m(x) is x


def test_two_calls_give_different_masks():
    x = torch.ones(64, 384)
    a, b = D.dropout(x, 0.5), D.dropout(x, 0.5)
    agree = ((a != 0) == (b != 0)).float().mean().item()
    assert 0.45 < agree < 0.55  # independent masks agree on half the elements


def test_same_seed_same_mask_and_rng_state_resumes():
    x = torch.randn(32, 64, 384)
    torch.manual_seed(7)
    a = D.dropout(x, 0.1)
    state = torch.get_rng_state()
    b = D.dropout(x, 0.1)
    torch.manual_seed(7)
    assert torch.equal(D.dropout(x, 0.1), a)
    torch.set_rng_state(state)
    assert torch.equal(D.dropout(x, 0.1), b)
    assert not torch.equal(a, b)
    g = torch.Generator().manual_seed(7)
    assert torch.equal(D.dropout(x, 0.1, generator=g), a)  # an explicit generator draws the same way


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_is_mask_times_scale_times_dy(dtype):
    p = 0.25
    x = torch.randn(7, 131, dtype=dtype, requires_grad=True)
    y = D.dropout(x, p)
    dy = torch.randn_like(y)
    y.backward(dy)
    keep = (y != 0) | (x == 0)
    expected = torch.where(keep, dy.float() * (1 / (1 - p)), 0.0).to(dtype)
    assert torch.equal(x.grad, expected)
    # and against the kernel's own mask, float64 reference (one rounding of the dtype apart)
    _, mask = D.dropout_forward(x.detach(), 0.3, 11, 12)
    dx = D.dropout_backward(dy, mask, 0.3)
    keep = unpack(mask, x.numel()).reshape(x.shape)
    ref = torch.where(keep, dy.double() / 0.7, 0.0)
    assert torch.equal(dx == 0, ref == 0)
    eps = torch.finfo(dtype).eps
    assert torch.allclose(dx.double(), ref, rtol=eps, atol=0)


def test_gradcheck_in_float_against_torch_autograd():
    # y = x * m * s is linear: the analytic gradient is exact, compare with autograd of that form
    x = torch.randn(300, requires_grad=True)
    torch.manual_seed(3)
    y = D.dropout(x, 0.4)
    s = 1 / (1 - 0.4)
    m = (y.detach() != 0).float()
    (g,) = torch.autograd.grad(y, x, torch.arange(300.0))
    assert torch.allclose(g, torch.arange(300.0) * m * s, rtol=1e-6, atol=0)


def test_one_and_two_threads_are_bitwise_identical():
    code = (
        "import torch, sys; torch.set_num_threads(int(sys.argv[1])); "
        "from spd_kernels import dropout as D; torch.manual_seed(5); "
        "x = torch.randn(32, 64, 1536); y = D.dropout(x, 0.1); "
        "print(torch.get_num_threads(), y.sum().item(), (y != 0).sum().item(), "
        "D.dropout_forward(x, 0.1, 9, 9)[1].double().sum().item())"
    )
    outs = [
        subprocess.run(
            [sys.executable, "-c", code, str(t)], capture_output=True, text=True, env=dict(os.environ)
        )
        for t in (1, 2)
    ]
    for r in outs:
        assert r.returncode == 0, r.stderr
    a, b = (r.stdout.split() for r in outs)
    assert a[0] == "1" and b[0] == "2"
    assert a[1:] == b[1:]
    # and in this process: the parallel split changes nothing
    x = torch.randn(32, 64, 384)
    torch.set_num_threads(1)
    y1 = D.dropout_forward(x, 0.1, 1, 2)
    torch.set_num_threads(2)
    y2 = D.dropout_forward(x, 0.1, 1, 2)
    assert torch.equal(y1[0], y2[0]) and torch.equal(y1[1], y2[1])


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), float("inf")])
def test_bad_p_is_refused(p):
    x = torch.randn(10)
    with pytest.raises(ValueError, match="p must lie in"):
        D.dropout(x, p)
    with pytest.raises(ValueError, match="p must lie in"):
        D.dropout_forward(x, p, 0, 0)
    m = FastDropout(0.5)
    m.p = p  # nn.Dropout checks p when built, not when it is changed later
    with pytest.raises(ValueError, match="p must lie in"):
        m(x)


def test_bad_inputs_are_refused_with_clear_errors():
    with pytest.raises(TypeError, match="p must be a number"):
        D.dropout(torch.randn(3), "0.5")
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        D.dropout_forward(torch.randn(3, dtype=torch.float64), 0.5, 0, 0)
    _, mask = D.dropout_forward(torch.randn(20), 0.5, 0, 0)
    with pytest.raises(ValueError, match="ceil"):
        D.dropout_backward(torch.randn(30), mask, 0.5)
    with pytest.raises(TypeError, match="uint8"):
        D.dropout_backward(torch.randn(20), mask.int(), 0.5)


def test_other_dtypes_fall_back_to_torch():
    x = torch.randn(1000, dtype=torch.float64)
    y = D.dropout(x, 0.5)
    assert y.dtype == torch.float64 and set(torch.unique(y[y != 0] / x[y != 0]).tolist()) <= {2.0}
    assert not D.uses_kernel(x) and D.uses_kernel(x.float())


def test_use_fast_dropout_swaps_and_restores():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2), nn.Sequential(nn.Dropout(0.3, inplace=True)))
    model.eval()
    assert use_fast_dropout(model) == 2
    assert type(model[1]) is FastDropout and model[1].p == 0.2 and not model[1].training
    assert type(model[2][0]) is FastDropout and model[2][0].inplace
    assert use_fast_dropout(model) == 0
    assert use_fast_dropout(model, enabled=False) == 2
    assert type(model[1]) is nn.Dropout and type(model[2][0]) is nn.Dropout
    assert model.state_dict().keys() == {"0.weight", "0.bias"}
