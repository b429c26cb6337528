"""Pruning at small-block granularity end to end on a tiny BERT: magnitude masks at block8x1,
block16x1 and block4x4 (whole blocks in or out), export to packed layers that run the cpu
backend, the same outputs as the masked dense model, and an exact save / load round trip."""

import pytest
import torch
from tiny_models import out, tiny_model, token_ids

import spd_kernels as sk
from spd import pruning
from spd_kernels.nn import MaskedLinear, SparseLinear, packing

SPARSITY = 0.75


@pytest.mark.parametrize("granularity", ["block8x1", "block16x1", "block4x4"])
def test_prune_export_save_load(tmp_path, granularity):
    block = pruning.parse_granularity(granularity)
    bm, bk = block
    model = sk.sparsify(tiny_model("bert"), block=block, sparse_path="never")
    mods = {n: m for n, m in model.named_modules() if isinstance(m, MaskedLinear)}
    assert len(mods) == 12
    config = pruning.PruningConfig(method="magnitude", sparsity=SPARSITY, granularity=granularity)
    pruning.Pruner(mods, config, total_steps=1).commit(SPARSITY)
    for name, m in mods.items():
        n, k = m.mask.shape
        blocks = m.mask.reshape(n // bm, bm, k // bk, bk).permute(0, 2, 1, 3).flatten(2)
        # every block all in or all out, and the largest-magnitude blocks kept
        assert bool((blocks.all(-1) | ~blocks.any(-1)).all()), name
        assert blocks.any(-1).float().mean().item() == pytest.approx(1 - SPARSITY, abs=0.01), name
        mag = m.weight.detach().abs().reshape(n // bm, bm, k // bk, bk).sum((1, 3))
        kept = blocks.any(-1)
        assert mag[kept].min() >= mag[~kept].max(), name

    ids = token_ids()
    masked = out(model, ids)
    # the masked dense model is the model with the pruned weights zeroed
    plain = tiny_model("bert")
    with torch.no_grad():
        for name, m in mods.items():
            plain.get_submodule(name).weight.mul_(m.mask)
    assert (out(plain, ids) - masked).abs().max().item() <= 1e-5

    sk.export(model)
    packed = [m for m in model.modules() if isinstance(m, SparseLinear)]
    assert len(packed) == 12 and {p.layout for p in packed} == {packing.layout_name(block)}
    assert all(tuple(p.block) == block for p in packed)
    for o in ("dds_t", "dds", "sdd"):
        assert sk.choose_backend(o, torch.device("cpu"), torch.float32, block).name == "cpu"
    exported = out(model, ids)
    assert (exported - masked).abs().max().item() <= 1e-4

    sk.save_pruned(model, tmp_path / "m")
    loaded = sk.load_pruned(tmp_path / "m")
    assert {tuple(m.block) for m in loaded.modules() if isinstance(m, SparseLinear)} == {block}
    assert torch.equal(out(loaded, ids), exported)
