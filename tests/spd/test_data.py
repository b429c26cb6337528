import json
import os

import pytest
import torch
from spd_tiny import sentences, tiny_tokenizer, write_csv

from spd import data as D
from spd.metrics import accuracy, compute_metrics, f1, mcc, pearson, spearman


def test_rotten_tomatoes_split_is_deterministic():
    splits, info = D.load_rotten_tomatoes(seed=0)
    again, _ = D.load_rotten_tomatoes(seed=0)
    n = {k: len(v) for k, v in splits.items()}
    assert sum(n.values()) == 7403 + 5405  # plot rows dropped
    assert n == {"train": 10246, "validation": 1281, "test": 1281}
    assert splits["test"].texts == again["test"].texts and splits["test"].labels == again["test"].labels
    assert sum(sum(s.labels) for s in splits.values()) == 7403  # fresh = 1
    train = set(splits["train"].texts)
    assert not train & set(splits["test"].texts[:200])
    other, _ = D.load_rotten_tomatoes(seed=1)
    assert other["test"].texts != splits["test"].texts
    assert info.num_labels == 2 and info.main_metric == "accuracy"


def _glue_dict(task):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    rows = sentences(40, seed=3)
    if task == "stsb":
        feats = Features(
            {
                "sentence1": Value("string"),
                "sentence2": Value("string"),
                "label": Value("float32"),
                "idx": Value("int32"),
            }
        )
        mk = lambda rs: Dataset.from_dict(  # noqa: E731
            {
                "sentence1": [r[0] for r in rs],
                "sentence2": [r[0][::-1] for r in rs],
                "label": [2.5 * r[1] + 0.5 for r in rs],
                "idx": list(range(len(rs))),
            },
            features=feats,
        )
    else:
        feats = Features(
            {
                "sentence1": Value("string"),
                "sentence2": Value("string"),
                "label": ClassLabel(names=["not_equivalent", "equivalent"]),
                "idx": Value("int32"),
            }
        )
        mk = lambda rs: Dataset.from_dict(  # noqa: E731
            {
                "sentence1": [r[0] for r in rs],
                "sentence2": [r[0].upper() for r in rs],
                "label": [r[1] for r in rs],
                "idx": list(range(len(rs))),
            },
            features=feats,
        )
    return DatasetDict({"train": mk(rows[:30]), "validation": mk(rows[30:]), "test": mk(rows[30:])})


@pytest.mark.parametrize("task", ["mrpc", "stsb"])
def test_glue_path_with_in_memory_datasets(task):
    calls = []

    def loader(name, sub):
        calls.append((name, sub))
        return _glue_dict(task)

    cfg = D.DataConfig(task=task)
    splits, info = D.load_task(cfg, glue_loader=loader)
    assert calls == [("nyu-mll/glue", task)]
    assert len(splits["train"]) == 27 and len(splits["validation"]) == 3 and len(splits["test"]) == 10
    assert all(len(t) == 2 for t in splits["train"].texts)
    if task == "stsb":
        assert info.regression and info.metrics == ("pearson", "spearman")
        assert isinstance(splits["test"].labels[0], float)
    else:
        assert info.metrics[0] == "f1" and info.label_names == ["not_equivalent", "equivalent"]


