"""Backend registry and the chooser.

A call takes the first backend of its device's priority list with no reasons against it
(CUDA: cuda ▸ triton ▸ reference; CPU: cpu ▸ reference). Given the weight's density, the
automatic choice also skips a backend with *preference* reasons (the cuda CSR kernels above their
measured crossover with dense). ``use_backend(name)`` or the environment variable
``SPD_KERNELS_BACKEND`` forces one; when the forced (or every) backend cannot run a call,
:class:`NoBackendError` lists each backend and its reasons. :func:`dispatch_reasons` lists them
for any call.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from .base import OPS, Backend
from .cpu import CpuBackend
from .cuda import CudaBackend
from .reference import ReferenceBackend
from .triton import TritonBackend

ENV_VAR = "SPD_KERNELS_BACKEND"

BACKENDS: Dict[str, Backend] = {
    b.name: b for b in (ReferenceBackend(), CpuBackend(), TritonBackend(), CudaBackend())
}
PRIORITY: Dict[str, Tuple[str, ...]] = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpu", "reference"),
}
_forced: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("spd_backend", default=None)


class NoBackendError(ValueError):
    """No backend (or not the forced one) can run a call; the message lists every reason."""


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known backends: {sorted(BACKENDS)}")
    return name


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Force backend ``name`` inside the block (``None`` restores automatic choice)."""
    token = _forced.set(None if name is None else _check_name(name))
    try:
        yield
    finally:
        _forced.reset(token)


def forced_backend() -> Optional[str]:
    name = _forced.get()
    if name is None:
        env = os.environ.get(ENV_VAR, "").strip()
        if env and env != "auto":
            name = _check_name(env)
    return name


def available_backends() -> Dict[str, List[str]]:
    """Backend name -> reasons it cannot run in this process (empty list = available)."""
    return {name: b.availability() for name, b in BACKENDS.items()}


def _reasons(
    b: Backend, op: str, device: torch.device, dtype: torch.dtype, block, density: Optional[float], auto: bool
) -> List[str]:
    reasons = b.not_supported_reasons(op, device, dtype, block)
    if not reasons and auto and density is not None:
        reasons = b.preference_reasons(op, device, dtype, block, density)
    return reasons


def dispatch_reasons(
    op: str, device: torch.device, dtype: torch.dtype, block: Tuple[int, int], density: Optional[float] = None
) -> Dict[str, List[str]]:
    """Backend name -> why the automatic choice would not take it for this call (empty: it can);
    with ``density`` (stored blocks / all blocks) the preference reasons are included."""
    return {name: _reasons(b, op, device, dtype, block, density, True) for name, b in BACKENDS.items()}


def choose_backend(
    op: str,
    device: torch.device,
    dtype: torch.dtype,
    block: Tuple[int, int],
    density: Optional[float] = None,
) -> Backend:
    """The backend that runs ``op``; ``density`` (stored blocks / all blocks) lets the automatic
    choice pass over a backend that is slower than dense at that density."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; ops are {OPS}")
    forced = forced_backend()
    if forced is not None:
        candidates: Tuple[str, ...] = (forced,)
    else:
        candidates = PRIORITY.get(device.type, ("reference",))
    auto = forced is None
    for name in candidates:
        if not _reasons(BACKENDS[name], op, device, dtype, block, density, auto):
            return BACKENDS[name]
    lines = []
    for name, b in BACKENDS.items():
        reasons = _reasons(b, op, device, dtype, block, density, auto)
        lines.append(f"  {name}: " + ("; ".join(reasons) if reasons else "can run it"))
    what = f"backend {forced!r} (forced)" if forced else "no backend"
    raise NoBackendError(
        f"{what} cannot run {op} on device={device}, dtype={dtype}, block={block}:\n" + "\n".join(lines)
    )
