"""A missing extension must not pass CI quietly: ``SPD_REQUIRE_EXT=1`` makes ``import
spd_kernels`` fail, and ``CI=true`` stops the test run at once (tests/conftest.py), also when
the extension loads but the cpu backend reports itself unavailable. The extension is blocked in
a subprocess by putting ``None`` in ``sys.modules["spd_kernels._C"]``; an extension without CPU
kernels is an empty module put there instead (it loads, registers no op)."""

import os
import subprocess
import sys

import pytest

import spd_kernels as sk
from spd_kernels import _ext

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BLOCK = "import sys; sys.modules['spd_kernels._C'] = None\n"
NO_CPU_KERNELS = "import sys, types; sys.modules['spd_kernels._C'] = types.ModuleType('spd_kernels._C')\n"


def _env(tmp_path, **extra):
    (tmp_path / "block_spd_ext.py").write_text(BLOCK)
    (tmp_path / "empty_spd_ext.py").write_text(NO_CPU_KERNELS)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "SPD_REQUIRE_EXT")}
    paths = [str(tmp_path), ROOT, os.path.join(ROOT, "python"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def _run(args, env):
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=120)


def test_cpu_backend_is_there_or_the_run_is_not_ci():
    if _ext._C is None:  # conftest stops CI runs before this; locally the reasons say why
        assert not _ext.ext_required()
        assert any("extension" in r for r in sk.available_backends()["cpu"])
    else:
        assert sk.available_backends()["cpu"] == []


@pytest.mark.parametrize(
    "env, required",
    [
        ({}, False),
        ({"CI": "true"}, True),
        ({"CI": "false"}, False),
        ({"SPD_REQUIRE_EXT": "1"}, True),
        ({"SPD_REQUIRE_EXT": "0", "CI": "true"}, False),  # an explicit opt-out wins
        ({"SPD_REQUIRE_EXT": "", "CI": "1"}, False),
    ],
)
def test_when_the_extension_is_required(env, required):
    assert _ext.ext_required(env) is required


def test_import_without_the_extension_warns_or_refuses(tmp_path):
    code = "import block_spd_ext, spd_kernels as sk; print(sk.available_backends()['cpu'])"
    r = _run(["-c", code], _env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "could not be loaded" in r.stderr and "compiled extension not loaded" in r.stdout
    r = _run(["-c", code], _env(tmp_path, SPD_REQUIRE_EXT="1"))
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: spd_kernels: the compiled extension spd_kernels._C is required")


@pytest.mark.parametrize("flag", [{"CI": "true"}, {"SPD_REQUIRE_EXT": "1"}])
def test_test_run_stops_at_once_naming_the_extension(tmp_path, flag):
    test = os.path.join(ROOT, "tests", "kernels", "test_extension_required.py")
    node = f"{test}::test_when_the_extension_is_required"
    args = ["-m", "pytest", "-p", "block_spd_ext", "-q", "-p", "no:cacheprovider", node]
    r = _run(args, _env(tmp_path, **flag))
    assert r.returncode == pytest.ExitCode.USAGE_ERROR, r.stdout + r.stderr
    assert "spd_kernels._C is required" in r.stdout + r.stderr
    assert "passed" not in r.stdout


@pytest.mark.parametrize("flag", [{"CI": "true"}, {"SPD_REQUIRE_EXT": "1"}])
def test_test_run_stops_when_the_extension_loads_without_cpu_kernels(tmp_path, flag):
    test = os.path.join(ROOT, "tests", "kernels", "test_extension_required.py")
    node = f"{test}::test_when_the_extension_is_required"
    args = ["-m", "pytest", "-p", "empty_spd_ext", "-q", "-p", "no:cacheprovider", node]
    r = _run(args, _env(tmp_path, **flag))
    assert r.returncode == pytest.ExitCode.USAGE_ERROR, r.stdout + r.stderr
    assert "the cpu backend is required" in r.stdout + r.stderr
    assert "extension has no CPU kernels" in r.stdout + r.stderr
    assert "passed" not in r.stdout
    if "CI" in flag:  # not CI: the same run goes on (the cpu tests would skip with the reason)
        r = _run(args, _env(tmp_path))
        assert r.returncode == 0 and "passed" in r.stdout, r.stdout + r.stderr
