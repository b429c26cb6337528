"""Exact resume: a run killed with SIGKILL (in stage 2, then again in stage 3) and resumed ends
bitwise equal to an uninterrupted one."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from spd_tiny import save_tiny_model_dir, sentences, write_csv

from helpers import sigkill_when
from spd.checkpoint import load_checkpoint
from spd.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    save_tiny_model_dir(str(d / "model"), dropout=0.1)  # dropout on: the RNG state must be restored too
    rows = sentences(48, seed=2)
    write_csv(d / "train.csv", rows[:32])
    write_csv(d / "dev.csv", rows[32:40])
    write_csv(d / "test.csv", rows[40:])
    return d


def _args(d, out, *extra):
    return [
        "prune", "--method", "spd", "--model", str(d / "model"), "--task", "files",
        "--train-file", str(d / "train.csv"), "--validation-file", str(d / "dev.csv"),
        "--test-file", str(d / "test.csv"), "--output-dir", str(out), "--batch-size", "8",
        "--teacher-epochs", "2", "--prune-epochs", "3", "--final-epochs", "2", "--sparsity", "0.75",
        "--update-every", "2", "--teacher-lr", "1e-3", "--prune-lr", "1e-3", "--final-lr", "1e-3",
        "--save-every", "1", "--log-every", "1", "--no-progress", "--cache-dir", "none", "--deterministic",
        "--threads", "1", *extra,
    ]  # fmt: skip


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "python"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _cmd(d, out, *extra):
    return [sys.executable, "-m", "spd", *_args(d, out, *extra)]


def _steps_logged(path):
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = [json.loads(x) for x in f if x.strip().endswith("}")]
    return max((x.get("global_step", 0) for x in lines), default=0)


def _strip_times(path):
    out = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            r.pop("time_s", None)
            out.append(r)
    return out


def _kill_after(d, out, steps):
    """Run (or resume) into ``out``, SIGKILL it once ``steps`` steps are logged; the state of
    the checkpoint it left."""
    ready = lambda: _steps_logged(out / "metrics.jsonl") >= steps  # noqa: E731
    sigkill_when(_cmd(d, out), _env(), ready, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return load_checkpoint(str(out / "checkpoint-last.safetensors"))[0]


def test_sigkill_and_resume_is_bitwise_identical(tiny_setup):
    d = tiny_setup
    a, b = d / "uninterrupted", d / "killed"
    r = subprocess.run(_cmd(d, a), env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    total = _steps_logged(a / "metrics.jsonl")  # 4 steps/epoch x (2 + 3 + 2) epochs
    assert total == 28

    # kill -9 in the middle of stage 2 (after global step 13 of 28: steps 9-20 prune), resume, kill
    # again in stage 3 (after step 23: steps 21-28 distil the fixed-mask student), resume to the end
    for kill_after in (13, 23):
        state = _kill_after(d, b, kill_after)
        assert state["global_step"] < total, "the kill must interrupt the run"
    assert state["phase"] == "distill", state["phase"]  # the second kill hit stage 3
    r = subprocess.run(_cmd(d, b), env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"step {state['step']}/" in r.stderr and "resuming from" in r.stderr  # continued, not restarted

    ra, rb = (json.loads((x / "results.json").read_text()) for x in (a, b))
    for r_ in (ra, rb):
        r_.pop("train_time_s")
    assert ra == rb  # every validation/test metric, the history, the teacher's metrics
    for sub in ("final", "best", "teacher"):
        ta, tb = load_file(str(a / sub / "model.safetensors")), load_file(str(b / sub / "model.safetensors"))
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{sub}/{k} differs"
    sa, ta_ = load_checkpoint(str(a / "checkpoint-last.safetensors"))
    sb, tb_ = load_checkpoint(str(b / "checkpoint-last.safetensors"))
    for k in ta_:
        if not k.startswith("rng/"):
            assert torch.equal(ta_[k], tb_[k]), k
    assert _strip_times(a / "metrics.jsonl") == _strip_times(b / "metrics.jsonl")


def test_corrupt_and_mismatched_checkpoints_are_refused(tiny_setup, tmp_path, capsys):
    d = tiny_setup
    out = tmp_path / "run"
    short = ["--teacher-epochs", "1", "--prune-epochs", "1", "--final-epochs", "0", "--save-every", "0"]
    assert main(_args(d, out) + short) == 0
    ck = out / "checkpoint-last.safetensors"
    # a different sparsity is a different run
    assert main(_args(d, out) + short + ["--sparsity", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "different run" in err and "sparsity" in err
    # flip bytes in the tensor data: the checksum catches it
    raw = bytearray(ck.read_bytes())
    raw[-10] ^= 0xFF
    ck.write_bytes(bytes(raw))
    assert main(_args(d, out) + short) == 2
    assert "corrupt" in capsys.readouterr().err
    # a truncated file
    ck.write_bytes(bytes(raw[: len(raw) // 2]))
    assert main(_args(d, out) + short) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    # --resume never starts over
    assert main(_args(d, out) + short + ["--resume", "never"]) == 0
    assert load_checkpoint(str(ck))[0]["global_step"] == 8
