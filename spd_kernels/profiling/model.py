"""End-to-end timing of a pruned model against its dense twin.

:func:`profile_model` takes any ``nn.Module`` and example inputs. The dense twin is a deep copy
in which every submodule that offers ``to_linear()`` (``MaskedLinear`` today, the packed
sparse layer once it lands) is replaced by the plain ``nn.Linear`` it stands for, so the two
models compute the same function and differ only in how the pruned linears run.

:func:`load_pruned_model` is the one place that reads a saved pruned model from a directory
(``spd profile --model DIR``); it forwards to the package's loader of pruned models.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..activations import apply_activation
from ..nn.sparse import FusedActivation
from .engines import IMPL_OF, Engine, call_model, check_engines, dense_engines, first_float, inference_fn
from .report import CSV_COLUMNS, add_speedups
from .timing import Timing, environment, time_callable, time_interleaved, torch_threads

Inputs = Union[Mapping[str, Any], Sequence[Any], torch.Tensor]


def _load_saved_pruned(directory: str) -> nn.Module:
    from ..checkpoint import load_pruned

    return load_pruned(directory)


# The loader used by ``spd profile --model DIR``: ``directory -> nn.Module``; by default the
# package's own loader of what ``sk.save_pruned`` / ``sk.save_pretrained`` wrote.
PRUNED_MODEL_LOADER: Optional[Callable[[str], nn.Module]] = _load_saved_pruned


def load_pruned_model(directory: str, loader: Optional[Callable[[str], nn.Module]] = None) -> nn.Module:
    """Load the pruned model saved in ``directory`` (the hook behind ``spd profile --model``)."""
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a path, got {type(directory).__name__}")
    if not os.path.isdir(directory):
        raise ValueError(f"--model {str(directory)!r} is not a directory")
    fn = loader or PRUNED_MODEL_LOADER
    if fn is None:
        raise NotImplementedError(
            f"cannot load {str(directory)!r}: no loader of saved pruned models is registered "
            "(spd_kernels.profiling.model.PRUNED_MODEL_LOADER is None). From Python, time an "
            "in-memory model with spd_kernels.profiling.model.profile_model(model, inputs)."
        )
    model = fn(str(directory))
    if not isinstance(model, nn.Module):
        raise TypeError(f"the loader returned {type(model).__name__}, expected an nn.Module")
    return model


class _Activation(nn.Module):
    """The activation a packed layer ran in its epilogue, as a module of the dense twin."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_activation(x, self.name)


def dense_twin(model: nn.Module) -> Tuple[nn.Module, List[str]]:
    """A deep copy of ``model`` that computes the same function with plain ``nn.Linear``s: every
    module with ``to_linear()`` is replaced by that linear (followed by the activation a packed
    layer fused into its epilogue), and every :class:`FusedActivation` placeholder by the
    identity. Returns (twin, names of the replaced linears)."""
    twin = copy.deepcopy(model)
    replaced: List[str] = []
    for name, mod in list(twin.named_modules()):
        if not name or any(name.startswith(r + ".") for r in replaced):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = twin.get_submodule(parent_name) if parent_name else twin
        if isinstance(mod, FusedActivation):
            setattr(parent, child, nn.Identity())
        elif callable(getattr(mod, "to_linear", None)):
            linear = mod.to_linear()
            act = getattr(mod, "activation", "none")
            setattr(parent, child, linear if act == "none" else nn.Sequential(linear, _Activation(act)))
            replaced.append(name)
    return twin, replaced


def _twin_linear(twin: nn.Module, name: str) -> nn.Linear:
    mod = twin.get_submodule(name)
    return mod[0] if isinstance(mod, nn.Sequential) else mod


def linear_sparsity(twin: nn.Module, names: Sequence[str]) -> float:
    """Fraction of zero weights over the replaced linears of a dense twin (0 when none)."""
    zeros = total = 0
    for name in names:
        w = _twin_linear(twin, name).weight
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total if total else 0.0


