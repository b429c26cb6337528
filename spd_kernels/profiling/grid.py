"""The profiling grid: what to time, parsed and validated before anything is timed.

A grid is op × layout × sparsity × dtype × shape for one backend. Every value is checked by
:func:`plan` up front — an unknown layout, a block that does not divide a shape, a dtype the
backend cannot run, a sparsity outside [0, 1] — so a long run never dies half-way on a typo.

Shapes follow the linear layer ``y = x·Wᵀ``: x is (M, K) tokens × in_features, W is (N, K).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..backends import BACKENDS, NoBackendError, choose_backend, use_backend
from ..formats import _check_divisible

OPS = ("forward", "input_grad", "weight_grad", "fwd_bwd")
# the custom ops (spd_kernels.ops) each profiled op runs
OP_KERNELS: Dict[str, Tuple[str, ...]] = {
    "forward": ("dds_t",),
    "input_grad": ("dds",),
    "weight_grad": ("sdd",),
    "fwd_bwd": ("dds_t", "dds", "sdd"),
}
BASELINES = ("eager", "compiled", "torch-sparse")

# hidden, FFN (intermediate) sizes of the encoder's linear layers
PRESETS: Dict[str, Tuple[int, int]] = {
    "bert-base": (768, 3072),
    "bert-large": (1024, 4096),
    "minilm": (384, 1536),
}

DTYPES: Dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
}

_LAYOUT_RE = re.compile(r"^bsr(\d+)(?:x(\d+))?$")
LAYOUT_FORMS = "csr, bsrB (square B×B blocks, e.g. bsr16, bsr32, bsr64) or bsrBMxBK (e.g. bsr32x64)"


@dataclass(frozen=True)
class Shape:
    """One linear layer: x (M, K) · W (N, K)ᵀ -> (M, N); ``name`` labels it in the reports."""

    name: str
    M: int
    N: int
    K: int


@dataclass(frozen=True)
class Layout:
    """``csr`` is block (1, 1); ``bsr32`` is (32, 32); ``bsr32x64`` is (32, 64)."""

    name: str
    block: Tuple[int, int]

    @property
    def block_str(self) -> str:
        return f"{self.block[0]}x{self.block[1]}"


def parse_layout(text: Union[str, Layout]) -> Layout:
    if isinstance(text, Layout):
        return text
    if not isinstance(text, str):
        raise TypeError(f"layout must be a string, got {type(text).__name__} {text!r}")
    t = text.strip().lower()
    if t == "csr":
        return Layout("csr", (1, 1))
    m = _LAYOUT_RE.match(t)
    if m is None:
        raise ValueError(f"unknown layout {text!r}; expected {LAYOUT_FORMS}")
    bm = int(m.group(1))
    bk = int(m.group(2)) if m.group(2) else bm
    if bm < 1 or bk < 1:
        raise ValueError(f"layout {text!r} has a zero block size; expected {LAYOUT_FORMS}")
    name = f"bsr{bm}" if bm == bk else f"bsr{bm}x{bk}"
    return Layout(name, (bm, bk))


def parse_dtype(text: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(text, torch.dtype):
        if text not in DTYPES.values():
            raise ValueError(f"unsupported dtype {text}; expected one of {sorted(set(DTYPES))}")
        return text
    key = str(text).strip().lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {text!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_sparsity(value: Union[str, float]) -> float:
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"sparsity must be a number in [0, 1], got {value!r}") from None
    if math.isnan(s) or not 0.0 <= s <= 1.0:
        raise ValueError(f"sparsity must lie in [0, 1] (fraction of weights pruned), got {value!r}")
    return s


def parse_shape(text: Union[str, Sequence[int], Shape], name: str = "custom") -> Shape:
    """``"M,N,K"`` (or ``MxNxK``, or a triple) -> :class:`Shape`."""
    if isinstance(text, Shape):
        dims: Sequence = (text.M, text.N, text.K)
        name = text.name
    elif isinstance(text, str):
        dims = [d for d in re.split(r"[,x×\s]+", text.strip()) if d]
    else:
        dims = list(text)
    try:
        m, n, k = (int(d) for d in dims)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be three integers M,N,K (x (M, K), W (N, K)), got {text!r}") from None
    if m < 1 or n < 1 or k < 1:
        raise ValueError(f"shape M,N,K must be positive, got {text!r}")
    return Shape(name, m, n, k)


def preset_shapes(preset: str, tokens: int = 128) -> List[Shape]:
    """The linear shapes of one encoder layer of ``preset`` for ``tokens`` = batch × sequence rows:
    q/k/v and attention output (hidden -> hidden), intermediate (hidden -> FFN), output
    (FFN -> hidden)."""
    key = str(preset).strip().lower()
    if key not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets are {sorted(PRESETS)}")
    if int(tokens) < 1:
        raise ValueError(f"tokens (M) must be >= 1, got {tokens}")
    h, f = PRESETS[key]
    m = int(tokens)
    return [
        Shape(f"{key}.qkv_out", m, h, h),
        Shape(f"{key}.intermediate", m, f, h),
        Shape(f"{key}.output", m, h, f),
    ]


@dataclass
class ProfileSpec:
    """What to profile (strings are parsed by :func:`plan`).

    ``backend``: ``"auto"`` (what the dispatcher picks) or a registered backend name.
    ``baselines``: any of ``eager`` (dense ``F.linear`` and the dense backward products),
    ``compiled`` (the same under ``torch.compile``), ``torch-sparse`` (``torch.sparse`` CSR/BSR).
    ``min_run_time`` (seconds) and ``min_samples`` bound each measurement from below.
    ``compile_backend``: ``torch.compile``'s backend for the ``compiled`` baseline.
    ``direct``: time the backend's kernels themselves (no dispatch, no autograd; needs a named
    ``backend``) instead of ``sparse_linear`` & co.
    ``interleave`` (CPU): time the dense baselines and all sparse cases of one (shape, dtype, op)
    side by side in ``min_samples`` rounds instead of one after the other.
    """

    shapes: Sequence[Union[str, Shape]] = field(default_factory=lambda: preset_shapes("minilm"))
    ops: Sequence[str] = OPS
    layouts: Sequence[Union[str, Layout]] = ("csr", "bsr32")
    sparsities: Sequence[Union[str, float]] = (0.5, 0.9)
    dtypes: Sequence[Union[str, torch.dtype]] = ("float32",)
    backend: str = "auto"
    baselines: Sequence[str] = BASELINES
    device: str = "cpu"
    threads: Optional[int] = None
    warmup: int = 2
    min_run_time: float = 0.1
    min_samples: int = 5
    check: bool = True
    seed: int = 0
    compile_backend: str = "inductor"
    direct: bool = False
    interleave: bool = False


@dataclass(frozen=True)
class Case:
    op: str
    shape: Shape
    layout: Layout
    sparsity: float
    dtype: torch.dtype


@dataclass
class Plan:
    """A validated grid: normalised values, the sparse cases, and the backend each op will use."""

    shapes: List[Shape]
    ops: List[str]
    layouts: List[Layout]
    sparsities: List[float]
    dtypes: List[torch.dtype]
    backend: str
    baselines: List[str]
    device: torch.device
    spec: ProfileSpec
    cases: List[Case]
    backend_names: Dict[Tuple[str, torch.dtype, Tuple[int, int]], str]

    def n_timings(self) -> int:
        """How many measurements the run takes (progress bar total)."""
        dense = len([b for b in self.baselines if b in ("eager", "compiled")])
        per_sparse = 1 + (1 if "torch-sparse" in self.baselines else 0)
        return len(self.shapes) * len(self.dtypes) * len(self.ops) * dense + len(self.cases) * per_sparse


def _choices(name: str, values: Sequence[str], allowed: Sequence[str]) -> List[str]:
    if isinstance(values, str):
        values = [values]
    out = []
    for v in values:
        key = str(v).strip().lower().replace("_", "-") if name == "baseline" else str(v).strip().lower()
        if key not in allowed:
            raise ValueError(f"unknown {name} {v!r}; expected one of {list(allowed)}")
        if key not in out:
            out.append(key)
    return out


def _dedup(xs):
    out = []
    for x in xs:
        if x not in out:
            out.append(x)
    return out


def plan(spec: ProfileSpec) -> Plan:
    """Validate ``spec`` and expand it into cases. Raises ``ValueError``/``TypeError`` naming the
    offending value; nothing is timed or allocated on the device before this returns."""
    ops = _choices("op", spec.ops, OPS)
    if not ops:
        raise ValueError("no ops to profile; choose from " + ", ".join(OPS))
    baselines = _choices("baseline", spec.baselines, BASELINES)
    backend = str(spec.backend).strip()
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown backend {spec.backend!r}; expected 'auto' or one of {sorted(BACKENDS)}")
    if spec.direct and backend == "auto":
        raise ValueError("direct=True times one backend's kernels: name the backend")
    try:
        device = torch.device(spec.device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {spec.device!r}; expected 'cpu' or 'cuda[:i]'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec.device!r} requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {spec.device!r} is not supported; expected 'cpu' or 'cuda[:i]'")
    if spec.threads is not None and int(spec.threads) < 1:
        raise ValueError(f"threads must be >= 1, got {spec.threads}")
    if int(spec.warmup) < 0:
        raise ValueError(f"warmup must be >= 0, got {spec.warmup}")
    if not float(spec.min_run_time) > 0:
        raise ValueError(f"min_run_time must be > 0 seconds, got {spec.min_run_time}")
    if int(spec.min_samples) < 1:
        raise ValueError(f"repeats (min_samples) must be >= 1, got {spec.min_samples}")

    dtypes = _dedup(parse_dtype(d) for d in spec.dtypes)
    layouts = _dedup(parse_layout(lay) for lay in spec.layouts)
    sparsities = _dedup(parse_sparsity(s) for s in spec.sparsities)
    shapes = _dedup(parse_shape(s) for s in spec.shapes)
    for what, xs in (
        ("dtypes", dtypes),
        ("layouts", layouts),
        ("sparsities", sparsities),
        ("shapes", shapes),
    ):
        if not xs:
            raise ValueError(f"no {what} to profile")

    for shape in shapes:
        for layout in layouts:
            try:
                _check_divisible((shape.N, shape.K), layout.block)
            except ValueError as exc:
                raise ValueError(
                    f"layout {layout.name} (block {layout.block}) does not divide shape {shape.name} "
                    f"(M={shape.M}, N={shape.N}, K={shape.K}): {exc}"
                ) from None

    # ask the registry which backend runs each kernel; a forced one that cannot is an error now
    names: Dict[Tuple[str, torch.dtype, Tuple[int, int]], str] = {}
    forced = None if backend == "auto" else backend
    with use_backend(forced):
        for op in ops:
            for dtype in dtypes:
                for layout in layouts:
                    chosen = []
                    for kernel in OP_KERNELS[op]:
                        try:
                            b = choose_backend(kernel, device, dtype, layout.block)
                        except NoBackendError as exc:
                            raise ValueError(
                                f"backend {backend!r} cannot run op {op} (kernel {kernel}) with dtype "
                                f"{dtype_name(dtype)}, layout {layout.name} on {device}: {exc}"
                            ) from None
                        if b.name not in chosen:
                            chosen.append(b.name)
                    names[(op, dtype, layout.block)] = "+".join(chosen)

    cases = [
        Case(op, shape, layout, s, dtype)
        for shape in shapes
        for dtype in dtypes
        for layout in layouts
        for s in sparsities
        for op in ops
    ]
    return Plan(shapes, ops, layouts, sparsities, dtypes, backend, baselines, device, spec, cases, names)
