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
        json.dump([{"text": f"t{i}", "score": 0.5 * i} for i in range(20)], f)
    splits, info = D.load_task(
        D.DataConfig(task="files", train_file=str(tmp_path / "reg.json"), label_field="score")
    )
    assert info.regression and info.label_names is None
    got = {t[0]: y for s in splits.values() for t, y in zip(s.texts, s.labels)}
    assert got == {f"t{i}": 0.5 * i for i in range(20)} and len(splits["train"]) == 16
    with open(tmp_path / "bad.json", "w") as f:
        json.dump([{"review": "a", "label": 1}], f)
    with pytest.raises(ValueError, match="no text column"):
        D.load_task(D.DataConfig(task="files", train_file=str(tmp_path / "bad.json")))
    with pytest.raises(ValueError, match="unknown task"):
        D.DataConfig(task="imdb")


def test_quoted_newlines_and_commas_stay_in_their_text(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("sentence,label\n" + '"good, not\ngreat",1\nbad,0\n"dull\nfilm",0\nfine,1\n' * 3)
    splits, _ = D.load_task(D.DataConfig(train_file=str(path)))
    texts = {t[0] for s in splits.values() for t in s.texts}
    assert texts == {"good, not\ngreat", "bad", "dull\nfilm", "fine"}


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


# ---------------------------------------------------------------------- users' own files
def _rows_csv(path, rows, header=("sentence", "label")):
    write_csv(path, rows, header)
    return str(path)


def _unique_rows(n, seed=0, label=lambda i, y: y):
    """``n`` (text, label) rows whose texts are all different (row i ends with 'w<i>')."""
    return [(f"{t} w{i}", label(i, y)) for i, (t, y) in enumerate(sentences(n, seed))]


def test_train_file_implies_task_files_and_is_never_replaced(tmp_path):
    path = _rows_csv(tmp_path / "mine.csv", _unique_rows(40))
    cfg = D.DataConfig(train_file=path)  # before: task defaulted to the embedded Rotten Tomatoes
    assert cfg.task == "files"
    splits, info = D.load_task(cfg)
    assert info.name == "mine.csv" and sum(len(s) for s in splits.values()) == 40
    assert all(t[0].endswith(tuple(f"w{i}" for i in range(40))) for s in splits.values() for t in s.texts)
    with pytest.raises(ValueError, match="would be ignored by --task rotten_tomatoes: drop --task"):
        D.DataConfig(task="rotten_tomatoes", train_file=path)
    with pytest.raises(ValueError, match="--validation-file would be ignored by --task sst2"):
        D.DataConfig(task="sst2", validation_file=path)
    assert D.DataConfig().task == D.EMBEDDED_TASK


def test_missing_splits_are_carved_from_the_training_file_never_evaluated_on_its_rows(tmp_path):
    rows = _unique_rows(60, seed=2, label=lambda i, y: int(i < 15))  # 25 % positive
    path = _rows_csv(tmp_path / "train.csv", rows)
    splits, info = D.load_task(D.DataConfig(train_file=path, split_seed=4))
    tr, va, te = (set(splits[k].texts) for k in ("train", "validation", "test"))
    # before: validation and test were the training file itself
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert (len(tr), len(va), len(te)) == (48, 6, 6) and len(tr | va | te) == 60
    assert "carved 6 rows each" in info.notes[0] and "--split-seed 4" in info.notes[0]
    assert "held out" in info.report["splits"]["validation"]
    # stratified: the 25 % class is in both carved splits in about its share
    assert sum(splits["validation"].labels) in (1, 2) and sum(splits["test"].labels) in (1, 2)
    again, _ = D.load_task(D.DataConfig(train_file=path, split_seed=4))
    assert again["validation"].texts == splits["validation"].texts
    other, _ = D.load_task(D.DataConfig(train_file=path, split_seed=5))
    assert other["validation"].texts != splits["validation"].texts
    # a given validation file: only the test split is carved
    dev = _rows_csv(tmp_path / "dev.csv", _unique_rows(8, seed=9))
    splits, info = D.load_task(D.DataConfig(train_file=path, validation_file=dev))
    assert len(splits["validation"]) == 8 and len(splits["test"]) == 6 and len(splits["train"]) == 54
    assert not set(splits["test"].texts) & set(splits["train"].texts)
    assert "no --test-file" in info.notes[0]
    with pytest.raises(ValueError, match="is the file given to --train-file"):
        D.load_task(D.DataConfig(train_file=path, validation_file=path))
    # duplicate rows: the carved rows are held out, their text may not be; that is said
    dups = _rows_csv(tmp_path / "dups.csv", rows + rows[:30])
    splits, info = D.load_task(D.DataConfig(train_file=dups))
    n_seen = sum(t in set(splits["train"].texts) for t in splits["test"].texts)
    assert n_seen > 0 and info.report["test_texts_in_train"] == n_seen
    want = f"warning: {n_seen} of the 9 test examples have a text that also occurs in training"
    assert any(n.startswith(want) for n in info.notes)


@pytest.mark.parametrize(
    "values, names",
    [
        ([-1, 1], ["-1", "1"]),  # before: num_labels = max + 1 = 2 with the label -1: a crash
        ([1, 2, 3, 4, 5], ["1", "2", "3", "4", "5"]),  # before: six classes, class 0 never seen
        ([0, 1], ["0", "1"]),
        (["pos", "neg"], ["neg", "pos"]),
        (["1.0", "3", "2"], ["1", "2", "3"]),  # '1.0' is the number 1
        ([10, 2, 100], ["2", "10", "100"]),  # numerically, not as strings
    ],
)
def test_labels_map_to_ids_from_the_values_seen(tmp_path, values, names):
    rows = [(t, values[i % len(values)]) for i, (t, _) in enumerate(_unique_rows(30))]
    splits, info = D.load_task(D.DataConfig(train_file=_rows_csv(tmp_path / "t.csv", rows)))
    assert info.label_names == names and info.num_labels == len(names) and not info.regression
    ids = {n: i for i, n in enumerate(names)}
    by_text = {t: D._label_key(v) for t, v in rows}
    for s in splits.values():
        assert all(y == ids[by_text[t[0]]] for t, y in zip(s.texts, s.labels))
    assert set(splits["train"].labels) == set(range(len(names)))
    assert info.report["label2id"] == ids


def test_label_order_and_the_teacher_mapping_check(tmp_path):
    from transformers import BertConfig

    rows = [(t, "pos" if y else "neg") for t, y in _unique_rows(30)]
    path = _rows_csv(tmp_path / "t.csv", rows)
    _, info = D.load_task(D.DataConfig(train_file=path, label_order="pos,neg"))
    assert info.label_names == ["pos", "neg"]
    with pytest.raises(ValueError, match=r"missing \['neg'\]"):
        D.load_task(D.DataConfig(train_file=path, label_order="pos,neu"))
    _, info = D.load_task(D.DataConfig(train_file=path))  # neg -> 0, pos -> 1
    teacher = BertConfig(id2label={0: "pos", 1: "neg"}, label2id={"pos": 0, "neg": 1})
    # before: never checked, the teacher's targets silently inverted
    with pytest.raises(ValueError) as e:
        D.check_label_mapping(teacher, info, "teacher t/")
    msg = str(e.value)
    assert "\n" not in msg
    assert "teacher t/ maps labels {'pos': 0, 'neg': 1} but the data maps {'neg': 0, 'pos': 1}" in msg
    assert "--label-order pos,neg" in msg
    D.check_label_mapping(BertConfig(id2label={0: "neg", 1: "pos"}), info, "same")
    D.check_label_mapping(BertConfig(id2label={0: "NEG", 1: "Pos"}), info, "the same names in other case")
    glue = D.TaskInfo("sst2", 2, ("accuracy",), ["negative", "positive"], report={"source": "sst2"})
    with pytest.raises(ValueError, match="use a model trained with this labelling"):  # no --label-order
        D.check_label_mapping(BertConfig(id2label={0: "POSITIVE", 1: "NEGATIVE"}), glue, "t")
    D.check_label_mapping(BertConfig(num_labels=2), info, "placeholder names LABEL_0/1 are not checked")
    # bare ids 0/1 in the data are the teacher's ids, whatever it names them
    _, ids_info = D.load_task(D.DataConfig(train_file=_rows_csv(tmp_path / "i.csv", _unique_rows(30))))
    D.check_label_mapping(teacher, ids_info, "teacher")
    with pytest.raises(ValueError, match="maps labels"):
        D.check_label_mapping(BertConfig(id2label={0: "1", 1: "0"}), ids_info, "swapped ids")
    # the mapping goes into the config of the model that trains
    cfg = BertConfig(num_labels=2)
    D.apply_label_mapping(type("M", (), {"config": cfg})(), info)
    assert cfg.id2label == {0: "neg", 1: "pos"} and cfg.label2id == {"neg": 0, "pos": 1}
    with pytest.raises(ValueError, match="the model maps labels"):
        D.apply_label_mapping(type("M", (), {"config": teacher})(), info)


def test_sample_limits_draw_a_seeded_random_subset(tmp_path):
    rows = sorted(_unique_rows(80, seed=3), key=lambda r: r[1])  # a label-sorted file
    assert rows[0][1] == 0 and rows[-1][1] == 1
    path = _rows_csv(tmp_path / "sorted.csv", rows)
    dev = _rows_csv(tmp_path / "dev.csv", sorted(_unique_rows(40, seed=4), key=lambda r: r[1]))
    cfg = D.DataConfig(train_file=path, validation_file=dev, max_train_samples=10, max_eval_samples=8)
    splits, info = D.load_task(cfg)
    # before: the first 10 rows, one class only
    assert len(splits["train"]) == 10 and set(splits["train"].labels) == {0, 1}
    assert len(splits["validation"]) == 8 and set(splits["validation"].labels) == {0, 1}
    assert splits["train"].texts != [(t,) for t, _ in rows[:10]]
    assert any("a seeded random 10 of" in n for n in info.notes)
    again, _ = D.load_task(cfg)
    assert again["train"].texts == splits["train"].texts
    other, _ = D.load_task(D.DataConfig(train_file=path, max_train_samples=10, split_seed=1))
    assert other["train"].texts != splits["train"].texts


def test_truncation_is_reported_with_a_warning_above_the_threshold(tmp_path):
    import io

    tok = tiny_tokenizer(str(tmp_path))
    long = D.TextSplit([(" ".join(["good film"] * 10),)] * 3 + [("bad",)] * 17, [1] * 3 + [0] * 17)
    enc = D.encode_split(tok, long, max_length=8, cache_dir=str(tmp_path / "c"))
    rep = D.truncation_report(enc)
    # 3 of 20 examples cut: 22 tokens each ([CLS] + 20 words + [SEP]) kept to 8
    assert rep["examples_cut"] == 3 and rep["share_examples_cut"] == pytest.approx(0.15)
    assert rep["tokens_cut"] == 3 * 14 and rep["tokens"] == 3 * 22 + 17 * 3 and rep["longest"] == 22
    D._MEMORY_CACHE.clear()  # the disk cache keeps the full lengths
    assert D.truncation_report(D.encode_split(tok, long, 8, cache_dir=str(tmp_path / "c"))) == rep
    info = D.TaskInfo("t", 2, ("accuracy",), ["0", "1"])
    out = io.StringIO()
    lines = D.report_data(info, {"train": enc}, 8, stream=out)
    assert lines == out.getvalue().splitlines()
    assert "train 15.0 % of examples (35.9 % of tokens)" in lines[0]  # 42 of 117
    assert lines[1].startswith("warning: 15 % of the train examples are longer than --max-length 8")
    assert info.report["truncation"]["train"] == rep and info.report["warnings"] == [lines[1]]
    short = D.encode_split(tok, long, max_length=32, cache_dir="none")
    assert D.truncation_report(short)["examples_cut"] == 0
    lines = D.report_data(D.TaskInfo("t", 2, ("accuracy",)), {"train": short}, 32, stream=io.StringIO())
    assert not any(x.startswith("warning") for x in lines)


# (case, file name, contents (None: no file), extra options, where, message fragment)
BAD_FILES = [
    ("missing file", "nofile.csv", None, {}, "--train-file", "No such file or directory"),
    ("unsupported type", "a.xlsx", "x", {}, "a.xlsx", "unsupported file type"),
    ("no rows", "e.csv", "sentence,label\n", {}, "e.csv", "no rows"),
    ("no text column", "n.csv", "review,label\na,1\nb,0\n", {}, "n.csv", "no text column"),
    ("no label column", "l.csv", "sentence\na\nb\n", {}, "l.csv", "label column 'label' missing"),
    ("empty label", "el.csv", "sentence,label\na,1\nb,\nc,0\n", {}, "row 2", "missing or empty"),
    ("one class", "o.csv", "sentence,label\na,1\nb,1\nc,1\n", {}, "o.csv", "one value only"),
    ("bad JSON", "j.jsonl", '{"sentence": "a", "label": 1}\n{"sentence": \n', {}, "line 2", "not JSON"),
    ("short CSV row", "s.csv", "sentence,label,x\na,1,2\nb,0\n", {}, "row 2", "fewer cells"),
    ("unquoted comma", "c.csv", "sentence,label\na,1\ngood, not great,0\n", {}, "row 2", "more cells"),
    ("not UTF-8", "u.csv", b"sentence,label\n\xff\xfe,1\n", {}, "u.csv", "not UTF-8"),
    ("too few rows to carve", "f.csv", "sentence,label\na,1\nb,0\n", {}, "f.csv", "too few to carve"),
    (
        "label order",
        "lo.csv",
        "sentence,label\na,x\nb,y\nc,x\nd,y\n",
        {"label_order": "x,z"},
        "--label-order",
        "never seen ['z']",
    ),
]


@pytest.mark.parametrize(
    "name, text, extra, where, fragment", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_bad_data_gets_one_clear_line(tmp_path, name, text, extra, where, fragment):
    if isinstance(text, bytes):
        (tmp_path / name).write_bytes(text)
    elif text is not None:
        (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        D.load_task(D.DataConfig(train_file=str(tmp_path / name), **extra))
    msg = str(e.value)
    assert fragment in msg and where in msg and "\n" not in msg, msg


@pytest.mark.parametrize("value", [0, -3])
def test_sample_limit_must_be_positive(value):
    with pytest.raises(ValueError, match=f"max_train_samples must be >= 1 .*got {value}"):
        D.DataConfig(max_train_samples=value)


# ---------------------------------------------------------------------- the collapse guard
def test_collapse_guard_flags_a_one_class_predictor():
    from spd.metrics import collapse_check

    y = [0] * 89 + [1] * 11  # the spam set's balance: 89 % legitimate
    c = collapse_check([0] * 100, y, 2, ["ham", "spam"])
    # accuracy 0.89 looks fine; the guard says why it is not
    assert c["flagged"] and c["accuracy"] == pytest.approx(0.89)
    assert set(c["reasons"]) == {"one_class", "near_majority", "never_predicted"}
    assert c["never_predicted"] == ["spam"] and c["recall"] == {"ham": 1.0, "spam": 0.0}
    assert c["macro_f1"] == pytest.approx((2 * 89 / (89 + 100) + 0.0) / 2)
    assert c["imbalanced"] and c["top_class"] == "ham" and c["top_class_share"] == 1.0
    # balanced data, one answer: flagged too (accuracy 0.5 = the majority rate)
    c = collapse_check([1] * 40, [0, 1] * 20, 2)
    assert c["reasons"] == ["one_class", "near_majority", "never_predicted"] and not c["imbalanced"]


def test_collapse_guard_passes_a_good_predictor_on_imbalanced_data():
    from spd.metrics import collapse_check

    y = [0] * 89 + [1] * 11
    p = [0] * 87 + [1] * 2 + [1] * 9 + [0] * 2  # 96 % accurate, spam recall 9/11
    c = collapse_check(p, y, 2, ["ham", "spam"])
    assert not c["flagged"] and c["reasons"] == [] and c["imbalanced"]
    assert c["recall"]["spam"] == pytest.approx(9 / 11) and c["macro_f1"] > 0.85
    # a sound but weak model on balanced data is not flagged either
    p = [1 - y_ if i % 8 < 2 else y_ for i, y_ in enumerate([0, 1] * 20)]  # 75 % accurate
    assert not collapse_check(p, [0, 1] * 20, 2)["flagged"]
    # ... even when it leans to one class (75 % of its answers, the limit is above that)
    p = [1 if i % 4 == 0 else y_ for i, y_ in enumerate([0, 1] * 20)]
    assert sum(p) == 30 and not collapse_check(p, [0, 1] * 20, 2)["flagged"]


def test_collapse_guard_flags_a_minority_class_never_predicted():
    from spd.metrics import collapse_check

    # five classes; class 4 (10 examples) never predicted, the rest perfect: accuracy 0.9,
    # the top predicted share 0.3 (data 0.2): only the never-predicted rule sees it
    y = [c for c in range(5) for _ in range(10)] * 1
    p = [c if c != 4 else 0 for c in y]
    c = collapse_check(p, y, 5, list("abcde"))
    assert c["flagged"] and c["reasons"] == ["never_predicted"] and c["never_predicted"] == ["e"]
    assert "never predicts 'e' (20% of the examples)" in c["messages"][0]
    # below the minimum support (5 examples) a class missed is not a collapse
    y2 = [0] * 20 + [1] * 20 + [2] * 3
    p2 = [0] * 20 + [1] * 20 + [0] * 3
    assert not collapse_check(p2, y2, 3)["flagged"]
    # accuracy within 2 points of the majority rate: flagged though both classes are predicted
    y3 = [0] * 70 + [1] * 30
    p3 = [0] * 60 + [1] * 10 + [0] * 20 + [1] * 10  # accuracy 0.70 = majority 0.70
    c3 = collapse_check(p3, y3, 2)
    assert c3["reasons"] == ["near_majority"]
    # a split with one class present is not judged
    assert not collapse_check([0, 0, 0], [0, 0, 0], 2)["flagged"]
