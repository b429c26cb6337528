"""End-to-end benchmark: a MiniLM-shaped BERT encoder (random weights, no download) with its
encoder linears pruned to block-sparse, against its dense twin (same weights, nn.Linear).

One group per (op, sparsity): the dense twin and the pruned model side by side.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import spd_kernels as sk
from spd_kernels.nn import topk_mask
from spd_kernels.profiling.model import dense_twin, example_inputs

SPARSITIES = (0.5, 0.9)
BLOCK = (32, 32)
BATCH, SEQ = 1, 64


@functools.lru_cache(maxsize=4)
def _models(sparsity: float):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=1000,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=128,
    )
    model = BertModel(cfg, add_pooling_layer=False).eval()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layer." in n]
    g = torch.Generator().manual_seed(1)
    for name in names:
        lin = model.get_submodule(name)
        n, k = lin.weight.shape
        keep = topk_mask(torch.rand(n // BLOCK[0], k // BLOCK[1], generator=g), 1.0 - sparsity)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, sk.SparseLinear.from_linear(lin, mask=keep, block=BLOCK))
    twin, _ = dense_twin(model)
    return model, twin.eval(), example_inputs(model, BATCH, SEQ)


def _step(model, inputs, op):
    if op == "forward":

        def fwd():
            with torch.no_grad():
                return model(**inputs).last_hidden_state

        return fwd
    params = [p for p in model.parameters() if p.requires_grad]

    def fwd_bwd():
        loss = model(**inputs).last_hidden_state.pow(2).mean()
        return torch.autograd.grad(loss, params, allow_unused=True)

    return fwd_bwd


@pytest.mark.parametrize("impl", ["dense_twin", "spd_kernels"])
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("op", ["forward", "fwd_bwd"])
def test_model(benchmark, op, sparsity, impl, rounds):
    sparse, twin, inputs = _models(sparsity)
    benchmark.group = f"minilm-shaped encoder tokens={BATCH * SEQ} | {op} | sparsity {sparsity:g} bsr32"
    benchmark.extra_info.update(op=op, impl=impl, sparsity=sparsity, tokens=BATCH * SEQ)
    model = sparse if impl == "spd_kernels" else twin
    fn = _step(model, inputs, op)
    if impl == "spd_kernels":  # same function as the twin before timing it
        torch.testing.assert_close(_step(sparse, inputs, "forward")(), _step(twin, inputs, "forward")())
    benchmark.pedantic(fn, rounds=max(3, rounds // 2), warmup_rounds=1, iterations=1)