def example_inputs(model: nn.Module, batch: int = 1, seq_len: int = 128, seed: int = 0) -> Dict[str, Any]:
    """Random token ids and a full attention mask for a Hugging Face encoder (reads
    ``model.config.vocab_size``); shapes (batch, seq_len), dtype int64, on the model's device."""
    cfg = getattr(model, "config", None)
    vocab = getattr(cfg, "vocab_size", None)
    if vocab is None:
        raise ValueError("the model has no config.vocab_size; pass example inputs explicitly")
    if batch < 1 or seq_len < 1:
        raise ValueError(f"batch and seq_len must be >= 1, got batch={batch}, seq_len={seq_len}")
    max_pos = getattr(cfg, "max_position_embeddings", None)
    if max_pos is not None and seq_len > max_pos:
        raise ValueError(f"seq_len={seq_len} exceeds the model's max_position_embeddings={max_pos}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq_len), generator=g).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _bench(model: nn.Module, inputs: Inputs, op: str) -> Callable[[], object]:
    if op == "model_forward":
        return inference_fn(model, inputs)
    params = [p for p in model.parameters() if p.requires_grad]

    def fwd_bwd():
        loss = first_float(call_model(model, inputs)).float().pow(2).mean()
        return torch.autograd.grad(loss, params, allow_unused=True)

    return fwd_bwd


def _max_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.detach().float() - ref.detach().float()).abs().max()) if ref.numel() else 0.0


