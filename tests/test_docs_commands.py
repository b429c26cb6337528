"""Every command shown in the README and docs/ is real: a make target that exists, a script that
exists and whose ``--help`` (or source) names every ``--option`` used, an ``spd`` subcommand with
those options, a test path that exists."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ENV_ASSIGN = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")
INLINE = re.compile(
    r"(spd (finetune|prune|eval|compare|profile|demo|export)\b|make [a-z]|python benchmarks/)"
)


def commands(page: Path):
    """(page, command) for each line of a ```bash block and each inline `spd ...` / `make ...` /
    `python benchmarks/...` code span."""
    text = page.read_text()
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").split("\n"):
            line = re.split(r"\s+#\s", line)[0].strip()
            if line and not line.startswith("#"):
                yield line
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`\n]+)`", prose):
        if re.match(
            r"(spd (finetune|prune|eval|compare|profile|demo|export)\b|make [a-z]|python benchmarks/)", span
        ):
            yield span


ALL = sorted({(p.relative_to(ROOT).as_posix(), c) for p in PAGES for c in commands(p)})


def _words(cmd: str):
    try:
        words = shlex.split(cmd.replace("\\|", "|"))
    except ValueError:
        words = cmd.split()
    while words and ENV_ASSIGN.match(words[0]):
        words.pop(0)
    return words


def _options(words):
    return sorted({w.split("=")[0] for w in words if w.startswith("--") and len(w) > 2})


@functools.lru_cache(maxsize=None)
def _spd_options(sub: str) -> frozenset:
    from spd.cli import build_parser

    parser = build_parser()
    for action in parser._subparsers._group_actions:  # the subcommands
        if sub in action.choices:
            return frozenset(o for a in action.choices[sub]._actions for o in a.option_strings)
    raise AssertionError(f"spd has no subcommand {sub!r}")


@functools.lru_cache(maxsize=None)
def _script_help(path: str) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / path), "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, f"{path} --help failed:\n{out.stderr[-2000:]}"
    return out.stdout


@functools.lru_cache(maxsize=None)
def _make_targets() -> frozenset:
    return frozenset(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))


def check(cmd: str) -> None:
    words = _words(cmd)
    if not words:
        return
    head = Path(words[0]).name
    if head == "make":
        for target in (w for w in words[1:] if not w.startswith("-") and "=" not in w):
            assert target in _make_targets(), f"make target {target!r} does not exist"
        return
    if head in ("pip", "torchrun", "accelerate", "nvidia-smi"):
        return
    if head.startswith("python") and words[1:2] == ["-c"]:
        return
    if head.startswith("python") and words[1:3] in (["-m", "spd"], ["-m", "pytest"]):
        words = words[2:]
    elif head.startswith("python") and len(words) > 1 and words[1].endswith(".py"):
        script = words[1]
        assert (ROOT / script).is_file(), f"{script} does not exist"
        text = _script_help(script)
        missing = [o for o in _options(words) if o not in text]
        assert not missing, f"{script} --help does not know {missing}"
        return
    if words[0] == "spd":
        sub = words[1] if len(words) > 1 and not words[1].startswith("-") else None
        if sub is None:
            return
        known = _spd_options(sub)
        missing = [o for o in _options(words) if o not in known]
        assert not missing, f"spd {sub} has no option(s) {missing}"
        return
    if words[0] == "pytest":
        paths = [w for w in words[1:] if not w.startswith("-") and ("/" in w or w.endswith(".py"))]
        for p in paths:
            assert (ROOT / p.split("::")[0]).exists(), f"{p} does not exist"
        conftest = (ROOT / "benchmarks" / "conftest.py").read_text()
        missing = [o for o in _options(words) if o.startswith("--bench-") and o not in conftest]
        assert not missing, f"benchmarks/conftest.py defines no {missing}"
        return
    if words[0] == "bash" or words[0].endswith(".sh"):
        script = words[1] if words[0] == "bash" else words[0]
        assert (ROOT / script).is_file(), f"{script} does not exist"
        text = (ROOT / script).read_text()
        missing = [o for o in _options(words) if o not in text]
        assert not missing, f"{script} does not handle {missing}"
        return


def test_pages_show_commands():
    assert len(ALL) > 30, ALL  # the parser still finds the pages' commands


@pytest.mark.parametrize("page,cmd", ALL, ids=[f"{p}:{c[:60]}" for p, c in ALL])
def test_command_is_real(page, cmd):
    check(cmd)


@pytest.mark.parametrize(
    "cmd,why",
    [
        ("make no-such-target", "make target"),
        ("spd prune --no-such-option 1", "no option"),
        ("python benchmarks/no_such_script.py", "does not exist"),
        ("bash benchmarks/accuracy/cpu_grid.sh --nope", "does not handle"),
    ],
)
def test_a_wrong_command_is_caught(cmd, why):
    with pytest.raises(AssertionError, match=why):
        check(cmd)
