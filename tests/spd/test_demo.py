"""`spd demo` end to end on a tiny model and tiny data: every stage runs and the report holds
what it measured; `spd export` output loads with spd_kernels alone and evaluates like the run."""

import json

import torch
import transformers
from spd_tiny import save_tiny_model_dir, sentences, write_csv

import spd_kernels as sk
from spd.cli import main


def _predict(model, tokenizer_dir, rows):
    """The model's class for each row, tokenized as the CLI does (max length 16)."""
    tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    enc = tok([r[0] for r in rows], truncation=True, max_length=16, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**enc).logits.argmax(-1).tolist()


def _accuracy(preds, rows):
    return sum(p == int(r[1]) for p, r in zip(preds, rows)) / len(rows)


def sk_dense_impls():
    from spd_kernels.profiling.report import DENSE_IMPLS

    return DENSE_IMPLS


def test_demo_writes_the_report(tmp_path):
    save_tiny_model_dir(str(tmp_path / "model"), hidden=32, intermediate=64)
    rows = sentences(56, seed=3)
    write_csv(tmp_path / "train.csv", rows[:32])
    write_csv(tmp_path / "dev.csv", rows[32:44])
    write_csv(tmp_path / "test.csv", rows[44:])
    out = tmp_path / "report"
    rc = main([
        "demo", "--model", str(tmp_path / "model"), "--output-dir", str(out), "--sparsity", "0.75",
        "--granularity", "block16", "--max-train-samples", "0", "--max-length", "16",
        "--batch-size", "8", "--teacher-epochs", "1", "--prune-epochs", "1", "--final-epochs", "1",
        "--teacher-lr", "2e-3", "--prune-lr", "2e-3", "--final-lr", "1e-3", "--threads", "1",
        "--profile-batch", "2", "--profile-seq-len", "16", "--no-kernel-profile",
        "--", "--task", "files", "--train-file", str(tmp_path / "train.csv"),
        "--validation-file", str(tmp_path / "dev.csv"), "--test-file", str(tmp_path / "test.csv"),
        "--cache-dir", str(tmp_path / "cache"),
    ])  # fmt: skip
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    # the reported accuracies are the models' answers on the 12 test rows, recounted here
    test_rows, tok_dir = rows[44:], tmp_path / "model"
    teacher = transformers.AutoModelForSequenceClassification.from_pretrained(out / "runs/teacher/best")
    assert res["teacher_test_accuracy"] == _accuracy(_predict(teacher, tok_dir, test_rows), test_rows)
    assert abs(res["student_sparsity"] - 0.75) < 0.02
    # the exported (packed) student computes what the masked student computed
    assert res["exported_test_accuracy"] == res["student_test_accuracy"]
    assert abs(json.loads((out / "exported_eval.json").read_text())["sparsity"] - 0.75) < 0.02
    assert res["model_speedup"]["model_forward"] > 0
    # the speedup is against the fastest dense engine, and the summary names it
    assert res["model_speedup"]["model_forward_dense_impl"] in sk_dense_impls()
    summary = (out / "summary.md").read_text()
    assert "dense teacher" in summary and "exported" in summary
    assert f"fastest dense engine ({res['model_speedup']['model_forward_dense_impl']})" in summary
    preds = _predict(sk.load_pruned(out / "exported"), tok_dir, test_rows)
    share = json.loads((out / "exported_eval.json").read_text())["test"]["top_class_share"]
    assert share == max(preds.count(0), preds.count(1)) / 12
    assert res["exported_test_accuracy"] == _accuracy(preds, test_rows)
    assert ("predicts one class" in summary) == (share >= 0.95)
    assert (out / "training.png").stat().st_size > 10_000
    # the exported directory needs only spd_kernels to load
    model = sk.load_pruned(out / "exported")
    packed = [m for m in model.modules() if isinstance(m, sk.SparseLinear)]
    assert len(packed) == 12 and any(m.activation == "gelu" for m in packed)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[2, 10, 11, 3]])).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


def test_export_refuses_a_dense_model(tmp_path, capsys):
    save_tiny_model_dir(str(tmp_path / "model"))
    assert main(["export", str(tmp_path / "model"), "--output-dir", str(tmp_path / "x")]) == 2
    assert "no pruned (MaskedLinear) layers" in capsys.readouterr().err


def test_top_class_share_and_the_collapse_note():
    from spd_tiny import tiny_bert

    from spd.commands.demo import _collapse_warning
    from spd.data import EncodedSplit, TaskInfo
    from spd.trainer import evaluate_model

    torch.manual_seed(0)
    model = tiny_bert(dropout=0.0)
    n, length = 12, 5
    labels = torch.tensor([1] * 9 + [0] * 3)
    data = EncodedSplit(
        torch.randint(5, 60, (n * length,)),
        torch.zeros(n * length, dtype=torch.long),
        torch.arange(0, n * length + 1, length),
        labels,
    )
    task = TaskInfo("t", 2, ("accuracy",))
    with torch.no_grad():  # a model that answers class 1 whatever the input
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 5.0]))
    m = evaluate_model(model, data, task, batch_size=5, device="cpu")
    assert m["top_class_share"] == 1.0 and m["accuracy"] == 0.75  # accuracy = the class balance
    assert "predicts one class for 100%" in _collapse_warning(m)[0]
    with torch.no_grad():  # a random head: the answer depends on the input, both classes appear
        model.classifier.weight.normal_(0, 5.0)
        model.classifier.bias.zero_()
    m = evaluate_model(model, data, task, batch_size=5, device="cpu")
    assert 0.5 <= m["top_class_share"] < 1.0
    assert _collapse_warning({"accuracy": 0.9, "top_class_share": 0.6}) == []
    assert _collapse_warning({"pearson": 0.9}) == []  # regression: no share
