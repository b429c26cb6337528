"""A new user's own CSV through the CLI: each trap of the old loader fed as before, now with the
right split, labels, warning or refusal; the collapse guard in results.json, the final report,
`spd eval` and `spd compare`; a collapsed evaluation never displaces a sound one as best/."""

import json

import pytest
from spd_tiny import save_tiny_model_dir, sentences, write_csv

from spd.cli import main


def _rows(n, seed, label):
    return [(f"{t} w{i}", label(i, y)) for i, (t, y) in enumerate(sentences(n, seed))]


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("own-data")
    save_tiny_model_dir(str(d / "model"), hidden=32, intermediate=64)
    write_csv(d / "mine.csv", _rows(60, 7, lambda i, y: 1 if y else -1))  # labels -1 / 1
    return d


def _common(d, out):
    return ["--model", str(d / "model"), "--output-dir", str(d / out), "--no-progress", "--threads", "1",
            "--batch-size", "8", "--cache-dir", str(d / "cache"), "--teacher-cache", str(d / "tcache"),
            "--resume", "never"]  # fmt: skip


def test_train_file_alone_trains_on_it_with_carved_splits_mapped_labels_and_a_truncation_report(d, capfd):
    # before: --train-file without --task trained on Rotten Tomatoes, validated and tested on
    # the training rows, crashed on the label -1 and said nothing about the cut sentences
    rc = main(["finetune", "--train-file", str(d / "mine.csv"), "--epochs", "1", "--lr", "2e-3",
               "--max-length", "8", *_common(d, "ft")])  # fmt: skip
    err = capfd.readouterr().err
    assert rc == 0, err
    assert "data: no --validation-file / --test-file: carved 6 rows each from" in err
    assert "data: 2 classes, ids in sorted order of the values seen: '-1'->0, '1'->1" in err
    warn = [x for x in err.splitlines() if x.startswith("warning:") and "--max-length 8" in x]
    assert len(warn) == 1 and "% of the train examples" in warn[0]
    assert "are longer than --max-length 8 and were cut" in warn[0]
    r = json.loads((d / "ft" / "results.json").read_text())
    assert r["task"] == "mine.csv"
    assert r["data"]["sizes"] == {"train": 48, "validation": 6, "test": 6}
    assert "held out of training" in r["data"]["splits"]["test"]
    assert r["data"]["label2id"] == {"-1": 0, "1": 1}
    trunc = r["data"]["truncation"]["train"]
    assert trunc["examples"] == 48 and trunc["share_examples_cut"] > 0.05 and trunc["tokens_cut"] > 0
    assert r["data"]["warnings"] == warn
    # the collapse guard's verdict on the reported model, with macro-F1 and recall per class
    assert isinstance(r["collapse"]["flagged"], bool) and set(r["collapse"]["recall"]) <= {"-1", "1"}
    assert "macro_f1" in r["best"]["validation"]
    # the mapping travels with the saved model
    cfg = json.loads((d / "ft" / "best" / "config.json").read_text())
    assert cfg["id2label"] == {"0": "-1", "1": "1"} and cfg["label2id"] == {"-1": 0, "1": 1}


def test_a_teacher_with_another_label_order_is_refused_naming_both(d, capfd):
    teacher = d / "teacher-swapped"
    save_tiny_model_dir(str(teacher), hidden=32, intermediate=64)
    cfg = json.loads((teacher / "config.json").read_text())
    cfg["id2label"], cfg["label2id"] = {"0": "1", "1": "-1"}, {"1": 0, "-1": 1}
    (teacher / "config.json").write_text(json.dumps(cfg))
    # before: the teacher's logits were distilled against swapped targets, without a word
    rc = main(["prune", "--method", "magnitude", "--kd", "--teacher", str(teacher),
               "--train-file", str(d / "mine.csv"), *_common(d, "swapped")])  # fmt: skip
    last = capfd.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and not (d / "swapped").exists()
    assert last.startswith("error: teacher ") and "maps labels {'1': 0, '-1': 1}" in last
    assert "the data maps {'-1': 0, '1': 1}" in last and "--label-order 1,-1" in last
    # the fix the message names: the data in the teacher's order
    rc = main(["eval", str(teacher), "--train-file", str(d / "mine.csv"), "--label-order", "1,-1",
               "--cache-dir", str(d / "cache")])  # fmt: skip
    assert rc == 0, capfd.readouterr().err


def test_an_explicit_other_task_with_a_train_file_is_refused_with_the_fix(d, capfd):
    rc = main(["finetune", "--task", "rotten_tomatoes", "--train-file", str(d / "mine.csv"),
               *_common(d, "refused")])  # fmt: skip
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and not (d / "refused").exists()
    assert "--train-file would be ignored by --task rotten_tomatoes: drop --task" in err[0]


