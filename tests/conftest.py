"""Shared fixtures and markers. No device query at import time: GPU tests skip by marker."""

import os
import random
import shutil
import sys

import pytest
import torch

# tests/ is on sys.path (rootdir conftest), so `import helpers` works from every test module; the
# tiny fixtures of tests/nn and tests/spd are importable from every folder too.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _sub in ("nn", "spd"):
    if os.path.join(_HERE, _sub) not in sys.path:
        sys.path.append(os.path.join(_HERE, _sub))


def pytest_configure(config):
    """Under CI=true or SPD_REQUIRE_EXT=1 a missing or unloadable extension, or one that loads
    but whose cpu backend reports itself unavailable (no CPU kernels registered: a build without
    AVX2, another architecture), stops the run at once with one line (otherwise the cpu tests
    would skip and the suite pass without them)."""
    try:
        from spd_kernels import _ext
    except ImportError as exc:  # SPD_REQUIRE_EXT=1: importing the package already refused
        pytest.exit(str(exc), returncode=pytest.ExitCode.USAGE_ERROR)
    if not _ext.ext_required():
        return
    if _ext._C is None:
        pytest.exit(_ext.missing_message(_ext.IMPORT_ERROR), returncode=pytest.ExitCode.USAGE_ERROR)
    import spd_kernels as sk

    reasons = sk.available_backends()["cpu"]
    if reasons:
        pytest.exit(
            "spd_kernels: the cpu backend is required (SPD_REQUIRE_EXT / CI) but reports itself "
            f"unavailable: {'; '.join(reasons)}; rebuild the extension on an x86-64 CPU with AVX2 "
            "and FMA, or set SPD_REQUIRE_EXT=0",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tokenizer and teacher-output caches of the runs under test go to a temporary folder
    (subprocesses inherit it), never the user's ~/.cache/spd."""
    old = os.environ.get("SPD_CACHE")
    os.environ["SPD_CACHE"] = str(tmp_path_factory.mktemp("spd-cache"))
    yield
    if old is None:
        os.environ.pop("SPD_CACHE", None)
    else:
        os.environ["SPD_CACHE"] = old


@pytest.fixture(autouse=True)
def seed():
    """Every test starts from the same seeds and no remembered backend decision (tests swap and
    patch backends)."""
    from spd_kernels.ops import clear_dispatch_cache

    clear_dispatch_cache()
    random.seed(0)
    torch.manual_seed(0)
    yield 0


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    has_nvcc = shutil.which("nvcc") is not None or os.path.exists("/usr/local/cuda/bin/nvcc")
    from spd_kernels import _ext

    skip_cuda = pytest.mark.skip(reason="no CUDA device")
    skip_ext = pytest.mark.skip(reason=f"extension not built ({_ext.IMPORT_ERROR})")
    skip_nvcc = pytest.mark.skip(reason="nvcc not found")
    for item in items:
        if "requires_cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)
        if "requires_ext" in item.keywords and _ext._C is None:
            item.add_marker(skip_ext)
        if "requires_nvcc" in item.keywords and not has_nvcc:
            item.add_marker(skip_nvcc)
