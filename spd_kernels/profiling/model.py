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

from .report import CSV_COLUMNS, add_speedups
from .timing import Timing, environment, time_callable, torch_threads

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


def dense_twin(model: nn.Module) -> Tuple[nn.Module, List[str]]:
    """A deep copy of ``model`` with every module that has ``to_linear()`` replaced by that
    ``nn.Linear``; returns (twin, names of the replaced modules)."""
    twin = copy.deepcopy(model)
    replaced: List[str] = []
    for name, mod in list(twin.named_modules()):
        if name and callable(getattr(mod, "to_linear", None)):
            parent_name, _, child = name.rpartition(".")
            parent = twin.get_submodule(parent_name) if parent_name else twin
            if any(name.startswith(r + ".") for r in replaced):
                continue
            setattr(parent, child, mod.to_linear())
            replaced.append(name)
    return twin, replaced


def linear_sparsity(twin: nn.Module, names: Sequence[str]) -> float:
    """Fraction of zero weights over the replaced linears of a dense twin (0 when none)."""
    zeros = total = 0
    for name in names:
        w = twin.get_submodule(name).weight
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


def _call(model: nn.Module, inputs: Inputs):
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    return model(*inputs)


def _first_tensor(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        out = list(out.values())
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    for o in out:
        if isinstance(o, torch.Tensor) and o.is_floating_point():
            return o
    raise TypeError("the model output holds no floating tensor to time a backward pass from")


def _bench(model: nn.Module, inputs: Inputs, op: str) -> Callable[[], object]:
    if op == "model_forward":

        def fwd():
            with torch.no_grad():
                return _call(model, inputs)

        return fwd
    params = [p for p in model.parameters() if p.requires_grad]

    def fwd_bwd():
        loss = _first_tensor(_call(model, inputs)).float().pow(2).mean()
        return torch.autograd.grad(loss, params, allow_unused=True)

    return fwd_bwd


def profile_model(
    model: nn.Module,
    inputs: Inputs,
    *,
    ops: Sequence[str] = ("model_forward",),
    compile: bool = True,
    device: Union[str, torch.device, None] = None,
    threads: Optional[int] = None,
    warmup: int = 2,
    min_run_time: float = 0.2,
    min_samples: int = 5,
    timer: Callable[..., Timing] = time_callable,
    name: str = "model",
) -> List[Dict[str, object]]:
    """Time ``model`` and its dense twin (eager, and compiled unless ``compile=False``).

    ``ops``: ``model_forward`` (inference, no grad) and/or ``model_fwd_bwd`` (forward, a
    mean-square loss on the first output, gradients of every trainable parameter). Returns
    rows in the profiler's CSV schema; M is the number of tokens when the inputs hold
    ``input_ids``, sparsity is the zero fraction over the linears the twin replaced.
    """
    for op in ops:
        if op not in ("model_forward", "model_fwd_bwd"):
            raise ValueError(f"unknown model op {op!r}; expected 'model_forward' or 'model_fwd_bwd'")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
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
    impls: List[Tuple[str, nn.Module, str]] = [("spd_kernels", model, "model"), ("dense_eager", twin, "aten")]
    if compile:
        impls.append(("dense_compiled", torch.compile(twin), "inductor"))
    rows: List[Dict[str, object]] = []
    with torch_threads(threads):
        for op in ops:
            for impl, mod, backend in impls:
                row: Dict[str, object] = {c: "" for c in CSV_COLUMNS}
                row.update(env)
                row.update(
                    op=op,
                    impl=impl,
                    backend=backend,
                    layout="model",
                    sparsity=round(sparsity, 6) if impl == "spd_kernels" else "",
                    density=round(1 - sparsity, 6) if impl == "spd_kernels" else 1.0,
                    dtype=dtype,
                    shape=name,
                    M=tokens,
                    N=0,
                    K=0,
                    note=f"{len(replaced)} pruned linears" if impl == "spd_kernels" else "",
                )
                fn = _bench(mod, inputs, op)
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001  (reported in the row)
                    row.update(status="error", note=f"{type(exc).__name__}: {exc}"[:300])
                    rows.append(row)
                    continue
                t = timer(
                    fn,
                    device=device,
                    warmup=warmup,
                    min_run_time=min_run_time,
                    min_samples=min_samples,
                    threads=threads,
                )
                row.update(t.ms())
                row.update(samples=t.samples, status="ok")
                rows.append(row)
    return add_speedups(rows)
