"""Builds spd_kernels (with its C++/CUDA extension spd_kernels._C) and the training package spd.

Build against the torch already installed:  pip install --no-build-isolation -e .

Environment:
  SPD_SKIP_CUDA_BUILD=1   build the CPU extension only, even when torch and nvcc have CUDA
  SPD_CUDA_ARCHS="80;90"  CUDA architectures (default: 80;90, i.e. A100 and H100/H200); the
                          last one is also embedded as PTX, so newer GPUs JIT-compile it
  SPD_DEBUG=1             -O0 -g, asserts on
  SPD_NO_NATIVE=1         no -march=native (portable binary; AVX2/FMA still used if supported)
  MAX_JOBS=N              parallel compile jobs (ninja)
"""

import glob
import os
import subprocess
import sys
import tempfile

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - a build without torch cannot do anything useful
    sys.exit(
        "spd_kernels builds against the torch already installed: install torch first, then "
        "`pip install --no-build-isolation -e .` (a build-isolated environment has no torch)."
    )

HERE = os.path.dirname(os.path.abspath(__file__))

# nvcc flags besides the architectures. Literal lists on purpose: the compile-only check of the
# CUDA sources (tests/kernels/test_cuda_sources.py) reads them from this file.
NVCC_FLAGS = [
    "-std=c++17",
    "--expt-relaxed-constexpr",
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
]
NVCC_RELEASE_FLAGS = ["-O3", "--use_fast_math", "-lineinfo"]
NVCC_DEBUG_FLAGS = ["-O0", "-g", "-G"]


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _compiler_accepts(flags):
    """Whether the C++ compiler builds a trivial file with ``flags``."""
    cxx = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "t.cpp")
        with open(src, "w") as f:
            f.write("int main() { return 0; }\n")
        try:
            r = subprocess.run(
                [cxx, *flags, src, "-o", os.path.join(d, "t")], capture_output=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return r.returncode == 0


def _cxx_flags(debug: bool):
    flags = ["-std=c++17", "-fopenmp"]
    flags += ["-O0", "-g", "-DSPD_DEBUG"] if debug else ["-O3", "-DNDEBUG"]
    if not _flag("SPD_NO_NATIVE") and _compiler_accepts(["-march=native"]):
        flags.append("-march=native")
    for vec in (["-mavx2", "-mfma", "-mf16c"],):
        if _compiler_accepts(vec):
            flags += vec
    return flags


def _want_cuda() -> bool:
    if _flag("SPD_SKIP_CUDA_BUILD"):
        return False
    if torch.version.cuda is None:
        return False
    return CUDA_HOME is not None


def _extensions():
    debug = _flag("SPD_DEBUG")
    cxx = _cxx_flags(debug)
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    define_macros = []
    kwargs = dict(
        name="spd_kernels._C",
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )
    if _want_cuda():
        archs = os.environ.get("SPD_CUDA_ARCHS", "80;90").replace(",", ";").split(";")
        archs = [a.strip().replace(".", "").replace("+PTX", "") for a in archs if a.strip()]
        nvcc = list(NVCC_DEBUG_FLAGS if debug else NVCC_RELEASE_FLAGS) + NVCC_FLAGS
        for a in archs:
            nvcc += [f"-gencode=arch=compute_{a},code=sm_{a}"]
        if archs:  # PTX of the newest arch: a GPU newer than the list still finds a kernel image
            nvcc += [f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
        define_macros.append(("SPD_WITH_CUDA", None))
        sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
        return [
            CUDAExtension(
                sources=sources,
                define_macros=define_macros,
                extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                **kwargs,
            )
        ]
    return [
        CppExtension(sources=sources, define_macros=define_macros, extra_compile_args={"cxx": cxx}, **kwargs)
    ]


packages = find_packages(include=["spd_kernels", "spd_kernels.*"])
packages += find_packages(where="python", include=["spd", "spd.*"])

setup(
    name="spd_kernels",
    version="0.1.0",
    description="Block-sparse and unstructured-sparse linear kernels (CPU, Triton, CUDA) and "
    "Sparse Progressive Distillation / movement pruning for transformers",
    packages=packages,
    package_dir={"spd": "python/spd"},
    python_requires=">=3.10",
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["spd=spd.cli:main"]},
    zip_safe=False,
)
