"""Triton kernels of the ``triton`` backend, one module per op family (``bsr_linear``).

Importing this package does not import triton; :func:`load` does, on first use.

Triton decides at decoration time (``@triton.jit``) whether a kernel is compiled or run by the
interpreter (``TRITON_INTERPRET=1``). So that CPU tensors (interpreter) and CUDA tensors
(compiled) both work in one process, whatever was imported first, :func:`load` keeps up to two
instances of a kernel module: the ordinary import, and a private copy executed with
``TRITON_INTERPRET=1`` set while its decorators run.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
from types import ModuleType
from typing import Dict, Tuple

_lock = threading.Lock()
_loaded: Dict[Tuple[str, bool], ModuleType] = {}


def _is_interpreted(module: ModuleType) -> bool:
    return bool(getattr(module, "INTERPRETED", False))


def load(name: str = "bsr_linear", interpret: bool = False) -> ModuleType:
    """The kernel module ``spd_kernels.triton_ops.<name>``, interpreted or compiled.

    ``interpret=False`` is the ordinary import (it follows ``TRITON_INTERPRET`` at the moment it
    is first imported, as any Triton module does); ``interpret=True`` guarantees kernels that
    run under the interpreter (CPU tensors).
    """
    key = (name, interpret)
    module = _loaded.get(key)
    if module is not None:
        return module
    with _lock:
        module = _loaded.get(key)
        if module is not None:
            return module
        qualname = f"{__name__}.{name}"
        if not interpret:
            module = importlib.import_module(qualname)
        else:
            existing = sys.modules.get(qualname)
            if existing is not None and _is_interpreted(existing):
                module = existing
            else:
                module = _load_interpreted_copy(qualname)
        _loaded[key] = module
        return module


def _load_interpreted_copy(qualname: str) -> ModuleType:
    spec = importlib.util.find_spec(qualname)
    if spec is None or spec.origin is None:
        raise ImportError(f"cannot find the kernel module {qualname}")
    copy_name = f"{qualname}__interpreted"
    copy_spec = importlib.util.spec_from_file_location(copy_name, spec.origin)
    module = importlib.util.module_from_spec(copy_spec)
    # Registered before it runs: triton reads the kernels' source through their module.
    sys.modules[copy_name] = module
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        copy_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(copy_name, None)
        raise
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
    if not _is_interpreted(module):
        raise ImportError(f"{qualname}: kernels were not built for the interpreter")
    return module
