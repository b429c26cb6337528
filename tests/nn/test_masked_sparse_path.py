"""MaskedLinear's sparse path: same numbers and gradients as the dense masked product, the
packed pattern cached until the mask changes, and the path choice (never / always / auto)."""

import pytest
import torch

import spd_kernels as sk
from helpers import SPARSITIES, assert_close_to_ref, random_block_mask, ref_linear
from spd_kernels.nn import MaskedLinear, crossover, packing


def _pair(n, k, block, sparsity, **kw):
    dense = MaskedLinear(k, n, block=block, sparse_path="never", **kw)
    with torch.no_grad():
        dense.bias.normal_()
    dense.set_mask(random_block_mask(n, k, block, sparsity), allow_regrow=True)
    sparse = MaskedLinear(k, n, block=block, sparse_path="always", **kw)
    sparse.load_state_dict(dense.state_dict())
    return dense, sparse


def _fwd_bwd(layer, x, gy):
    x = x.clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    y = layer(x)
    y.backward(gy)
    return y.detach(), x.grad, layer.weight.grad, layer.bias.grad


CASES = [(block, s, 5) for block in [(1, 1), (16, 16), (32, 32), (16, 32)] for s in SPARSITIES]
CASES += [(block, 0.5, m) for block in [(1, 1), (32, 32)] for m in (0, 1)]


@pytest.mark.parametrize("block, sparsity, m", CASES)
def test_sparse_path_matches_dense_masked(block, sparsity, m):
    n, k = 64, 96
    dense, sparse = _pair(n, k, block, sparsity)
    x, gy = torch.randn(m, 3, k), torch.randn(m, 3, n)
    outs_d = _fwd_bwd(dense, x, gy)
    outs_s = _fwd_bwd(sparse, x, gy)
    assert dense.last_path == "dense-masked"
    assert sparse.last_path == f"sparse({crossover.layout_name(block)})"
    # float64 reference of the masked product
    w = (dense.weight * dense.mask).detach()
    ref, _ = ref_linear(x.reshape(-1, k), w, dense.bias.detach())
    torch.testing.assert_close(outs_s[0].reshape(-1, n).double(), ref, rtol=1e-5, atol=1e-5)
    for name, a, b in zip(("y", "dx", "dW", "db"), outs_d, outs_s):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=name)
    # pruned weights get exactly no gradient; the gradient lives in weight.grad (dense param)
    assert torch.all(outs_s[2][~dense.mask] == 0)


