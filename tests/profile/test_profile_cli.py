"""`spd profile` from the command line: help, bad values, a tiny end-to-end run."""

import importlib.util
import os
import subprocess
import sys
import time

import pytest

from spd.cli import build_parser, main
from spd_kernels.profiling import CSV_COLUMNS, read_csv

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _profile_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["profile"]


def test_help_explains_every_option():
    p = _profile_parser()
    for action in p._actions:
        if action.dest == "help":
            continue
        assert action.help and len(action.help) > 10, f"{action.option_strings} has no help"
    text = p.format_help()
    opts = "--preset --shapes --layouts --sparsities --dtypes --ops --backend --baselines --threads --out"
    for opt in opts.split() + ["--min-run-time", "--repeats", "--no-compile", "--model"]:
        assert opt in text


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--layouts", "csr", "coo"], "unknown layout 'coo'"),
        (["--shapes", "8,100,64", "--layouts", "bsr32"], "bsr32.*does not divide"),
        (["--sparsities", "0.5", "1.2"], "'1.2'"),
        (["--dtypes", "int8"], "unknown dtype 'int8'"),
        (["--backend", "nope"], "unknown backend 'nope'"),
    ],
)
def test_bad_values_exit_2_before_timing(argv, match, tmp_path, capsys):
    import re

    out = tmp_path / "o"
    assert main(["profile", "--out", str(out), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert not out.exists()  # nothing was run or written


def test_model_dir_that_is_not_a_pruned_model_is_a_clear_error(tmp_path, capsys):
    assert main(["profile", "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a pruned-model directory" in capsys.readouterr().err


def test_profile_a_saved_pruned_model(tmp_path):
    import torch
    from transformers import BertConfig, BertModel

    import spd_kernels as sk

    cfg = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    model = BertModel(cfg).eval()
    sk.sparsify(model, sk.SparsityConfig(block=(16, 16)))
    for m in model.modules():
        if isinstance(m, sk.MaskedLinear):
            m.set_mask(torch.rand(m.out_features // 16, m.in_features // 16) < 0.5)
    sk.save_pruned(sk.export(model), tmp_path / "pruned")
    out = tmp_path / "o"
    rc = main(
        [
            "profile",
            "--model",
            str(tmp_path / "pruned"),
            "--batch",
            "1",
            "--seq-len",
            "8",
            "--min-run-time",
            "0.01",
            "--repeats",
            "2",
            "--warmup",
            "0",
            "--no-compile",
            "--engines",
            "eager",
            "eager-attention",
            "onnxruntime-fused",
            "--compile",
            "--rounds",
            "2",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    from spd_kernels.profiling.report import read_csv

    rows = {r["impl"]: r for r in read_csv(str(out / "model.csv"))}
    want = {
        "spd_kernels",
        "spd_kernels_compiled",
        "dense_eager",
        "dense_eager_attention",
        "onnxruntime_fused",
    }
    assert set(rows) == want
    ok = "ok" if importlib.util.find_spec("onnxruntime") else "skipped"
    assert rows.pop("onnxruntime_fused")["status"] == ok
    assert all(r["status"] == "ok" and float(r["speedup_vs_best_dense"]) > 0 for r in rows.values())
    md = (out / "model.md").read_text()
    assert "--engines eager eager-attention onnxruntime-fused --rounds 2" in md and "--compile" in md


def test_tiny_end_to_end_run(tmp_path):
    out = tmp_path / "prof"
    cmd = [
        sys.executable, "-m", "spd", "profile",
        "--shapes", "16,64,64", "--layouts", "csr", "bsr32", "--sparsities", "0.5", "0.9",
        "--ops", "forward", "weight_grad", "--baselines", "eager", "torch-sparse",
        "--min-run-time", "0.01", "--repeats", "3", "--warmup", "1", "--threads", "1",
        "--out", str(out), "--no-progress",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "python")]))
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120)
    elapsed = time.time() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_csv(str(out / "profile.csv"))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert len(rows) == 2 + 2 * 2 * 2 * 2  # dense eager per op; spd + torch.sparse per case
    assert {r["impl"] for r in rows} == {"dense_eager", "spd_kernels", "torch_sparse"}
    assert all(r["status"] == "ok" for r in rows if r["impl"] != "torch_sparse")
    md = (out / "profile.md").read_text()
    assert "machine:" in md and "spd profile --shapes 16,64,64" in md
    assert (out / "speedup.png").stat().st_size > 10_000
    assert "| forward | custom | 16×64×64 | float32 | bsr32 | 0.9 |" in r.stdout
    print(f"end-to-end spd profile: {elapsed:.1f} s")
