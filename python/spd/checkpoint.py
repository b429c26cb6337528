"""Atomic, complete, unpickle-free checkpoints.

A training checkpoint is ONE safetensors file: every tensor (model weights, masks, scores,
optimizer moments, torch / CUDA / NumPy RNG states, the grafting generator) under a
namespaced key, and everything else (step, epoch, position in the epoch, p, pruner state,
Python RNG state, optimizer hyper-parameters, metrics so far, the run's fingerprint) as JSON in
the safetensors header metadata. It is written to a temporary file in the same directory,
fsync'ed and moved into place with ``os.replace``
(``spd_kernels.checkpoint.atomic_save_tensors``), so a run killed at any moment leaves either
the previous checkpoint or the new one, never a torn file.

Loading checks a SHA-256 of all tensor bytes and the format version, and the caller checks the
fingerprint (task, model, method, batch size, ...), so a corrupt file or one from another run
is refused with a ``ValueError`` saying why. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from typing import Any, Dict, Mapping, Tuple

import numpy as np
import torch

# the one implementation of atomic writes, shared with the pruned-model directories
from spd_kernels.checkpoint import atomic_save_tensors, atomic_write_bytes, atomic_write_json

FORMAT = "spd-checkpoint"
FORMAT_VERSION = 1


def _flat_bytes(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``tensors`` (sorted by name)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k]
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(_flat_bytes(t)))
    return h.hexdigest()


# ---------------------------------------------------------------------- RNG states
def capture_rng() -> Tuple[dict, Dict[str, torch.Tensor]]:
    """(JSON part, tensor part) of the Python, NumPy, torch and CUDA generators."""
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "name": np_state[0],
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    tensors = {
        "rng/torch": torch.get_rng_state(),
        "rng/numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
    }
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    return meta, tensors


def restore_rng(meta: dict, tensors: Mapping[str, torch.Tensor]) -> None:
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state(
        (
            n["name"],
            tensors["rng/numpy_keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(tensors["rng/torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng/cuda/"))
    if cuda and torch.cuda.is_available():
        states = [tensors[k] for k in cuda]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


# ---------------------------------------------------------------------- optimizer state
def optimizer_to_flat(opt: torch.optim.Optimizer) -> Tuple[dict, Dict[str, torch.Tensor]]:
    sd = opt.state_dict()
    tensors: Dict[str, torch.Tensor] = {}
    scalars: Dict[str, Dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = val
            else:
                scalars.setdefault(str(idx), {})[key] = val
    groups = []
    for g in sd["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
    return {"param_groups": groups, "scalars": scalars}, tensors


def optimizer_from_flat(opt: torch.optim.Optimizer, meta: dict, tensors: Mapping[str, torch.Tensor]) -> None:
    state: Dict[int, Dict[str, Any]] = {}
    for k, v in tensors.items():
        if not k.startswith("optim/"):
            continue
        _, idx, key = k.split("/", 2)
        state.setdefault(int(idx), {})[key] = v
    for idx, d in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(d)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    own = opt.state_dict()["param_groups"]
    if [len(g["params"]) for g in own] != [len(g["params"]) for g in groups]:
        raise ValueError(
            "checkpoint optimizer has parameter groups of sizes "
            f"{[len(g['params']) for g in groups]}, this run has {[len(g['params']) for g in own]}"
        )
    opt.load_state_dict({"state": state, "param_groups": groups})


# ---------------------------------------------------------------------- whole checkpoints
def save_checkpoint(path: str, state: dict, tensors: Mapping[str, torch.Tensor], fmt: str = FORMAT) -> None:
    """Write one checkpoint file: ``tensors`` (namespaced names) + JSON ``state``; ``fmt``
    names the kind of file (other checksummed files, e.g. the teacher cache, reuse this)."""
    digest = tensors_digest(tensors)
    meta = {
        "format": fmt,
        "version": str(FORMAT_VERSION),
        "sha256": digest,
        "state": json.dumps(state, sort_keys=True),
    }
    atomic_save_tensors(path, tensors, metadata=meta)


def load_checkpoint(path: str, fmt: str = FORMAT) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """(state, tensors) of a file written by :func:`save_checkpoint`; ``ValueError`` when the
    file is not one, is truncated or its tensors do not match the recorded digest."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own exception types on damaged headers
        raise ValueError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: {e})") from e
    if meta.get("format") != fmt:
        raise ValueError(f"{path}: not an {fmt} file (format {meta.get('format')!r})")
    if meta.get("version") != str(FORMAT_VERSION):
        raise ValueError(
            f"{path}: checkpoint format version {meta.get('version')}, expected {FORMAT_VERSION}"
        )
    if tensors_digest(tensors) != meta.get("sha256"):
        raise ValueError(f"{path}: corrupt checkpoint (tensor checksum mismatch)")
    try:
        state = json.loads(meta["state"])
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt checkpoint state ({e})") from e
    return state, tensors


def check_fingerprint(saved: Mapping[str, Any], current: Mapping[str, Any], path: str) -> None:
    """Refuse to resume a run whose defining settings differ from the checkpoint's."""
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}"
        for k in sorted(set(saved) | set(current))
        if saved.get(k) != current.get(k)
    ]
    if diffs:
        raise ValueError(f"{path} was written by a different run; mismatched settings: " + "; ".join(diffs))


def split_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """The entries under ``prefix/`` with the prefix removed."""
    p = prefix + "/"
    return {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}


__all__ = [
    "atomic_save_tensors",
    "atomic_write_bytes",
    "atomic_write_json",
    "capture_rng",
    "check_fingerprint",
    "load_checkpoint",
    "optimizer_from_flat",
    "optimizer_to_flat",
    "restore_rng",
    "save_checkpoint",
    "split_prefix",
    "tensors_digest",
]