def test_partial_blocks_of_an_element_mask_at_block_granularity():
    # an element mask on a block-granular layer: stored blocks keep their masked-out zeros
    dense, sparse = _pair(32, 64, (16, 16), 0.5)
    holes = torch.rand(32, 64) > 0.3
    dense.set_mask(holes)
    sparse.set_mask(holes)
    assert sparse.packed_pattern().keep is not None
    x, gy = torch.randn(5, 64), torch.randn(5, 32)
    for a, b in zip(_fwd_bwd(dense, x, gy), _fwd_bwd(sparse, x, gy)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_optimizer_updates_weight_through_sparse_path():
    dense, sparse = _pair(32, 64, (1, 1), 0.8)
    opt_d = torch.optim.SGD(dense.parameters(), lr=0.1)
    opt_s = torch.optim.SGD(sparse.parameters(), lr=0.1)
    for _ in range(3):
        x = torch.randn(4, 64)
        for layer, opt in ((dense, opt_d), (sparse, opt_s)):
            opt.zero_grad()
            layer(x).square().sum().backward()
            opt.step()
    torch.testing.assert_close(sparse.weight, dense.weight, rtol=1e-5, atol=1e-6)
    assert sparse.last_path == "sparse(csr)"


def test_pattern_packed_once_and_repacked_on_mask_change(monkeypatch):
    calls = []
    real = packing.pack_pattern
    monkeypatch.setattr(packing, "pack_pattern", lambda *a, **k: calls.append(1) or real(*a, **k))
    layer = MaskedLinear(64, 32, block=16, sparse_path="always")
    layer.prune_magnitude(0.5)
    x = torch.randn(3, 64)
    for _ in range(3):
        layer(x).sum().backward()
    with torch.no_grad():
        layer(x)
    assert len(calls) == 1
    layer.prune_magnitude(0.25)  # set_mask bumps the version
    y = layer(x)
    assert len(calls) == 2
    with torch.no_grad():  # an in-place edit of the buffer is caught too
        layer.mask[0] = False
    y2 = layer(x)
    assert len(calls) == 3
    assert not torch.equal(y, y2)
    torch.testing.assert_close(y2, torch.nn.functional.linear(x, layer.weight * layer.mask, layer.bias))


def test_no_grad_values_cache_follows_weight_updates():
    layer = MaskedLinear(64, 32, sparse_path="always")
    layer.prune_magnitude(0.3)
    x = torch.randn(3, 64)
    with torch.inference_mode():
        y0 = layer(x)
    with torch.no_grad():
        layer.weight.mul_(2.0)
    with torch.no_grad():
        y1 = layer(x)
    torch.testing.assert_close(y1 - layer.bias, 2 * (y0 - layer.bias))
    # a pattern packed under inference_mode still trains
    layer(x.requires_grad_()).sum().backward()
    assert layer.weight.grad is not None


def test_auto_uses_the_crossover_table(monkeypatch):
    layer = MaskedLinear(64, 32, block=(16, 16))
    layer.prune_magnitude(0.25)
    # the shipped table may be empty: auto then stays dense on every backend
    monkeypatch.setattr(crossover._crossover_table, "CROSSOVER", {})
    assert layer.current_path() == "dense-masked"
    assert "path=dense-masked" in repr(layer)
    # keyed by the backend that runs the call here (cpu when the extension is built)
    backend = sk.choose_backend("dds_t", torch.device("cpu"), torch.float32, (16, 16)).name
    table = {backend: {"bsr16": {"train": 0.5, "infer": 0.2}}}
    monkeypatch.setattr(crossover._crossover_table, "CROSSOVER", table)
    assert layer.current_path() == "sparse(bsr16)"  # density 0.25 < 0.5 for fwd+bwd
    assert "path=sparse(bsr16)" in repr(layer)
    x = torch.randn(2, 64)
    layer(x)
    assert layer.last_path == "sparse(bsr16)"
    with torch.no_grad():
        layer(x)  # forward only: 0.25 >= 0.2
    assert layer.last_path == "dense-masked"
    layer.sparse_path = "never"
    layer(x)
    assert layer.last_path == "dense-masked"
    with pytest.raises(ValueError, match="sparse_path must be one of"):
        MaskedLinear(8, 8, sparse_path="sometimes")


@pytest.mark.parametrize(
    "block, mode, arg",
    [
        ((1, 1), "sigmoid_threshold", 0.45),
        ((16, 16), "sigmoid_threshold", 0.5),
        ((1, 1), "topk", 0.3),
        ((32, 32), "topk", 0.5),
        ((16, 32), "threshold", 0.1),
    ],
)
def test_trained_scores_run_sparse_with_the_dense_gradients(block, mode, arg):
    """Movement layers while their scores train: the binarised scores are folded into the
    values gathered on the committed pattern; output, dX, dW, db and the score gradient equal
    the dense masked path's (float64 reference), on an odd batch."""
    n, k = 64, 96
    torch.manual_seed(3)
    dense = MaskedLinear(k, n, block=block, scores=mode, sparse_path="never").double()
    with torch.no_grad():
        dense.scores.normal_()
        dense.bias.normal_()
    dense.set_mask(random_block_mask(n, k, block, 0.6), allow_regrow=True)  # committed pattern
    sparse = MaskedLinear(k, n, block=block, scores=mode, sparse_path="always")
    sparse.load_state_dict({k_: v.float() for k_, v in dense.state_dict().items()})
    for m in (dense, sparse):
        m.threshold = m.density = arg
    x, gy = torch.randn(7, k, dtype=torch.float64), torch.randn(7, n, dtype=torch.float64)
    ref = _fwd_bwd(dense, x, gy) + (dense.scores.grad,)
    got = _fwd_bwd(sparse, x.float(), gy.float()) + (sparse.scores.grad,)
    assert sparse.last_path == f"sparse({crossover.layout_name(block)})"
    assert dense.last_path == "dense-masked"
    for name, r, g in zip(("y", "dx", "dW", "db", "dscores"), ref, got):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4, msg=name)
    assert torch.all(got[2][~dense.mask] == 0)  # nothing outside the committed pattern
    assert float(ref[4].abs().sum()) > 0  # the scores do get a gradient


def test_frozen_scores_go_sparse_on_the_effective_pattern():
    layer = MaskedLinear(64, 32, block=16, scores="topk", sparse_path="always")
    with torch.no_grad():
        layer.scores.normal_()
    layer.density = 0.5
    x = torch.randn(3, 64)
    y_trained = layer(x).detach()
    layer.scores.requires_grad_(False)
    y_sparse = layer(x)
    assert layer.last_path == "sparse(bsr16)"
    torch.testing.assert_close(y_sparse, y_trained, rtol=1e-5, atol=1e-5)
    assert layer.packed_pattern().density == pytest.approx(0.5)
    layer.density = 0.25  # a new top-k target changes the pattern
    assert layer.packed_pattern().density == pytest.approx(0.25)


def test_dtype_change_and_autocast():
    layer = MaskedLinear(32, 16, sparse_path="always")
    layer.prune_magnitude(0.5)
    x = torch.randn(2, 32)
    layer(x)
    layer.double()
    y = layer(x.double())
    assert y.dtype == torch.float64 and layer.last_path == "sparse(csr)"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer.float()(x)
    assert layer.last_path == "dense-masked"


def test_sparse_path_through_backend_choice():
    layer = MaskedLinear(32, 16, block=16, sparse_path="always")
    with torch.no_grad():
        layer.bias.normal_()
    layer.prune_magnitude(0.5)
    x = torch.randn(2, 32)
    calls = []
    reference = sk.BACKENDS["reference"]
    with sk.use_backend("reference"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(reference, "dds_t", lambda *a: calls.append(1) or type(reference).dds_t(reference, *a))
        y = layer(x)
    assert layer.last_path == "sparse(bsr16)" and calls  # the chosen backend ran the product
    w = (layer.weight * layer.mask).detach()
    assert layer.mask.float().mean() == 0.5
    ref, _ = ref_linear(x, w, layer.bias.detach())  # float64 dense masked product
    assert_close_to_ref(y.detach(), ref, torch.nn.functional.linear(x, w, layer.bias.detach()))
