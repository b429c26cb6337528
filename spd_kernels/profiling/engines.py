"""The dense engines a user would run instead of a pruned model, for end-to-end comparisons.

Each engine runs the *dense twin* (same weights, plain linears) of the pruned model:

==================  ==========================================================================
name                what runs
==================  ==========================================================================
``eager``           the twin in PyTorch eager mode, with the attention the model has (SDPA for
                    an exported Hugging Face model)
``eager-attention`` the twin with Hugging Face's eager (matmul + softmax) attention
``compiled``        ``torch.compile`` of the twin (compile time excluded)
``onnxruntime``     the twin exported to ONNX, ONNX Runtime CPU with every graph optimisation
``onnxruntime-fused`` the same after ``onnxruntime.transformers``' BERT fusions (fused
                    attention, skip layer norm, bias GELU); BERT-family configs only
``onnxruntime-spin``, the two ONNX Runtime engines with their worker threads spinning between
``onnxruntime-fused-spin`` runs (ONNX Runtime's own default): faster wake-up, cores held
==================  ==========================================================================

ONNX Runtime and onnx are benchmark extras (``requirements/bench.txt``), never a dependency of
the package: without them those engines are skipped with the reason. Sessions run with
``intra_op_num_threads`` = the timing threads; the plain engines with spinning off, the
``-spin`` ones with it on, so a benchmark can time both and count the faster. Spinning threads
hold the cores for a while after a run: :func:`~spd_kernels.profiling.timing.time_interleaved`'s
``settle`` pause lets them go to sleep before the next engine is timed.
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, List, Mapping, Optional, Sequence

import torch
from torch import nn

ENGINES = (
    "eager",
    "eager-attention",
    "compiled",
    "onnxruntime",
    "onnxruntime-spin",
    "onnxruntime-fused",
    "onnxruntime-fused-spin",
)
DEFAULT_ENGINES = ENGINES
ORT_ENGINES = ("onnxruntime", "onnxruntime-spin", "onnxruntime-fused", "onnxruntime-fused-spin")
# the profiler's ``impl`` column for each engine
IMPL_OF = {
    "eager": "dense_eager",
    "eager-attention": "dense_eager_attention",
    "compiled": "dense_compiled",
    "onnxruntime": "onnxruntime",
    "onnxruntime-spin": "onnxruntime_spin",
    "onnxruntime-fused": "onnxruntime_fused",
    "onnxruntime-fused-spin": "onnxruntime_fused_spin",
}


@dataclass
class Engine:
    """One way to run a model on fixed inputs: ``fn()`` returns its first floating output."""

    name: str
    impl: str
    backend: str
    fn: Optional[Callable[[], torch.Tensor]]
    skipped: str = ""  # why it cannot run here (fn is None then)
    note: str = ""
    files: List[str] = field(default_factory=list)


def check_engines(names: Sequence[str]) -> List[str]:
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        raise ValueError(f"unknown engine(s) {unknown}; choose from {list(ENGINES)}")
    return list(dict.fromkeys(names))


def first_float(out) -> torch.Tensor:
    """The first floating tensor of a model output (tensor, tuple, dict or ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        out = list(out.values())
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    for o in out:
        if isinstance(o, torch.Tensor) and o.is_floating_point():
            return o
    raise TypeError("the model output holds no floating tensor")


def call_model(model: nn.Module, inputs) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    return model(*inputs)


def inference_fn(model: nn.Module, inputs) -> Callable[[], torch.Tensor]:
    def run():
        with torch.inference_mode():
            return first_float(call_model(model, inputs))

    return run


def with_attention(model: nn.Module, impl: str) -> Optional[nn.Module]:
    """A deep copy of a Hugging Face ``model`` running attention ``impl``; None when it has no
    attention switch or refuses ``impl``."""
    if getattr(getattr(model, "config", None), "_attn_implementation", None) is None:
        return None
    twin = copy.deepcopy(model)
    if twin.config._attn_implementation != impl:
        try:
            twin.set_attn_implementation(impl)
        except (AttributeError, ValueError, ImportError):
            return None
    return twin if twin.config._attn_implementation == impl else None


class _Positional(nn.Module):
    """``model(**dict(zip(keys, args)))`` -> its first floating output: what ONNX export traces."""

    def __init__(self, model: nn.Module, keys: Sequence[str]):
        super().__init__()
        self.model = model
        self.keys = list(keys)

    def forward(self, *args):
        return first_float(self.model(**dict(zip(self.keys, args))))


def _ort_session(path: str, threads: int, spin: bool = False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def export_onnx(model: nn.Module, inputs: Mapping[str, torch.Tensor], path: str) -> str:
    """Export ``model`` (eager attention, the pattern ONNX Runtime's fusions know) to ``path``
    at the inputs' fixed shapes; returns ``path``."""
    src = with_attention(model, "eager") or copy.deepcopy(model)
    src.eval()
    keys = list(inputs)
    with torch.no_grad():
        torch.onnx.export(
            _Positional(src, keys),
            tuple(inputs[k] for k in keys),
            path,
            input_names=keys,
            output_names=["output"],
            # symbolic batch and sequence: the graph ONNX Runtime's fusions are written for
            dynamic_axes={
                **{k: {0: "batch", 1: "sequence"} for k in keys},
                "output": {0: "batch", 1: "sequence"},
            },
            opset_version=17,
            dynamo=False,
        )
    return path


def _bert_dims(model: nn.Module) -> Optional[tuple]:
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) not in ("bert", "roberta", "distilbert"):
        return None
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_heads", None)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "dim", None)
    return (cfg.model_type, int(heads), int(hidden)) if heads and hidden else None


def _fuse(plain: str, model_type: str, heads: int, hidden: int, path: str) -> tuple:
    from onnxruntime.transformers import optimizer

    fused = optimizer.optimize_model(plain, model_type=model_type, num_heads=heads, hidden_size=hidden)
    fused.save_model_to_file(path)
    return path, {k: v for k, v in fused.get_fused_operator_statistics().items() if v}


def onnxruntime_engines(
    twin: nn.Module, inputs, names: Sequence[str], threads: int, workdir: Optional[str] = None
) -> List[Engine]:
    """The ``onnxruntime`` / ``onnxruntime-fused`` engines among ``names`` (skipped with the
    reason when ONNX Runtime, onnx or the export is not available)."""
    wanted = [n for n in ORT_ENGINES if n in names]
    if not wanted:
        return []

    def skipped(reason: str) -> List[Engine]:
        return [Engine(n, IMPL_OF[n], "onnxruntime", None, skipped=reason) for n in wanted]

    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError as exc:
        return skipped(
            f"ONNX Runtime baseline skipped: {exc.name or exc} is not installed "
            "(pip install -c requirements/constraints.txt -r requirements/bench.txt)"
        )
    if not isinstance(inputs, Mapping):
        return skipped("ONNX Runtime baseline skipped: it needs keyword inputs (a dict of tensors)")
    workdir = workdir or tempfile.mkdtemp(prefix="spd_onnx_")
    plain = os.path.join(workdir, "dense.onnx")
    try:
        export_onnx(twin, inputs, plain)
    except Exception as exc:  # noqa: BLE001  (any exporter failure means: no such baseline)
        return skipped(f"ONNX export failed: {type(exc).__name__}: {str(exc)[:200]}")
    feeds = {k: v.detach().cpu().numpy() for k, v in inputs.items()}
    version = f"onnxruntime {ort.__version__}"
    out: List[Engine] = []
    fused = None  # (path, note) of the fused graph, made once for both spin settings
    for name in wanted:
        spin = name.endswith("-spin")
        path, note = plain, f"{version}, ORT_ENABLE_ALL"
        try:
            if name.startswith("onnxruntime-fused"):
                if fused is None:
                    dims = _bert_dims(twin)
                    if dims is None:
                        raise ValueError("fusions need a BERT-family config")
                    fpath, stats = _fuse(plain, *dims, os.path.join(workdir, "dense_fused.onnx"))
                    fused = (fpath, ", fusions " + " ".join(f"{k}x{v}" for k, v in sorted(stats.items())))
                path, note = fused[0], note + fused[1]
            note += ", spinning on" if spin else ", spinning off"
            session = _ort_session(path, threads, spin)
        except Exception as exc:  # noqa: BLE001  (a baseline that cannot be built is reported, not fatal)
            out.append(
                Engine(name, IMPL_OF[name], "onnxruntime", None, skipped=f"{type(exc).__name__}: {exc}"[:300])
            )
            continue

        def run(session=session):
            return torch.from_numpy(session.run(None, feeds)[0])

        out.append(Engine(name, IMPL_OF[name], "onnxruntime", run, note=note, files=[path]))
    return out


def dense_engines(
    twin: nn.Module,
    inputs,
    names: Sequence[str] = DEFAULT_ENGINES,
    *,
    threads: Optional[int] = None,
    workdir: Optional[str] = None,
) -> List[Engine]:
    """The engines ``names`` over the dense ``twin`` (in eval mode), in ``ENGINES`` order."""
    names = check_engines(names)
    twin.eval()
    threads = int(threads or torch.get_num_threads())
    out: List[Engine] = []
    for name in names:
        if name == "eager":
            out.append(Engine(name, IMPL_OF[name], "aten", inference_fn(twin, inputs)))
        elif name == "eager-attention":
            if getattr(getattr(twin, "config", None), "_attn_implementation", None) == "eager":
                continue  # the same as "eager"
            model = with_attention(twin, "eager")
            if model is None:
                out.append(
                    Engine(name, IMPL_OF[name], "aten", None, skipped="no Hugging Face attention switch")
                )
            else:
                out.append(
                    Engine(name, IMPL_OF[name], "aten", inference_fn(model, inputs), note="eager attention")
                )
        elif name == "compiled":
            compiled = torch.compile(twin)
            out.append(
                Engine(
                    name,
                    IMPL_OF[name],
                    "inductor",
                    inference_fn(compiled, inputs),
                    note="compile time excluded",
                )
            )
    out += onnxruntime_engines(twin, inputs, names, threads, workdir)
    order = {n: i for i, n in enumerate(ENGINES)}
    return sorted(out, key=lambda e: order[e.name])


__all__ = [
    "DEFAULT_ENGINES",
    "ENGINES",
    "Engine",
    "IMPL_OF",
    "ORT_ENGINES",
    "call_model",
    "check_engines",
    "dense_engines",
    "export_onnx",
    "first_float",
    "inference_fn",
    "onnxruntime_engines",
    "with_attention",
]
