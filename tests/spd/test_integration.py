"""A few steps on the embedded all-MiniLM-L6-v2 and Rotten Tomatoes data (no network)."""

import json

import pytest

from spd.cli import main


@pytest.mark.integration
def test_embedded_model_and_data_few_steps(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = [
        "prune", "--method", "spd", "--teacher-epochs", "1", "--prune-epochs", "1", "--final-epochs", "0",
        "--sparsity", "0.9", "--granularity", "block32", "--update-every", "1", "--max-train-samples", "16",
        "--max-eval-samples", "16", "--max-length", "32", "--batch-size", "8", "--no-progress",
        "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(tmp_path / "spd"),
    ]  # fmt: skip
    assert main(args) == 0  # stage 1 fine-tunes the embedded model, stage 2 prunes it with grafting
    r = json.loads((tmp_path / "spd" / "results.json").read_text())
    assert r["task"] == "rotten_tomatoes" and r["model"] == "embedded"
    # 2 pruning steps: the authors' Prune updates once (after step 1 of 2), at 0.9 (1 - (1/2)^3)
    assert r["best"]["sparsity"] == pytest.approx(0.9 * (1 - 0.5**3), abs=0.01)
    assert "teacher" in r
    # the reported test accuracy and sparsity are those of the saved best model, evaluated again
    ev = tmp_path / "eval.json"
    eval_args = ["--max-eval-samples", "16", "--max-length", "32", "--cache-dir", str(tmp_path / "cache")]
    assert main(["eval", str(tmp_path / "spd"), "--device", "cpu", "--output", str(ev), *eval_args]) == 0
    e = json.loads(ev.read_text())
    assert e["test"]["accuracy"] == r["best"]["test"]["accuracy"]
    assert e["sparsity"] == pytest.approx(r["best"]["sparsity"], abs=1e-6)
    spec = json.loads((tmp_path / "spd" / "best" / "spd_sparsity.json").read_text())
    assert len(spec["layers"]) == 36  # 6 layers x (q, k, v, attention output, intermediate, output)
    assert all(v["kind"] == "masked" and v["block"] == [32, 32] for v in spec["layers"].values())
