"""The command line imports only what a call needs: ``spd --help`` no torch at all, a
subcommand's help none of the heavy optional libraries (they load where they are used)."""

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("transformers", "datasets", "onnx", "onnxruntime", "triton", "matplotlib")

PROBE = """
import json, sys
from spd.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {names!r})))
"""


def _loaded_after(argv, names):
    code = PROBE.format(argv=list(argv), names=set(names))
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), timeout=600
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_top_level_help_imports_no_torch_and_no_command_module():
    loaded = _loaded_after(["--help"], ("torch", "spd_kernels", "numpy") + HEAVY)
    assert loaded == []
    loaded = _loaded_after(["--help"], ("spd",))
    assert not [m for m in loaded if m.startswith("spd.commands.")], loaded


@pytest.mark.parametrize("command", ["prune", "finetune", "eval", "export", "profile"])
def test_subcommand_help_imports_no_heavy_library(command):
    loaded = _loaded_after([command, "--help"], HEAVY)
    assert loaded == [], f"spd {command} --help imported {loaded}"


def test_subcommand_imports_only_its_own_module():
    loaded = _loaded_after(["prune", "--help"], ("spd",))
    commands = {m for m in loaded if m.startswith("spd.commands.") and m != "spd.commands._common"}
    assert commands == {"spd.commands.prune"}, commands


def test_every_command_is_listed_without_importing_it():
    from spd.cli import command_specs

    names = [s.name for s in command_specs()]
    assert {"prune", "finetune", "eval", "export", "profile", "compare", "demo"} <= set(names)
    assert len(names) == len(set(names))