def profile_model(
    model: nn.Module,
    inputs: Inputs,
    *,
    ops: Sequence[str] = ("model_forward",),
    compile: bool = True,
    engines: Optional[Sequence[str]] = None,
    compile_sparse: bool = False,
    device: Union[str, torch.device, None] = None,
    threads: Optional[int] = None,
    warmup: int = 2,
    min_run_time: float = 0.2,
    min_samples: int = 5,
    timer: Callable[..., Timing] = time_callable,
    rounds: int = 1,
    tolerance: float = 1e-3,
    workdir: Optional[str] = None,
    variants: Optional[Mapping[str, nn.Module]] = None,
    name: str = "model",
    settle: float = 0.05,
) -> List[Dict[str, object]]:
    """Time ``model`` against its dense twin run by the dense engines a user would pick.

    ``ops``: ``model_forward`` (inference) and/or ``model_fwd_bwd`` (forward, a mean-square loss
    on the first output, gradients of every trainable parameter; torch engines only).
    ``engines``: names from :data:`~spd_kernels.profiling.engines.ENGINES` (default: ``eager``
    and, with ``compile``, ``compiled``); an engine that cannot run here gives a ``skipped``
    row with the reason. ``compile_sparse`` adds the pruned model under
    ``torch.compile(fullgraph=True)``. ``rounds > 1`` times every implementation side by side
    (:func:`~spd_kernels.profiling.timing.time_interleaved`, ``min_samples`` calls a round
    split over the rounds) instead of one after the other with ``timer``. Forward outputs are
    checked against the dense twin in eager mode: an implementation off by more than
    ``tolerance`` (max abs) gets status ``error``. Rows are in the profiler's CSV schema; M is
    the number of tokens when the inputs hold ``input_ids``; sparsity is the zero fraction
    over the linears the twin replaced. ``variants``: other pruned versions of the same dense
    model (e.g. other layouts), timed in the same rounds as ``model`` and the dense engines,
    each checked against its own dense twin; their rows' impl is ``spd_kernels/<key>``.
    ``settle``: seconds slept (untimed) each time the next implementation takes over in
    interleaved rounds, so one engine's idle spinning threads (ONNX Runtime's spinning workers,
    OpenMP's spin-wait) do not slow the next (default 0.05; 0: none).
    """
    for op in ops:
        if op not in ("model_forward", "model_fwd_bwd"):
            raise ValueError(f"unknown model op {op!r}; expected 'model_forward' or 'model_fwd_bwd'")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if int(rounds) < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    engines = check_engines(
        engines if engines is not None else (("eager", "compiled") if compile else ("eager",))
    )
    if compile_sparse or "compiled" in engines:
        # a fresh dynamo cache: several profiles in one process compile the same forward code for
        # other models and shapes, and past the recompile limit dynamo would silently run eager
        torch._dynamo.reset()
    twin, replaced = dense_twin(model)
    if not replaced:
        raise ValueError(
            "the model has no pruned layers (no submodule with to_linear()); nothing to compare "
            "against a dense twin"
        )
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    sparsity = linear_sparsity(twin, replaced)
    tokens = 0  # unknown
    if isinstance(inputs, Mapping) and isinstance(inputs.get("input_ids"), torch.Tensor):
        tokens = inputs["input_ids"].numel()
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    env = environment(device, threads)
    model.eval()
    twin.eval()
    rows: List[Dict[str, object]] = []

    def new_row(op: str, impl: str, backend: str, sparse: bool) -> Dict[str, object]:
        row: Dict[str, object] = {c: "" for c in CSV_COLUMNS}
        row.update(env)
        row.update(
            op=op, impl=impl, backend=backend, layout="model", dtype=dtype, shape=name, M=tokens, N=0, K=0,
            sparsity=round(sparsity, 6) if sparse else "", density=round(1 - sparsity, 6) if sparse else 1.0,
            note=f"{len(replaced)} pruned linears" if sparse else "",
        )  # fmt: skip
        return row

    with torch_threads(threads):
        for op in ops:
            # (row, fn) of every implementation that can run; skipped ones go straight to rows
            cases: List[Tuple[Dict[str, object], Callable[[], object]]] = []
            impls: List[Engine] = []
            twins: Dict[str, nn.Module] = {}
            for key, mod in (("", model), *(variants or {}).items()):
                suffix = f"/{key}" if key else ""
                impls.append(Engine(key, "spd_kernels" + suffix, "model", _bench(mod, inputs, op)))
                if compile_sparse:
                    compiled = _bench(torch.compile(mod, fullgraph=True), inputs, op)
                    impls.append(Engine(key, f"spd_kernels_compiled{suffix}", "model+inductor", compiled))
                if key:
                    twins[key] = dense_twin(mod.eval())[0].eval()
            if op == "model_forward":
                impls += dense_engines(twin, inputs, engines, threads=threads, workdir=workdir)
            else:  # training step: the torch engines of the twin
                for eng in engines:
                    if eng in ("eager", "compiled"):
                        mod = twin if eng == "eager" else torch.compile(twin)
                        backend = "aten" if eng == "eager" else "inductor"
                        impls.append(Engine(eng, IMPL_OF[eng], backend, _bench(mod, inputs, op)))
            refs: Dict[str, torch.Tensor] = {}
            for eng in impls:
                row = new_row(op, eng.impl, eng.backend, eng.impl.startswith("spd_kernels"))
                if eng.note:
                    row["note"] = "; ".join(x for x in (row["note"], eng.note) if x)
                if eng.fn is None:
                    row.update(status="skipped", note=eng.skipped[:300])
                    rows.append(row)
                    continue
                try:
                    out = eng.fn()  # the first call: compilation, lazy set-up; checked below
                except Exception as exc:  # noqa: BLE001  (reported in the row)
                    row.update(status="error", note=f"{type(exc).__name__}: {exc}"[:300])
                    rows.append(row)
                    continue
                if op == "model_forward":
                    out = first_float(out)
                    which = eng.name if eng.impl.startswith("spd_kernels") else ""
                    if which not in refs:
                        refs[which] = first_float(inference_fn(twins.get(which, twin), inputs)())
                    err = _max_error(out, refs[which])
                    row["note"] = "; ".join(x for x in (row["note"], f"max abs diff vs dense {err:.1e}") if x)
                    if not err <= tolerance:
                        row.update(status="error", note=f"output differs from the dense twin by {err:.3e}")
                        rows.append(row)
                        continue
                cases.append((row, eng.fn))
            if int(rounds) > 1:
                timings = time_interleaved(
                    {i: fn for i, (_, fn) in enumerate(cases)},
                    rounds=int(rounds),
                    calls=max(1, -(-int(min_samples) // int(rounds))),
                    warmup=max(int(warmup) - 1, 0),
                    threads=threads,
                    settle=settle,
                )
                results = [timings[i] for i in range(len(cases))]
            else:
                kw = dict(device=device, warmup=warmup, min_run_time=min_run_time, threads=threads)
                results = [timer(fn, min_samples=min_samples, **kw) for _, fn in cases]
            for (row, _), t in zip(cases, results):
                row.update(t.ms())
                row.update(samples=t.samples, status="ok")
                rows.append(row)
    return add_speedups(rows)
