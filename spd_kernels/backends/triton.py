"""``triton`` backend: block-sparse Triton kernels (``spd_kernels/triton_ops``).

Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (how CI checks it).
"""

from __future__ import annotations

import os
from typing import List

from .base import Backend


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class TritonBackend(Backend):
    name = "triton"

    def availability(self) -> List[str]:
        try:
            import triton  # noqa: F401
        except ImportError as exc:
            return [f"triton is not importable ({exc})"]
        import torch

        if not torch.cuda.is_available() and not interpreter_on():
            return ["no CUDA device (set TRITON_INTERPRET=1 to run it on the CPU interpreter)"]
        return ["Triton kernels are not implemented yet"]
