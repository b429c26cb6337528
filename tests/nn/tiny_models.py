"""Tiny in-memory Hugging Face encoders (random weights, no download) for the layer tests."""

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = dict(hidden=64, layers=2, heads=2, intermediate=128, vocab=100, positions=32)


def tiny_model(arch: str = "bert", head: bool = True, seed: int = 0):
    """A tiny BERT / RoBERTa / DistilBERT (hidden 64, 2 layers, FFN 128), eval mode."""
    import transformers as tf

    torch.manual_seed(seed)
    t = TINY
    if arch == "bert":
        cfg = tf.BertConfig(
            hidden_size=t["hidden"], num_hidden_layers=t["layers"], num_attention_heads=t["heads"],
            intermediate_size=t["intermediate"], vocab_size=t["vocab"],
            max_position_embeddings=t["positions"],
        )  # fmt: skip
        cls = tf.BertForSequenceClassification if head else tf.BertModel
    elif arch == "roberta":
        cfg = tf.RobertaConfig(
            hidden_size=t["hidden"], num_hidden_layers=t["layers"], num_attention_heads=t["heads"],
            intermediate_size=t["intermediate"], vocab_size=t["vocab"],
            max_position_embeddings=t["positions"] + 2,
        )  # fmt: skip
        cls = tf.RobertaForSequenceClassification if head else tf.RobertaModel
    elif arch == "distilbert":
        cfg = tf.DistilBertConfig(
            dim=t["hidden"], n_layers=t["layers"], n_heads=t["heads"], hidden_dim=t["intermediate"],
            vocab_size=t["vocab"], max_position_embeddings=t["positions"],
        )  # fmt: skip
        cls = tf.DistilBertForSequenceClassification if head else tf.DistilBertModel
    else:
        raise ValueError(arch)
    return cls(cfg).eval()


def out(model, ids):
    """The model's main output tensor (logits or last hidden state)."""
    with torch.no_grad():
        o = model(input_ids=ids)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def token_ids(batch: int = 3, seq: int = 12) -> torch.Tensor:
    return torch.randint(3, TINY["vocab"], (batch, seq), generator=torch.Generator().manual_seed(1))
