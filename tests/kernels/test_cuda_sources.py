"""Compile-only checks of the CUDA sources, so a broken kernel fails CI on machines without a GPU.

* every ``csrc/cuda/*.cu`` with ``nvcc -c`` for sm_80 and sm_90, with the flags setup.py uses
  (torch's default nvcc flags, then setup.py's ``NVCC_RELEASE_FLAGS`` + ``NVCC_FLAGS``, read
  from setup.py) and the torch include paths; a ``.cu`` that includes torch headers is
  compiled for sm_90 only (parsing torch's headers costs over a minute per architecture);
* every ``csrc/cuda/*.cpp`` (the torch binding: host code) with the host compiler against the
  installed torch headers (``-fsyntax-only``);
* the kernels' work partition (``csr_plan.h``) replayed on the host by
  ``cuda_host/csr_plan_check.cpp`` on skewed sparsity patterns.

The compiles run in parallel, once per session; each test reports one file's compiler output.
"""

from __future__ import annotations

import ast
import concurrent.futures as cf
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CUDA_DIR = ROOT / "csrc" / "cuda"
PLAN_CHECK = Path(__file__).resolve().parent / "cuda_host" / "csr_plan_check.cpp"
ARCHS = ("80", "90")
TORCH_INCLUDE = re.compile(r"^\s*#\s*include\s*[<\"](torch|ATen|c10)/", re.M)

pytestmark = pytest.mark.requires_nvcc


def _nvcc() -> str:
    found = shutil.which("nvcc")
    if found:
        return found
    return "/usr/local/cuda/bin/nvcc"


def _cxx() -> str:
    return os.environ.get("CXX") or shutil.which("c++") or "g++"


def setup_flag_lists() -> dict:
    """The literal ``NVCC_*`` lists assigned at the top level of setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.startswith("NVCC_"):
                out[name] = ast.literal_eval(node.value)
    return out


def _cuda_includes() -> list:
    """The toolkit's include flags as nvcc itself passes them (nvcc may be a wrapper script)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and (Path(home) / "include" / "cuda_runtime.h").exists():
            return [f"-I{Path(home) / 'include'}"]
    try:
        dry = subprocess.run(
            [_nvcc(), "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True, text=True, timeout=60
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        dry = ""
    for line in dry.splitlines():
        if line.startswith("#$ INCLUDES="):
            return [flag.strip('"') for flag in line.split("=", 1)[1].split()]
    return ["-I/usr/local/cuda/include"]


def _torch_includes() -> list:
    from torch.utils.cpp_extension import include_paths

    flags = [f"-I{p}" for p in include_paths()]
    flags.append(f"-I{sysconfig.get_paths()['include']}")
    flags += _cuda_includes()
    # A CPU-only torch wheel ships c10/cuda without the header its CUDA build generates.
    if not any((Path(p) / "c10/cuda/impl/cuda_cmake_macros.h").exists() for p in include_paths()):
        flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    return flags


def _uses_torch(path: Path) -> bool:
    return bool(TORCH_INCLUDE.search(path.read_text()))


def _jobs():
    """(name, argv) of every compile of this module."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    flags = setup_flag_lists()
    includes = [f"-I{ROOT / 'csrc'}", f"-I{CUDA_DIR}"] + _torch_includes()
    defines = ["-DSPD_WITH_CUDA"]
    out_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"spd_cuda_check_{os.getpid()}"
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for src in sorted(CUDA_DIR.glob("*.cu")):
        archs = ARCHS[-1:] if _uses_torch(src) else ARCHS
        for arch in archs:
            argv = [_nvcc(), "-c", str(src), "-o", str(out_dir / f"{src.stem}_sm{arch}.o")]
            argv += list(COMMON_NVCC_FLAGS) + flags["NVCC_RELEASE_FLAGS"] + flags["NVCC_FLAGS"]
            argv += [f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xcompiler", "-fPIC"]
            argv += defines + includes
            jobs.append((f"{src.name}:sm_{arch}", argv))
    for src in sorted(CUDA_DIR.glob("*.cpp")):
        argv = [_cxx(), "-fsyntax-only", "-std=c++17", "-fPIC", "-Wall", "-Wno-c++20-extensions", str(src)]
        argv += defines + includes
        jobs.append((f"{src.name}:host", argv))
    binary = out_dir / "csr_plan_check"
    jobs.append(
        (
            "csr_plan_check",
            [_cxx(), "-std=c++17", "-O1", "-Wall", f"-I{CUDA_DIR}", str(PLAN_CHECK), "-o", str(binary)],
        )
    )
    return jobs, out_dir


def _run(argv):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    return proc.returncode, (proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def compiled():
    """Compile everything in parallel once; name -> (returncode, output)."""
    jobs, out_dir = _jobs()
    workers = max(1, min(len(jobs), os.cpu_count() or 1, 4))
    try:
        with cf.ThreadPoolExecutor(workers) as pool:
            futures = {name: pool.submit(_run, argv) for name, argv in jobs}
            results = {name: f.result() for name, f in futures.items()}
        if results["csr_plan_check"][0] == 0:
            results["csr_plan_check:run"] = _run([str(out_dir / "csr_plan_check")])
        yield results
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def _compile_ids():
    ids = []
    for src in sorted(CUDA_DIR.glob("*.cu")):
        archs = ARCHS[-1:] if _uses_torch(src) else ARCHS
        ids += [f"{src.name}:sm_{a}" for a in archs]
    ids += [f"{src.name}:host" for src in sorted(CUDA_DIR.glob("*.cpp"))]
    return ids


def test_there_are_cuda_sources_to_check():
    assert sorted(p.name for p in CUDA_DIR.glob("*.cu")), "no csrc/cuda/*.cu found"
    assert sorted(p.name for p in CUDA_DIR.glob("*.cpp")), "no torch binding csrc/cuda/*.cpp found"


def test_setup_py_flags_are_readable_and_used():
    flags = setup_flag_lists()
    assert {"NVCC_FLAGS", "NVCC_RELEASE_FLAGS", "NVCC_DEBUG_FLAGS"} <= set(flags)
    assert "-std=c++17" in flags["NVCC_FLAGS"]
    assert "-U__CUDA_NO_HALF_OPERATORS__" in flags["NVCC_FLAGS"]
    src = (ROOT / "setup.py").read_text()
    assert "NVCC_FLAGS" in src.split("def _extensions", 1)[1], "setup.py must build with NVCC_FLAGS"


@pytest.mark.parametrize("name", _compile_ids())
def test_compiles(compiled, name):
    rc, output = compiled[name]
    assert rc == 0, f"{name} failed to compile:\n{output[-8000:]}"


def test_work_partition_on_the_host(compiled):
    rc, output = compiled["csr_plan_check"]
    assert rc == 0, f"csr_plan_check failed to compile:\n{output[-8000:]}"
    rc, output = compiled["csr_plan_check:run"]
    assert rc == 0 and output.rstrip().endswith("all ok"), output[-8000:]
    assert output.count("\nok ") > 100  # the case grid really ran