def test_a_collapsed_model_is_flagged_in_results_the_report_eval_and_compare(d, capfd):
    import torch
    from safetensors.torch import load_file, save_file

    # a model that answers 'ham' whatever the input, on 80 % ham / 20 % spam data
    model = d / "one-class"
    save_tiny_model_dir(str(model), hidden=32, intermediate=64)
    w = load_file(str(model / "model.safetensors"))
    w["classifier.weight"] = torch.zeros_like(w["classifier.weight"])
    w["classifier.bias"] = torch.tensor([8.0, -8.0])
    save_file(w, str(model / "model.safetensors"), metadata={"format": "pt"})
    spam = d / "spam.csv"
    write_csv(spam, _rows(300, 11, lambda i, y: "spam" if i % 5 == 0 else "ham"))  # 30 validation rows
    args = ["finetune", "--train-file", str(spam), "--epochs", "1", "--lr", "1e-9",
            *_common(d, "collapsed")]  # fmt: skip
    args[args.index("--model") + 1] = str(model)
    assert main(args) == 0
    out, err = capfd.readouterr()
    r = json.loads((d / "collapsed" / "results.json").read_text())
    c = r["collapse"]
    # before: accuracy 0.8 reported as the model's, nothing else
    assert r["best"]["validation"]["accuracy"] == pytest.approx(0.8)
    assert c["flagged"] and c["reasons"] == ["one_class", "near_majority", "never_predicted"]
    assert c["never_predicted"] == ["spam"] and c["recall"] == {"ham": 1.0, "spam": 0.0}
    assert "warning: collapse: the best model answers (nearly) one class on validation" in err
    assert "note: best/ (step " in err and "is near the majority class" in err
    assert "COLLAPSE: the model is near the majority class" in out and "recall ham 1.00 spam 0.00" in out
    assert main(["eval", str(d / "collapsed"), "--train-file", str(spam), "--split", "validation"]) == 0
    assert (
        "warning: collapse on validation: predicts 'ham' for 100% of the examples" in capfd.readouterr().err
    )
    assert main(["compare", "--format", "json", str(d / "collapsed"), str(d / "ft")]) == 0
    out, err = capfd.readouterr()
    rows = {row["run"]: row for row in json.loads(out)}
    assert rows["collapsed"]["collapse"] == "one_class+near_majority+never_predicted"
    ft = json.loads((d / "ft" / "results.json").read_text())["collapse"]
    assert rows["ft"]["collapse"] == ("+".join(ft["reasons"]) if ft["flagged"] else "-")
    assert "warning: collapse: collapsed" in err
    assert main(["compare", str(d / "collapsed")]) == 0
    table = capfd.readouterr().out
    assert "| collapse |" in table.splitlines()[0] and "one_class+near_majority+never_predicted" in table


def test_a_collapsed_evaluation_never_displaces_a_sound_best_model(tmp_path, monkeypatch):
    from spd_tiny import tiny_bert, tiny_tokenizer

    from spd.data import TaskInfo
    from spd.distill import DistillConfig
    from spd.distributed import DistInfo
    from spd.trainer import Phase, TrainConfig, Trainer

    def ev(acc, flagged):
        return {"accuracy": acc, "collapse": {"flagged": flagged, "reasons": ["one_class"] * flagged,
                                              "messages": ["m"] * flagged, "recall": {}}}  # fmt: skip

    trainer = Trainer(
        TrainConfig(output_dir=str(tmp_path / "run"), progress=False), DistInfo(),
        TaskInfo("t", 2, ("accuracy",)), {}, tiny_tokenizer(str(tmp_path)), {},
    )  # fmt: skip
    phase = Phase("finetune", 4, 1e-3, DistillConfig(alpha_ce=1.0), build=lambda p, t: p)
    model = tiny_bert()
    chosen = []
    for step, (acc, flagged) in enumerate([(0.70, True), (0.80, False), (0.85, True), (0.82, False)], 1):
        monkeypatch.setattr(trainer, "evaluate", lambda m, split, e=ev(acc, flagged): e)
        trainer.global_step = step
        trainer._end_of_epoch(0, phase, step, 4, model, None, step - 1)
        chosen.append(trainer.best_step["best"])
    # a flagged first model is kept only until a sound one comes; the better-scoring flagged
    # one at step 3 (before: chosen, accuracy 0.85 > 0.80) does not displace it
    assert chosen == [1, 2, 2, 4]
