"""Training throughput changes: length-grouped batches, the teacher-output cache, attention
implementations. Each test would fail if its change broke."""

import os
import random

import pytest
import torch
from spd_tiny import tiny_bert

from spd import data as D
from spd.models import ATTN_NO_DROPOUT, attention_implementation, get_attention_implementation
from spd.teacher_cache import TeacherCache, cached_evaluation


def _split(n=150, seed=0, max_len=40):
    """An EncodedSplit of n sentences with Rotten-Tomatoes-like lengths (5..max_len tokens)."""
    rng = random.Random(seed)
    lens = [min(max_len, max(5, int(rng.gauss(25, 9)))) for _ in range(n)]
    ids = torch.randint(5, 60, (sum(lens),))
    ids[torch.tensor([0] + list(torch.tensor(lens).cumsum(0)[:-1].tolist()))] = 2  # [CLS]
    offsets = torch.zeros(n + 1, dtype=torch.long)
    offsets[1:] = torch.tensor(lens).cumsum(0)
    return D.EncodedSplit(ids, torch.zeros_like(ids), offsets, torch.randint(0, 2, (n,)))


def test_grouped_order_is_a_pure_permutation_with_little_padding():
    split = _split(n=1000)
    lens = split.lengths
    order = D.epoch_order(len(lens), 3, 1, lens, batch_size=32, group_window=50)
    assert sorted(order.tolist()) == list(range(1000))
    assert torch.equal(order, D.epoch_order(1000, 3, 1, lens, 32, 50))  # pure function
    assert not torch.equal(order, D.epoch_order(1000, 3, 2, lens, 32, 50))  # new epoch, new order
    batches = [order[i : i + 32].tolist() for i in range(0, 1000, 32)]
    pad, tot = D.padding_share(lens, batches)
    rand = D.epoch_order(1000, 3, 1)
    rpad, rtot = D.padding_share(lens, [rand[i : i + 32].tolist() for i in range(0, 1000, 32)])
    assert pad / tot < 0.10 < 0.30 < rpad / rtot
    # the short batch (1000 % 32 = 8 examples) stays last, where step_indices expects it
    assert len(batches[-1]) == 8
    # the batch sequence is shuffled, not sorted by length
    maxes = [max(lens[i] for i in b) for b in batches[:-1]]
    assert maxes != sorted(maxes) and maxes != sorted(maxes, reverse=True)


def test_padding_share_hand_computed():
    assert D.padding_share([3, 5, 2], [[0, 1], [2]]) == (2, 12)


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    return tiny_bert(dropout=0.1, vocab=64).eval()


def _live(teacher, split, idx):
    b = split.collate(idx)
    with torch.no_grad(), attention_implementation(teacher, "eager"):
        return b, teacher(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            token_type_ids=b["token_type_ids"],
            output_hidden_states=True,
            output_attentions=True,
        )


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float16", 2e-3), ("bfloat16", 2e-2)])
def test_cached_targets_equal_live_teacher(tmp_path, teacher, dtype, tol):
    split = _split(n=70)
    cache = TeacherCache(teacher, split, ("logits", "hidden", "attn"), str(tmp_path), dtype, 16).prepare()
    assert cache.built
    idx = [5, 61, 3, 40]
    b, live = _live(teacher, split, idx)
    got = cache.targets(idx, b["input_ids"].shape[1], "cpu")
    m = b["attention_mask"].bool()
    torch.testing.assert_close(got.logits, live.logits, rtol=1e-5, atol=1e-5)
    for g, t in zip(got.hidden_states, live.hidden_states):
        torch.testing.assert_close(g[m], t[m], rtol=tol, atol=tol)
        assert torch.all(g[~m] == 0)
    pair = m[:, None, :, None] & m[:, None, None, :]
    for g, t in zip(got.attentions, live.attentions):
        torch.testing.assert_close(g[pair.expand_as(g)], t[pair.expand_as(t)], rtol=tol, atol=tol)
    assert cache.hits == 4
    # a second cache object with the same key loads from disk, bitwise the same
    again = TeacherCache(teacher, split, ("logits", "hidden", "attn"), str(tmp_path), dtype, 16).prepare()
    assert not again.built
    g2 = again.targets(idx, b["input_ids"].shape[1], "cpu")
    assert all(torch.equal(x, y) for x, y in zip(g2.hidden_states, got.hidden_states))


