"""Census of bad command-line options and config files: each row is what was tried, how ``spd``
refuses it (``usage``: argparse's exit 2; ``error``: the command's exit 2 with ``error: ...``) and a
fragment of the message. Every refusal comes before any training starts."""

import contextlib
import io

import pytest
from spd_tiny import save_tiny_model_dir, sentences, write_csv

from spd.cli import main


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-census")
    save_tiny_model_dir(str(d / "model"), hidden=32, intermediate=64)
    rows = sentences(24, seed=1)
    write_csv(d / "train.csv", rows[:16])
    write_csv(d / "dev.csv", rows[16:])
    (d / "empty.csv").write_text("sentence,label\n")
    (d / "nolabel.csv").write_text("sentence\nhello\n")
    return d


def _config(name, text):
    return lambda d: ["--config", str(_write(d / name, text))]


def _write(path, text):
    path.write_bytes(text.encode("latin-1"))
    return path


# (what, command, extra argv (a list, or a function of the fixture folder), kind, fragment)
CASES = [
    ("unknown command", None, ["frobnicate"], "usage", "invalid choice: 'frobnicate'"),
    ("--method unknown", "prune", ["--method", "random"], "usage", "invalid choice: 'random'"),
    ("--sparsity not a number", "prune", ["--sparsity", "abc"], "usage", "invalid float value: 'abc'"),
    ("--sparsity 1.5", "prune", ["--sparsity", "1.5"], "error", "sparsity must lie in [0, 1], got 1.5"),
    ("--sparsity -0.1", "prune", ["--sparsity", "-0.1"], "error", "sparsity must lie in [0, 1], got -0.1"),
    ("--sparsity nan", "prune", ["--sparsity", "nan"], "error", "sparsity must lie in [0, 1], got nan"),
    (
        "--granularity block7 (not dividing)",
        "prune",
        ["--granularity", "block7"],
        "error",
        "mask block 7x7 does not divide hidden_size=32",
    ),
    ("--granularity cubes", "prune", ["--granularity", "cubes"], "error", "granularity must be 'element'"),
    (
        "--batch-size 0",
        "prune",
        ["--batch-size", "0"],
        "error",
        "batch_size, grad_accum, eval_batch_size must be >= 1",
    ),
    (
        "--prune-lr -1",
        "prune",
        ["--prune-lr", "-1"],
        "error",
        "prune_lr must be a finite number > 0, got -1.0",
    ),
    (
        "--final-lr nan",
        "prune",
        ["--final-lr", "nan"],
        "error",
        "final_lr must be a finite number > 0, got nan",
    ),
    (
        "--prune-epochs 0",
        "prune",
        ["--prune-epochs", "0"],
        "error",
        "prune_epochs must be an int >= 1, got 0",
    ),
    (
        "--teacher-epochs -1",
        "prune",
        ["--teacher-epochs", "-1"],
        "error",
        "teacher_epochs must be an int >= 0",
    ),
    ("--max-length 1", "prune", ["--max-length", "1"], "error", "max_length must be >= 2, got 1"),
    ("--update-every 0", "prune", ["--update-every", "0"], "error", "update_every must be >= 1, got 0"),
    (
        "--warmup-ratio 1.5",
        "prune",
        ["--warmup-ratio", "1.5"],
        "error",
        "warmup_ratio must lie in [0, 1), got 1.5",
    ),
    ("--resume sometimes", "prune", ["--resume", "sometimes"], "usage", "invalid choice: 'sometimes'"),
    (
        "--teacher missing",
        "prune",
        lambda d: ["--teacher", str(d / "noteacher")],
        "error",
        "noteacher: no such directory",
    ),
    ("--task unknown", "prune", ["--task", "nosuchtask"], "error", "unknown task 'nosuchtask'"),
    (
        "--train-file missing",
        "prune",
        lambda d: ["--train-file", str(d / "nofile.csv")],
        "error",
        "No such file or directory",
    ),
    (
        "--train-file without rows",
        "prune",
        lambda d: ["--train-file", str(d / "empty.csv")],
        "error",
        "empty.csv: no rows",
    ),
    (
        "--train-file without labels",
        "prune",
        lambda d: ["--train-file", str(d / "nolabel.csv")],
        "error",
        "label column 'label' missing",
    ),
    (
        "--config missing",
        "prune",
        lambda d: ["--config", str(d / "none.yaml")],
        "error",
        "none.yaml not found",
    ),
    (
        "config: invalid YAML",
        "prune",
        _config("bad.yaml", "a: [1, 2\n"),
        "error",
        "bad.yaml is not valid YAML",
    ),
    (
        "config: invalid JSON",
        "prune",
        _config("bad.json", "{not json"),
        "error",
        "bad.json is not valid JSON",
    ),
    ("config: binary bytes", "prune", _config("bin.json", "\x00\xff\xfe"), "error", "bin.json is not"),
    ("config: a list", "prune", _config("list.yaml", "- 1\n- 2\n"), "error", "must hold a mapping, got list"),
    (
        "config: unknown key",
        "prune",
        _config("unk.yaml", "frobnicate: 1\n"),
        "error",
        "unknown keys ['frobnicate']",
    ),
    (
        "config: unknown key in a section",
        "prune",
        _config("unks.yaml", "train:\n  frobnicate: 1\n"),
        "error",
        "config section 'train': unknown keys ['frobnicate']",
    ),
    (
        "config: section not a mapping",
        "prune",
        _config("sec.yaml", "train: 5\n"),
        "error",
        "section 'train' must be a mapping",
    ),
    (
        "config: batch_size a string",
        "prune",
        _config("type.yaml", "train:\n  batch_size: eight\n"),
        "error",
        "batch_size must be int, got 'eight'",
    ),
    (
        "config: sparsity a string",
        "prune",
        _config("sp.yaml", "pruning:\n  sparsity: high\n"),
        "error",
        "sparsity must be float, got 'high'",
    ),
    (
        "config: sparsity 2",
        "prune",
        _config("sp2.yaml", "pruning:\n  sparsity: 2\n"),
        "error",
        "sparsity must lie in [0, 1], got 2.0",
    ),
    (
        "config: kd a string",
        "prune",
        _config("kd.yaml", "stages:\n  kd: yes please\n"),
        "error",
        "kd must be bool, got 'yes please'",
    ),
    (
        "config: granularity a number",
        "prune",
        _config("gr.yaml", "pruning:\n  granularity: 7\n"),
        "error",
        "granularity must be str, got 7",
    ),
    ("finetune --epochs not a number", "finetune", ["--epochs", "abc"], "usage", "invalid int value: 'abc'"),
    ("finetune --lr 0", "finetune", ["--lr", "0"], "error", "lr must be a finite number > 0, got 0.0"),
    (
        "finetune config: epochs 1.5",
        "finetune",
        _config("ep.yaml", "epochs: 1.5\n"),
        "error",
        "epochs must be an int >= 1, got 1.5",
    ),
    (
        "finetune config: lr a string",
        "finetune",
        _config("lr.yaml", "lr: fast\n"),
        "error",
        "lr must be a finite number > 0, got 'fast'",
    ),
    (
        "export: model missing",
        "export",
        lambda d: [str(d / "nothing")],
        "error",
        "nothing: no such directory",
    ),
    (
        "export: nothing pruned",
        "export",
        lambda d: [str(d / "model")],
        "error",
        "has no pruned (MaskedLinear) layers",
    ),
    ("profile --layouts bsr7x", "profile", ["--layouts", "bsr7x"], "error", "unknown layout 'bsr7x'"),
    ("profile --sparsities 2", "profile", ["--sparsities", "2"], "error", "sparsity must lie in [0, 1]"),
    (
        "profile --model missing",
        "profile",
        lambda d: ["--model", str(d / "nothing")],
        "error",
        "is not a directory",
    ),
    ("compare: no runs", "compare", lambda d: [str(d / "nothing")], "error", "no run with a results.json"),
]


def _argv(d, command, extra):
    extra = extra(d) if callable(extra) else extra
    if command in ("prune", "finetune"):
        data = ["--task", "files", "--train-file", str(d / "train.csv"), "--validation-file",
                str(d / "dev.csv"), "--cache-dir", "none", "--no-progress", "--threads", "1",
                "--model", str(d / "model"), "--output-dir", str(d / "out"), "--resume", "never"]  # fmt: skip
        return [command, *data, *extra]  # later flags win: the case's own --train-file, --resume
    if command == "export":
        return [command, *extra, "--output-dir", str(d / "exported")]
    return [command, *extra] if command else extra


@pytest.mark.parametrize("command, extra, kind, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_cli_input(d, command, extra, kind, fragment):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(_argv(d, command, extra))
        except SystemExit as e:  # argparse
            code, kind = (e.code, "usage") if kind == "usage" else (e.code, "usage (unexpected)")
    text = err.getvalue()
    assert code == 2, text
    assert fragment in text, text
    if kind == "error":
        assert "error: " in text.strip().splitlines()[-1] and "Traceback" not in text, text
    assert not (d / "out").exists(), "a refused run must not start training"
