"""Loads the compiled extension ``spd_kernels._C`` once; its absence is a warning, not an error,
unless ``SPD_REQUIRE_EXT=1``: then ``import spd_kernels`` raises ``ImportError`` saying why.

The C++ kernels register themselves as ``torch.ops.spd_kernels_C.*`` when the library loads.
Without it the reference (and, on a GPU or under ``TRITON_INTERPRET=1``, Triton) backends
still work. The test suite also requires it under ``CI=true`` (:func:`ext_required`).
"""

from __future__ import annotations

import os
import warnings
from typing import Optional

import torch

C_NAMESPACE = "spd_kernels_C"
_C = None
IMPORT_ERROR: Optional[str] = None
_FALSE = ("", "0", "false", "no", "off")


def ext_required(env=None) -> bool:
    """Whether a missing extension is an error: ``SPD_REQUIRE_EXT`` when set (``0`` opts out),
    else ``CI`` (CI services set ``CI=true``; a CI job must not pass without the kernels)."""
    env = os.environ if env is None else env
    if "SPD_REQUIRE_EXT" in env:
        return env["SPD_REQUIRE_EXT"].strip().lower() not in _FALSE
    return env.get("CI", "").strip().lower() not in _FALSE


def missing_message(why: str) -> str:
    """The one line that says the required extension is not there, and why."""
    return (
        f"spd_kernels: the compiled extension spd_kernels._C is required (SPD_REQUIRE_EXT / CI) "
        f"but could not be loaded ({why}); build it with `make install` or "
        "`pip install --no-build-isolation -e .`, or set SPD_REQUIRE_EXT=0"
    )


try:
    from . import _C  # type: ignore[attr-defined, no-redef]  # noqa: F401
except ImportError as exc:  # not built, or built against another torch
    IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
    if os.environ.get("SPD_REQUIRE_EXT", "").strip().lower() not in _FALSE:
        raise ImportError(missing_message(IMPORT_ERROR)) from None
    if not ext_required():  # under CI the test run stops with missing_message() instead
        warnings.warn(
            "spd_kernels: the compiled extension spd_kernels._C could not be loaded "
            f"({IMPORT_ERROR}); the cpu/cuda backends are off, reference/triton still work. "
            "Build it with `pip install --no-build-isolation -e .`.",
            RuntimeWarning,
            stacklevel=2,
        )


def has_op(name: str, dispatch_key: str = "CompositeExplicitAutograd") -> bool:
    """Whether ``torch.ops.spd_kernels_C.<name>`` has a kernel for ``dispatch_key``
    ("CPU", "CUDA"; the default matches ops registered for every key)."""
    if _C is None:
        return False
    qualname = f"{C_NAMESPACE}::{name}"
    try:
        if not torch._C._dispatch_has_kernel(qualname):
            return False
        return torch._C._dispatch_has_kernel_for_dispatch_key(qualname, dispatch_key)
    except RuntimeError:
        return False


def c_op(name: str):
    return getattr(getattr(torch.ops, C_NAMESPACE), name)


def build_info() -> dict:
    """What the extension was built with (empty when it is not loaded)."""
    if _C is None:
        return {}
    import json

    return json.loads(c_op("build_info")())