def test_cache_key_changes_with_teacher_data_and_fields(tmp_path, teacher):
    split = _split(n=40)
    key = TeacherCache(teacher, split, ("logits",), str(tmp_path)).key
    other = _split(n=40, seed=1)
    assert TeacherCache(teacher, other, ("logits",), str(tmp_path)).key != key
    assert TeacherCache(teacher, split, ("logits", "hidden"), str(tmp_path)).key != key
    assert TeacherCache(teacher, split, ("logits",), str(tmp_path), "float32").key != key
    with torch.no_grad():
        teacher.classifier.weight[0, 0] += 1e-3
    assert TeacherCache(teacher, split, ("logits",), str(tmp_path)).key != key
    with pytest.raises(ValueError, match="fields must include 'logits'"):
        TeacherCache(teacher, split, ("hidden",), str(tmp_path))
    with pytest.raises(ValueError, match="dtype"):
        TeacherCache(teacher, split, ("logits",), str(tmp_path), "int8")


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest"])
def test_damaged_cache_is_reported_and_rebuilt(tmp_path, teacher, capsys, damage):
    split = _split(n=30)
    fields = ("logits", "hidden")
    first = TeacherCache(teacher, split, fields, str(tmp_path), "float16").prepare()
    shard = os.path.join(first.dir, "shard-00000.safetensors")
    if damage == "truncate":
        with open(shard, "r+b") as f:
            f.truncate(os.path.getsize(shard) - 100)
    elif damage == "flip":
        with open(shard, "r+b") as f:
            f.seek(os.path.getsize(shard) - 50)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0xFF]))
    else:
        with open(os.path.join(first.dir, "manifest.json"), "w") as f:
            f.write("{not json")
    with pytest.raises(ValueError, match="shard|checksum|manifest|corrupt"):
        TeacherCache(teacher, split, fields, str(tmp_path), "float16").load()
    again = TeacherCache(teacher, split, fields, str(tmp_path), "float16").prepare()
    assert again.built and "teacher cache damaged" in capsys.readouterr().err
    idx = [0, 1]
    w = split.collate(idx)["input_ids"].shape[1]
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            again.targets(idx, w, "cpu").hidden_states, first.targets(idx, w, "cpu").hidden_states
        )
    )


def test_teacher_evaluation_is_computed_once(tmp_path, teacher):
    split = _split(n=10)
    calls = []

    def ev():
        calls.append(1)
        return {"accuracy": 0.5}

    assert cached_evaluation(teacher, split, ev, str(tmp_path)) == {"accuracy": 0.5}
    assert cached_evaluation(teacher, split, ev, str(tmp_path)) == {"accuracy": 0.5}
    assert len(calls) == 1
    cached_evaluation(teacher, _split(n=11), ev, str(tmp_path))
    assert len(calls) == 2


def test_attention_maps_before_dropout_and_sdpa_equivalence():
    torch.manual_seed(1)
    m = tiny_bert(dropout=0.5)
    ids = torch.randint(5, 60, (2, 9))
    am = torch.ones(2, 9, dtype=torch.long)
    am[1, 6:] = 0
    m.train()
    with attention_implementation(m, ATTN_NO_DROPOUT):
        maps = m(input_ids=ids, attention_mask=am, output_attentions=True).attentions
    with attention_implementation(m, "eager"):
        dropped = m(input_ids=ids, attention_mask=am, output_attentions=True).attentions
    # no dropout in the maps: every row is a distribution, padded keys get exactly 0
    for a in maps:
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)))
        assert torch.all(a[1, :, :, 6:] == 0)
    # Hugging Face's eager maps carry dropout (zeros and 1/(1-p) scaling): rows do not sum to 1
    assert not torch.allclose(dropped[0].sum(-1), torch.ones_like(dropped[0].sum(-1)))
    m.eval()
    with attention_implementation(m, "sdpa"):
        fast = m(input_ids=ids, attention_mask=am).logits
    with attention_implementation(m, ATTN_NO_DROPOUT):
        slow = m(input_ids=ids, attention_mask=am).logits
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    assert get_attention_implementation(m) == "eager"  # restored (the tiny model is built eager)


def test_none_switches_off_the_disk_caches_on_the_command_line():
    import argparse

    from spd.config import add_dataclass_arguments, build_config
    from spd.trainer import TrainConfig

    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, TrainConfig)
    add_dataclass_arguments(p, D.DataConfig)
    args = p.parse_args(["--teacher-cache", "none", "--cache-dir", "none"])
    assert build_config(TrainConfig, args).teacher_cache == "none"
    assert build_config(D.DataConfig, args).cache_dir == "none"
    assert build_config(TrainConfig, p.parse_args([])).teacher_cache is None  # the default location