def test_local_files_csv_tsv_json(tmp_path):
    rows = sentences(12)
    write_csv(tmp_path / "train.csv", [(t, "pos" if y else "neg") for t, y in rows])
    with open(tmp_path / "dev.tsv", "w") as f:
        f.write("sentence\tlabel\n" + "".join(f"{t}\t{'pos' if y else 'neg'}\n" for t, y in rows[:4]))
    with open(tmp_path / "test.jsonl", "w") as f:
        f.write(
            "".join(json.dumps({"sentence": t, "label": "pos" if y else "neg"}) + "\n" for t, y in rows[4:8])
        )
    cfg = D.DataConfig(
        task="files",
        train_file=str(tmp_path / "train.csv"),
        validation_file=str(tmp_path / "dev.tsv"),
        test_file=str(tmp_path / "test.jsonl"),
    )
    splits, info = D.load_task(cfg)
    assert info.label_names == ["neg", "pos"] and info.num_labels == 2
    assert splits["train"].labels == [y for _, y in rows]
    assert splits["test"].texts[0] == (rows[4][0],)
    with open(tmp_path / "reg.json", "w") as f:
        json.dump([{"text": "a", "score": 0.5}, {"text": "b", "score": 2}], f)
    splits, info = D.load_task(
        D.DataConfig(task="files", train_file=str(tmp_path / "reg.json"), label_field="score")
    )
    assert info.regression and splits["train"].labels == [0.5, 2.0]
    with open(tmp_path / "bad.json", "w") as f:
        json.dump([{"review": "a", "label": 1}], f)
    with pytest.raises(ValueError, match="no text column"):
        D.load_task(D.DataConfig(task="files", train_file=str(tmp_path / "bad.json")))
    with pytest.raises(ValueError, match="unknown task"):
        D.DataConfig(task="imdb")


def test_encode_cache_on_disk_and_collate(tmp_path):
    tok = tiny_tokenizer(str(tmp_path))
    split = D.TextSplit([(t,) for t, _ in sentences(20)], [y for _, y in sentences(20)])
    cache = str(tmp_path / "cache")
    D._MEMORY_CACHE.clear()
    enc = D.encode_split(tok, split, max_length=8, cache_dir=cache)
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].endswith(".safetensors")
    assert D.encode_split(tok, split, max_length=8, cache_dir=cache) is enc  # memory hit
    D._MEMORY_CACHE.clear()
    again = D.encode_split(tok, split, max_length=8, cache_dir=cache)  # disk hit
    assert again is not enc and torch.equal(again.ids, enc.ids) and torch.equal(again.offsets, enc.offsets)
    D.encode_split(tok, split, max_length=6, cache_dir=cache)
    assert len(os.listdir(cache)) == 2  # the key includes max_length
    lens = (enc.offsets[1:] - enc.offsets[:-1]).tolist()
    assert max(lens) <= 8
    b = enc.collate([0, 1, 2])
    width = max(lens[:3])
    assert b["input_ids"].shape == (3, width) and b["attention_mask"].sum(1).tolist() == lens[:3]
    direct = tok([split.texts[1][0]], truncation=True, max_length=8)["input_ids"][0]
    assert b["input_ids"][1, : len(direct)].tolist() == direct
    assert b["labels"].tolist() == split.labels[:3]


def test_order_and_sharding_cover_the_global_batch():
    order = D.epoch_order(23, seed=5, epoch=2)
    assert torch.equal(order, D.epoch_order(23, 5, 2)) and not torch.equal(order, D.epoch_order(23, 5, 3))
    assert sorted(order.tolist()) == list(range(23))
    for step in range(D.steps_per_epoch(23, 8)):
        want = order[step * 8 : (step + 1) * 8].tolist()
        got = [i for r in range(2) for m in D.step_indices(order, step, 8, 2, 2, r) for i in m]
        assert sorted(got) == sorted(want)
        single = [i for m in D.step_indices(order, step, 8, 2, 1, 0) for i in m]
        assert single == want


def test_metrics_hand_computed():
    y = [1, 0, 1, 1, 0, 0]
    p = [1, 0, 0, 1, 1, 0]
    assert accuracy(p, y) == pytest.approx(4 / 6)
    assert f1(p, y) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # tp=2 tn=2 fp=1 fn=1: (4 - 1) / sqrt(3*3*3*3) = 1/3
    assert mcc(p, y) == pytest.approx(1 / 3)
    assert mcc([0, 0, 0], [0, 1, 0]) == 0.0
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    # ties get average ranks: x ranks [1, 2.5, 2.5, 4], y ranks [1, 2, 3, 4]
    assert spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(pearson([1, 2.5, 2.5, 4], [1, 2, 3, 4]))
    assert compute_metrics(["accuracy", "mcc"], p, y) == {
        "accuracy": pytest.approx(4 / 6),
        "mcc": pytest.approx(1 / 3),
    }
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(["auc"], p, y)
