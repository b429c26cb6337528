"""The CLI end to end on a tiny model: finetune -> prune (each method) -> eval -> compare."""

import json
import math

import pytest
from spd_tiny import save_tiny_model_dir, sentences, write_csv

from spd.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmds")
    save_tiny_model_dir(str(d / "model"), hidden=32, intermediate=64)
    rows = sentences(56, seed=5)
    write_csv(d / "train.csv", rows[:32])
    write_csv(d / "dev.csv", rows[32:44])
    write_csv(d / "test.csv", rows[44:])
    data = ["--task", "files", "--train-file", str(d / "train.csv"), "--validation-file", str(d / "dev.csv"),
            "--test-file", str(d / "test.csv"), "--cache-dir", str(d / "cache"), "--no-progress",
            "--batch-size", "8", "--threads", "1", "--log-every", "1"]  # fmt: skip
    assert main(["finetune", "--model", str(d / "model"), "--epochs", "2", "--lr", "2e-3",
                 "--output-dir", str(d / "teacher"), *data]) == 0  # fmt: skip
    return d, data


@pytest.mark.parametrize(
    "method,extra",
    [
        ("magnitude", ["--scope", "global", "--kd"]),
        ("movement", ["--granularity", "block16"]),
        ("soft-movement", ["--soft-lambda", "50"]),
        ("spd", ["--graft-schedule", "mixed", "--graft-p0", "0.3"]),
    ],
)
def test_prune_each_method_reaches_the_budget(setup, method, extra, capsys):
    d, data = setup
    out = d / f"run-{method}"
    args = ["prune", "--method", method, "--teacher", str(d / "teacher" / "best"), "--sparsity", "0.75",
            "--prune-epochs", "2", "--final-epochs", "1", "--prune-lr", "2e-3", "--final-lr", "1e-3",
            "--update-every", "1", "--output-dir", str(out), *extra, *data]  # fmt: skip
    assert main(args) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["method"] == method and r["target_sparsity"] == 0.75
    assert r["best"]["sparsity"] == pytest.approx(0.75, abs=0.01)
    assert r["final"]["sparsity"] == pytest.approx(0.75, abs=0.01)
    assert "teacher" in r and 0.0 <= r["best"]["test"]["accuracy"] <= 1.0
    phases = [h["phase"] for h in r["history"]]
    assert phases == (["spd", "spd", "distill"] if method == "spd" else ["prune", "prune", "sparse-finetune"])
    # only evaluations after the ramp (at the final sparsity) compete for best/
    assert [h["eligible"] for h in r["history"]] == [False, True, True]
    assert all(h["sparsity"] == pytest.approx(0.75, abs=0.01) for h in r["history"] if h["eligible"])
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in log if "loss" in x]
    if method == "spd":
        ps = [x["p"] for x in steps if x["phase"] == "spd"]
        assert ps[0] == pytest.approx(0.3) and ps[-1] == pytest.approx(1.0)
        assert {"loss_hidden", "loss_attn", "loss_logit"} <= set(steps[0])
    if method == "soft-movement":
        assert any(x.get("loss_l1", 0) > 0 for x in steps)
    # eval reads the run's best model
    capsys.readouterr()
    assert main(["eval", str(out), "--split", "both", *data[:8]]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["test"]["accuracy"] == pytest.approx(r["best"]["test"]["accuracy"])
    assert ev["sparsity"] == pytest.approx(r["best"]["sparsity"])


def test_config_file_and_compare(setup, capsys, tmp_path):
    d, data = setup
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "method: magnitude\n"
        "pruning:\n  sparsity: 0.5\n  granularity: block16\n"
        "stages:\n  prune_epochs: 1\n  final_epochs: 0\n"
        f"train:\n  output_dir: {tmp_path / 'from-yaml'}\n  seed: 3\n"
    )
    # the file sets sparsity 0.5; the command line wins for the granularity
    assert main(["prune", "--config", str(cfg), "--teacher", str(d / "teacher" / "best"), "--granularity",
                 "element", *data]) == 0  # fmt: skip
    r = json.loads((tmp_path / "from-yaml" / "results.json").read_text())
    assert (r["method"], r["target_sparsity"], r["granularity"], r["seed"]) == (
        "magnitude",
        0.5,
        "element",
        3,
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("pruning:\n  sparsityy: 0.5\n")
    assert main(["prune", "--config", str(bad), *data]) == 2
    assert "sparsityy" in capsys.readouterr().err
    capsys.readouterr()
    runs = [str(d / "teacher"), str(tmp_path / "from-yaml")] + sorted(str(p) for p in d.glob("run-*"))
    assert main(["compare", *runs]) == 0
    table = capsys.readouterr().out
    assert "| dense |" in table and "| magnitude |" in table
    assert table.count("\n") >= 4
    assert main(["compare", "--format", "json", *runs]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_run = {row["run"]: row for row in rows}
    assert by_run["from-yaml"]["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_grad_accumulation_matches_one_big_batch_and_bf16_runs(tmp_path):
    import torch
    from safetensors.torch import load_file

    save_tiny_model_dir(str(tmp_path / "m0"), dropout=0.0)
    rows = sentences(30, seed=9)
    write_csv(tmp_path / "tr.csv", rows[:20])
    write_csv(tmp_path / "dv.csv", rows[20:])
    base = ["finetune", "--model", str(tmp_path / "m0"), "--task", "files",
            "--train-file", str(tmp_path / "tr.csv"), "--validation-file", str(tmp_path / "dv.csv"),
            "--epochs", "2", "--lr", "1e-3", "--batch-size", "8", "--no-progress", "--cache-dir", "none",
            "--threads", "1"]  # fmt: skip
    assert main([*base, "--output-dir", str(tmp_path / "a1")]) == 0
    assert main([*base, "--output-dir", str(tmp_path / "a4"), "--grad-accum", "4"]) == 0
    w1 = load_file(str(tmp_path / "a1" / "final" / "model.safetensors"))
    w4 = load_file(str(tmp_path / "a4" / "final" / "model.safetensors"))
    for k in w1:
        assert torch.allclose(w1[k], w4[k], rtol=0, atol=1e-3), k  # float noise only (Adam, ~lr per step)
    assert main([*base, "--output-dir", str(tmp_path / "bf16"), "--bf16"]) == 0
    r = json.loads((tmp_path / "bf16" / "results.json").read_text())
    assert math.isfinite(r["final"]["validation"]["loss"])
