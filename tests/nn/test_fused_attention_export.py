"""sk.export's fused QKV + CPU attention kernel on tiny random BERT / RoBERTa models: the same
outputs as the unfused export (with and without padding), SDPA where the kernel does not apply,
and the saved folder unchanged."""

import copy
import json

import pytest
import torch
from tiny_models import TINY, tiny_model, token_ids

import spd_kernels as sk
from spd_kernels import _ext
from spd_kernels import attention as sa
from spd_kernels.surgery import FusedQKVAttention

pytestmark = pytest.mark.skipif(not sa.available(), reason="the cpu attention kernel is not built")


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls of the attention kernel."""
    calls = []
    real = _ext.c_op

    def c_op(name):
        op = real(name)
        if name != "cpu_attention":
            return op
        return lambda *a: calls.append(a[0].shape) or op(*a)

    monkeypatch.setattr(_ext, "c_op", c_op)
    return calls


def _padded_batch(batch=4, seq=13):
    ids = token_ids(batch, seq)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, 9:] = 0
    mask[2, 3:] = 0
    return ids, mask


def _pair(arch="bert", block=16, **config):
    model = tiny_model(arch)
    for k, v in config.items():
        setattr(model.config, k, v)
    sk.sparsify(model, block=block, density=0.3)
    ref = sk.export(copy.deepcopy(model), fuse_qkv=False)
    return sk.export(model), ref


def _last(model, ids, mask=None, **kw):
    return model(input_ids=ids, attention_mask=mask, **kw).logits


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("block", [(1, 1), (16, 16)])
def test_fused_export_matches_unfused(arch, block, kernel_calls):
    fused, ref = _pair(arch, block)
    n_layers = TINY["layers"]
    assert sum(isinstance(m, FusedQKVAttention) for m in fused.modules()) == n_layers
    assert not any(isinstance(m, FusedQKVAttention) for m in ref.modules())
    ids, mask = _padded_batch()
    with torch.inference_mode():
        for m in (None, mask):
            got, want = _last(fused, ids, m), _last(ref, ids, m)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        hidden = fused.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden_ref = ref.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(hidden, hidden_ref, rtol=1e-5, atol=1e-5)
    assert len(kernel_calls) == 3 * n_layers
    # same module tree and state dict as the unfused export
    assert fused.state_dict().keys() == ref.state_dict().keys()
    assert [n for n, _ in fused.named_modules()] == [n for n, _ in ref.named_modules()]


def test_head_dim_not_a_multiple_of_8_keeps_sdpa(kernel_calls):
    # hidden 64 / 16 heads = head dim 4: no kernel, the module's own SDPA
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=16, intermediate_size=64,
                        vocab_size=100, max_position_embeddings=32)  # fmt: skip
    model = sk.sparsify(tf.BertModel(cfg).eval(), block=16, density=0.5)
    ref = sk.export(copy.deepcopy(model), fuse_qkv=False)
    sk.export(model)
    ids, mask = _padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=ids, attention_mask=mask).last_hidden_state,
            ref(input_ids=ids, attention_mask=mask).last_hidden_state,
        )
    assert kernel_calls == []


def test_maps_grad_and_training_fall_back_to_sdpa(kernel_calls):
    fused, ref = _pair()
    ids, mask = _padded_batch()
    with torch.no_grad():  # SDPA returns no maps; the fused model does what the unfused one does
        o = fused(input_ids=ids, attention_mask=mask, output_attentions=True)
        r = ref(input_ids=ids, attention_mask=mask, output_attentions=True)
        assert len(o.attentions) == len(r.attentions) and kernel_calls == []
        torch.testing.assert_close(o.logits, r.logits)
        # maps from the eager attention: the module's own forward computes them
        for m in (fused, ref):
            m.set_attn_implementation("eager")
        o = fused(input_ids=ids, attention_mask=mask, output_attentions=True)
        r = ref(input_ids=ids, attention_mask=mask, output_attentions=True)
        for m in (fused, ref):
            m.set_attn_implementation("sdpa")
    assert kernel_calls == []
    assert o.attentions is not None and len(o.attentions) == TINY["layers"]
    for a, b in zip(o.attentions, r.attentions):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(o.logits, r.logits)
    # autograd recording: SDPA, gradients flow
    out = _last(fused, ids, mask)
    assert kernel_calls == []
    out.sum().backward()
    assert fused.bert.encoder.layer[0].attention.self.query.values.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(out, _last(ref, ids, mask))
        _last(fused, ids, mask)
    assert len(kernel_calls) == TINY["layers"]


def test_a_mask_that_is_not_key_padding_keeps_sdpa(kernel_calls):
    fused, ref = _pair()
    ids, _ = _padded_batch()
    holes = torch.ones_like(ids)
    holes[0, 2] = 0  # a hole in the middle: not plain padding
    with torch.no_grad():
        torch.testing.assert_close(_last(fused, ids, holes), _last(ref, ids, holes), rtol=1e-5, atol=1e-5)
    assert kernel_calls == []


def test_changed_weights_are_refused_from_a_stale_fused_copy():
    fused, ref = _pair()
    ids, mask = _padded_batch()
    with torch.no_grad():
        for m in (fused, ref):
            m.bert.encoder.layer[1].attention.self.value.values.mul_(-2.0)
            m.bert.encoder.layer[0].attention.self.query.bias.add_(0.5)
        torch.testing.assert_close(_last(fused, ids, mask), _last(ref, ids, mask), rtol=1e-5, atol=1e-5)
    fused.load_state_dict(tiny_model().state_dict(), strict=False)  # dense keys: ignored
    sd = {k: v * 1.5 if k.endswith("values") else v for k, v in ref.state_dict().items()}
    ref.load_state_dict(sd)
    fused.load_state_dict(sd)
    with torch.no_grad():
        torch.testing.assert_close(_last(fused, ids, mask), _last(ref, ids, mask), rtol=1e-5, atol=1e-5)


def test_save_load_and_densify_keep_the_format(tmp_path):
    fused, ref = _pair()
    ids, mask = _padded_batch()
    sk.save_pretrained(fused, tmp_path / "fused")
    sk.save_pretrained(ref, tmp_path / "ref")
    man = [json.loads((tmp_path / d / "spd_sparsity.json").read_text()) for d in ("fused", "ref")]
    assert man[0]["layers"] == man[1]["layers"]
    loaded = sk.load_pruned(tmp_path / "fused")
    assert sum(isinstance(m, FusedQKVAttention) for m in loaded.modules()) == TINY["layers"]
    with torch.no_grad():
        want = _last(ref, ids, mask)
        torch.testing.assert_close(_last(loaded, ids, mask), want, rtol=1e-5, atol=1e-5)
        sk.densify(fused)
        assert not any(isinstance(m, FusedQKVAttention) for m in fused.modules())
        assert type(fused.bert.encoder.layer[0].attention.self).__name__ == "BertSelfAttention"
        torch.testing.assert_close(_last(fused, ids, mask), want, rtol=1e-5, atol=1e-5)
