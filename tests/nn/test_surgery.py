"""sparsify / densify / export on tiny in-memory BERT, RoBERTa and DistilBERT models."""

import re

import pytest
import torch
from tiny_models import out, tiny_model, token_ids
from torch import nn

import spd_kernels as sk
from spd_kernels.nn import FusedActivation, MaskedLinear, SparseLinear, packing

ENCODER = {
    "bert": ["attention.self.query", "attention.self.key", "attention.self.value",
             "attention.output.dense", "intermediate.dense", "output.dense"],
    "distilbert": ["attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin",
                   "ffn.lin1", "ffn.lin2"],
}  # fmt: skip
ENCODER["roberta"] = ENCODER["bert"]
PREFIX = {
    "bert": "bert.encoder.layer",
    "roberta": "roberta.encoder.layer",
    "distilbert": "distilbert.transformer.layer",
}


def _masked_names(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, MaskedLinear))


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
def test_table_picks_the_encoder_linears(arch):
    model = sk.sparsify(tiny_model(arch), block=16)
    want = sorted(f"{PREFIX[arch]}.{i}.{s}" for i in range(2) for s in ENCODER[arch])
    assert _masked_names(model) == want
    assert sk.sparsity_config(model).block == (16, 16)
    # the pooler / classifier only when asked
    head = _masked_names(sk.sparsify(tiny_model(arch), include_head=True))
    extra = set(head) - set(want)
    assert extra and all("layer" not in n for n in extra)


def test_bare_encoder_and_user_names_or_regex():
    assert len(_masked_names(sk.sparsify(tiny_model("bert", head=False)))) == 12
    only = ["encoder.layer.1.intermediate.dense", "encoder.layer.0.attention.self.key"]
    m = sk.sparsify(tiny_model("bert", head=False), modules=only)
    assert _masked_names(m) == sorted(only)
    m = sk.sparsify(tiny_model("bert"), pattern=r".*\.attention\.self\.(query|value)")
    assert len(_masked_names(m)) == 4


def test_masks_and_magnitude_density():
    name = "bert.encoder.layer.0.intermediate.dense"
    mask = torch.rand(128, 64) > 0.5
    m = sk.sparsify(tiny_model(), block=1, masks={name: mask})
    assert torch.equal(m.get_submodule(name).mask, mask)
    m = sk.sparsify(tiny_model(), block=16, density=0.25)
    for layer in m.modules():
        if isinstance(layer, MaskedLinear):
            assert layer.weight_density == pytest.approx(0.25)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_densify_of_sparsify_is_identity_with_all_ones_masks(arch):
    ref = tiny_model(arch)
    model = tiny_model(arch)
    ids = token_ids()
    sk.densify(sk.sparsify(model, block=16, scores="topk"))
    assert sk.sparsity_config(model) is None
    assert not any(isinstance(m, MaskedLinear) for m in model.modules())
    sd, sd_ref = model.state_dict(), ref.state_dict()
    assert sd.keys() == sd_ref.keys()
    assert all(torch.equal(sd[k], sd_ref[k]) for k in sd)
    assert torch.equal(out(model, ids), out(ref, ids))


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
@pytest.mark.parametrize("block", [(1, 1), (16, 16), (32, 32)])
def test_masked_dense_and_exported_packed_agree(arch, block):
    ids = token_ids()
    model = sk.sparsify(tiny_model(arch), block=block, density=0.3, sparse_path="never")
    masked = out(model, ids)
    sk.export(model)
    assert not any(isinstance(m, MaskedLinear) for m in model.modules())
    packed = [m for m in model.modules() if isinstance(m, SparseLinear)]
    assert len(packed) == 12 and {p.layout for p in packed} == {packing.layout_name(block)}
    assert all(p.density <= 0.32 for p in packed)
    # the FFN's first linear carries the GELU in its epilogue; the activation module is gone
    fused = [m for m in model.modules() if isinstance(m, FusedActivation)]
    assert len(fused) == 2 and sum(p.activation == "gelu" for p in packed) == 2
    assert (out(model, ids) - masked).abs().max().item() <= 1e-4
    # densify restores plain linears and the activation modules, same outputs
    sk.densify(model)
    assert not any(isinstance(m, (SparseLinear, FusedActivation)) for m in model.modules())
    assert (out(model, ids) - masked).abs().max().item() <= 1e-4


