"""scripts/gpu_check.sh --dry-run: the GPU check's own steps on the CPU (compile-only CUDA, the
Triton interpreter, the GPU test modules collected and skipped, both benchmarks' CPU modes), so
the script cannot rot between the rare runs on a GPU."""

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STEPS = ("env", "build", "backends", "gpu_tests", "smoke", "memcheck", "bench_bsr", "bench_csr")


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash")
def test_dry_run_runs_every_step_and_packs_at_most_8_files(tmp_path):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SPD_KERNELS_BACKEND")}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1")
    out = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(files) <= 8 and {"summary.txt", "logs.tar.gz"} <= set(files), files
    assert all(p.is_file() for p in (tmp_path / "out").iterdir())
    summary = (tmp_path / "out" / "summary.txt").read_text()
    for step in STEPS:
        assert f"\n{step}" in summary, summary
    assert "rc=1" not in summary and "time budget" not in summary, summary
    with tarfile.open(tmp_path / "out" / "logs.tar.gz") as tar:
        names = set(tar.getnames())
    for step in STEPS:
        assert f"logs/{step}.log" in names, sorted(names)
    assert "logs/gpu_tests.xml" in names
    assert "logs/bench_bsr/gpu_bsr_bench_smoke.csv" in names


def test_bad_option_is_refused(tmp_path):
    out = subprocess.run(["bash", str(SCRIPT), "--bogus", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown option --bogus" in out.stderr
