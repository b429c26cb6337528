"""Tiny in-memory BERT classifiers, tokenizers and datasets for the training-layer tests."""

from __future__ import annotations

import csv
import os
import random

WORDS = (
    "good great fine superb lovely brilliant moving funny warm clever "
    "bad awful dull boring weak messy tedious flat stale clumsy "
    "the a movie film story plot acting cast script and but very quite rather it is was"
).split()
POS, NEG = WORDS[:10], WORDS[10:20]
FILL = WORDS[20:]


def tiny_config(num_labels=2, hidden=32, layers=2, heads=2, intermediate=64, dropout=0.1, vocab=64):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=num_labels,
        attn_implementation="eager",
    )


def tiny_bert(**kw):
    from transformers import BertForSequenceClassification

    return BertForSequenceClassification(tiny_config(**kw))


def write_vocab(path: str) -> str:
    toks = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    with open(path, "w") as f:
        f.write("\n".join(toks) + "\n")
    return path


def tiny_tokenizer(tmpdir: str):
    from transformers import BertTokenizer  # the fast (tokenizers) implementation in transformers 5

    return BertTokenizer(vocab=write_vocab(os.path.join(tmpdir, "vocab.txt")), do_lower_case=True)


def sentences(n: int, seed: int = 0):
    """``n`` (text, label) pairs: label 1 iff positive words outnumber negative ones."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.random() < 0.5
        k = rng.randint(1, 3)
        words = rng.sample(POS if label else NEG, k) + rng.sample(FILL, rng.randint(2, 8))
        rng.shuffle(words)
        out.append((" ".join(words), int(label)))
    return out


def write_csv(path: str, rows, header=("sentence", "label")) -> str:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def save_tiny_model_dir(path: str, **kw) -> str:
    """A tiny BERT classifier + tokenizer saved like a Hugging Face model directory."""
    os.makedirs(path, exist_ok=True)
    model = tiny_bert(**kw)
    model.save_pretrained(path)
    tiny_tokenizer(path).save_pretrained(path)
    return path