def test_export_keeps_activations_without_an_epilogue():
    model = tiny_model("bert")
    model.config.hidden_act = "silu"
    for layer in model.bert.encoder.layer:
        layer.intermediate.intermediate_act_fn = nn.SiLU()
    ids = token_ids()
    sk.sparsify(model, block=16, density=0.5)
    before = out(model, ids)
    sk.export(model)
    assert not any(isinstance(m, FusedActivation) for m in model.modules())
    assert (out(model, ids) - before).abs().max().item() <= 1e-4
    assert sk.surgery.activation_name(nn.GELU(approximate="tanh")) == "gelu_tanh"


def test_bad_inputs_name_what_is_wrong():
    with pytest.raises(
        ValueError,
        match=r"layer 'bert\.encoder\.layer\.0\.attention\.self\.query'.*\(64, 64\).*block \(48, 48\)",
    ):
        sk.sparsify(tiny_model(), block=48)
    model = tiny_model()
    name = "bert.encoder.layer.0.output.dense"
    with pytest.raises(ValueError, match=rf"mask for layer '{re.escape(name)}'.*\(64, 64\)"):
        sk.sparsify(model, block=1, masks={name: torch.ones(64, 64, dtype=torch.bool)})
    assert not any(isinstance(m, MaskedLinear) for m in model.modules())  # untouched
    with pytest.raises(
        ValueError,
        match=r"no nn.Linear of BertForSequenceClassification matches the patterns \['nope.*'\]; "
        r"linear layers seen: \['bert\.encoder",
    ):
        sk.sparsify(tiny_model(), pattern="nope.*")
    with pytest.raises(ValueError, match="no module-name table for Sequential.*known model types"):
        sk.sparsify(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="module 'encoder.layer.9.output.dense' is not in"):
        sk.sparsify(tiny_model(head=False), modules=["encoder.layer.9.output.dense"])
    with pytest.raises(ValueError, match="is a LayerNorm, not an nn.Linear"):
        sk.sparsify(tiny_model(head=False), modules=["encoder.layer.0.output.LayerNorm"])
    with pytest.raises(ValueError, match="already sparsified"):
        sk.sparsify(sk.sparsify(tiny_model()))
    with pytest.raises(ValueError, match="not a valid regex"):
        sk.SparsityConfig(pattern="(")
    with pytest.raises(ValueError, match="scores must be one of"):
        sk.SparsityConfig(scores="movement")
    with pytest.raises(ValueError, match="set_masks|not a MaskedLinear"):
        sk.set_masks(tiny_model(), {"classifier": torch.ones(2, 64, dtype=torch.bool)})


def test_sparsity_config_json_round_trip():
    cfg = sk.SparsityConfig(block=(32, 16), scores="sigmoid_threshold", modules=["a.b"], density=0.5)
    back = sk.SparsityConfig.from_json(cfg.to_json())
    assert back == cfg and back.block == (32, 16)
    with pytest.raises(ValueError, match="unknown sparsity config keys"):
        sk.SparsityConfig.from_dict({"blocks": [1, 1]})


def test_exported_model_compiles_and_inference_does_not_repack(monkeypatch):
    torch._dynamo.reset()
    model = sk.export(sk.sparsify(tiny_model("bert", head=False), block=16, density=0.3))
    ids = token_ids(2, 8)
    ref = out(model, ids)
    calls = []
    for mod, name in ((packing, "pack_pattern"), (sk.SparseMatrix, "from_dense")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _r=real, **k: calls.append(1) or _r(*a, **k))
    with torch.inference_mode():
        for _ in range(2):
            eager = model(input_ids=ids).last_hidden_state
        assert torch.equal(eager, ref)
    assert calls == []  # nothing packed per call
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        got = compiled(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
