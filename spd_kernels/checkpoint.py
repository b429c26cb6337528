"""Save and load pruned models, and the one set of atomic-write helpers of both packages.

The pruned-model directory (docs/formats.md) is what :func:`save_pretrained` writes, and what
:func:`save_pruned` writes for every Hugging Face model: a Hugging Face ``save_pretrained``
directory of the *dense-equivalent* model (``config.json`` + ``model.safetensors`` with the
masks applied, zeros baked in: ``from_pretrained`` gives the pruned model's outputs) plus
``spd_sparsity.json`` (manifest: architecture, sparsity config, one record per sparse layer,
size and sha256 of every file) and ``spd_masks.safetensors`` (masks, scores, packed
patterns), from which :func:`load_pruned` rebuilds the masked or packed layers.

The older packed directory (``spd_model.safetensors``: the state dict as it is, packed values
+ int32 index arrays, and ``spd_pruned.json``) is still read by :func:`load_pruned`, and still
written for a module that is not a Hugging Face model (nothing else could load it anyway).

Writes are atomic: a file goes to a temporary name and is moved into place with
``os.replace`` (:func:`atomic_write_bytes`, :func:`atomic_save_tensors`); a directory is
built in a temporary directory next to the target, which is renamed over it at the end; a
failed or killed save leaves the previous one as it was.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import hashlib
import json
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, Optional, Union

import torch
from torch import nn

from .formats import _check_block
from .nn.masked import MaskedLinear
from .nn.sparse import FusedActivation, SparseLinear
from .surgery import CONFIG_ATTR, SparsityConfig, densify, fuse_attention, size_report, sparsity_config

FORMAT = "spd_kernels.pruned"
HF_FORMAT = "spd_kernels.hf_sparsity"
FORMAT_VERSION = 1
MANIFEST = "spd_pruned.json"
TENSORS = "spd_model.safetensors"
HF_MANIFEST = "spd_sparsity.json"
HF_MASKS = "spd_masks.safetensors"

PathLike = Union[str, os.PathLike]

# HF config keys that fix tensor shapes: a model that differs in one cannot take the file.
_SHAPE_KEYS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
    "max_position_embeddings", "type_vocab_size", "dim", "n_layers", "n_heads", "hidden_dim",
)  # fmt: skip


@dataclass
class SaveReport:
    """What a save wrote: file sizes, and per sparse layer the dense / packed bytes."""

    path: str
    files: Dict[str, int] = field(default_factory=dict)
    layers: Dict[str, dict] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())

    def __str__(self) -> str:
        t = self.layers.get("total", {})
        lines = [f"{self.path}: {self.total_bytes:,} bytes"]
        lines += [f"  {name}: {size:,} bytes" for name, size in sorted(self.files.items())]
        if t:
            lines.append(
                f"  sparse layers: dense {t['dense']:,} B -> packed values {t['values']:,} B "
                f"+ index {t['index']:,} B (density {t['density']:.3f})"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------------- atomic files
def _stop_point(point: str) -> None:
    """Test hook (tests/faults): when ``SPD_TEST_STOP_AT`` names ``point``, the process stops
    itself (SIGSTOP) there, so a test can SIGKILL it exactly inside a write. Points:
    ``file:written`` (temporary file complete, not yet moved in), ``directory:written``
    (temporary directory complete, nothing renamed), ``directory:moved-aside`` (old directory
    renamed aside, new one not yet in place). Unset, it costs one environment lookup a write."""
    if os.environ.get("SPD_TEST_STOP_AT") == point:
        os.kill(os.getpid(), signal.SIGSTOP)


def _fsync_dir(path: PathLike) -> None:
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _tmp_name(path: PathLike) -> str:
    d, base = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{base}.tmp.{os.getpid()}")


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and ``os.replace``: a reader (or
    a run killed half-way) sees the old file or the new one, never a torn one."""
    tmp = _tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    _stop_point("file:written")
    os.replace(tmp, path)
    _fsync_dir(path)


def atomic_write_json(path: PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_tensors(path: PathLike, tensors, metadata: Optional[Dict[str, str]] = None) -> None:
    """safetensors file written atomically (tensors moved to CPU, made contiguous)."""
    from safetensors.torch import save_file

    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    tmp = _tmp_name(path)
    try:
        save_file(flat, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _stop_point("file:written")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(path)


# ---------------------------------------------------------------------- directories
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# a directory holding one of these was written by this package: a save may replace it
# (spd_model.json: the manifest of the older spd.models.save_model directories)
MARKERS = ("spd_sparsity.json", "spd_pruned.json", "spd_model.json")


def _recover(path: Path) -> None:
    """A save killed between its two renames (old directory aside, new one not yet in place)
    leaves the previous save as ``.<name>.old-*``: put it back. Leftover backups of finished
    saves go."""
    olds = sorted(path.parent.glob(f".{glob.escape(path.name)}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not path.exists():
        os.rename(olds.pop(), path)
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _atomic_directory(path: PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces ``path``, on error it goes.

    An existing ``path`` is replaced only when it is empty or holds one of :data:`MARKERS` (a
    directory this package wrote), so a save never deletes unrelated files.
    """
    path = Path(path)
    _recover(path)
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a directory")
        if any(path.iterdir()) and not any((path / m).exists() for m in MARKERS):
            raise FileExistsError(
                f"{path} exists, is not empty and holds no {' / '.join(MARKERS)}: refusing to replace it"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync(f)
        _stop_point("directory:written")
        if path.exists():
            backup = tmp.with_name(tmp.name.replace(".tmp-", ".old-"))
            os.rename(path, backup)
            _stop_point("directory:moved-aside")
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(backup, path)
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.rename(tmp, path)
        _fsync_dir(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_json(path: Path, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def _file_records(directory: Path) -> Dict[str, dict]:
    return {
        str(f.relative_to(directory)): {"bytes": f.stat().st_size, "sha256": _sha256(f)}
        for f in sorted(directory.rglob("*"))
        if f.is_file()
    }


def _read_manifest(directory: Path, name: str, fmt: str) -> dict:
    path = directory / name
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is corrupted (not valid JSON: {exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        raise ValueError(f"{path} is not a {fmt} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {manifest.get('format_version')!r}; this spd_kernels "
            f"reads version {FORMAT_VERSION}"
        )
    return manifest


def _verify_files(directory: Path, manifest: dict, names=None) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ValueError(f"{directory}: the manifest lists no files")
    for name, rec in files.items():
        if names is not None and name not in names:
            continue
        f = directory / name
        if not f.is_file():
            raise ValueError(f"{directory}: {name} is missing")
        if f.stat().st_size != rec.get("bytes") or _sha256(f) != rec.get("sha256"):
            raise ValueError(
                f"{f} is corrupted or was replaced: its size/sha256 differ from the manifest "
                f"({f.stat().st_size} bytes, expected {rec.get('bytes')})"
            )


# ---------------------------------------------------------------------- layer records
def _layer_records(model: nn.Module) -> Dict[str, dict]:
    recs: Dict[str, dict] = {}
    for name, m in model.named_modules():
        if isinstance(m, MaskedLinear):
            recs[name] = {
                "kind": "masked",
                "in_features": m.in_features,
                "out_features": m.out_features,
                "bias": m.bias is not None,
                "block": list(m.block),
                "scores": m.score_mode,
                "sparse_path": m.sparse_path,
                "density": float(m.density),
                "threshold": float(m.threshold),
            }
        elif isinstance(m, SparseLinear):
            recs[name] = {
                "kind": "sparse",
                "in_features": m.in_features,
                "out_features": m.out_features,
                "bias": m.bias is not None,
                "block": list(m.block),
                "nnz_blocks": int(m.values.shape[0]),
                "activation": m.activation,
            }
        elif isinstance(m, FusedActivation):
            recs[name] = {"kind": "fused_activation", "activation": m.activation}
    return recs


def _module_at(model: nn.Module, name: str, rec: dict, origin: str) -> nn.Module:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        module = None
    if rec["kind"] in ("masked", "sparse"):
        ok = (
            isinstance(module, nn.Linear)
            and not isinstance(module, MaskedLinear)
            and module.in_features == rec["in_features"]
            and module.out_features == rec["out_features"]
            and (module.bias is not None) == rec["bias"]
        )
        want = f"Linear({rec['in_features']} -> {rec['out_features']}, bias={rec['bias']})"
    else:
        ok = module is not None
        want = "an activation module"
    if not ok:
        got = "nothing" if module is None else repr(module).splitlines()[0]
        raise ValueError(
            f"{origin} records layer {name!r} as {want}, but {type(model).__name__} has {got} "
            "there: the file was saved from a different architecture or configuration"
        )
    return module


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    new.train(getattr(parent, attr).training)
    setattr(parent, attr, new)


def _record_block(rec: dict):
    return _check_block(tuple(int(b) for b in rec["block"]))


def _build_layers(model: nn.Module, records: Dict[str, dict], origin: str) -> None:
    """Replace the recorded layers of a freshly built model by empty sparse modules."""
    for name, rec in records.items():
        module = _module_at(model, name, rec, origin)
        if rec["kind"] == "fused_activation":
            _set(model, name, FusedActivation(module, rec["activation"]))
            continue
        kw = dict(device=module.weight.device, dtype=module.weight.dtype)
        if rec["kind"] == "masked":
            new = MaskedLinear(
                rec["in_features"], rec["out_features"], rec["bias"], block=_record_block(rec),
                scores=rec["scores"], sparse_path=rec["sparse_path"], **kw,
            )  # fmt: skip
            new.density, new.threshold = rec["density"], rec["threshold"]
        else:
            new = SparseLinear(
                rec["in_features"], rec["out_features"], rec["bias"], block=_record_block(rec),
                nnz_blocks=int(rec["nnz_blocks"]), activation=rec["activation"], **kw,
            )  # fmt: skip
        _set(model, name, new)


# ---------------------------------------------------------------------- HF helpers
def _hf_config(model: nn.Module) -> Optional[dict]:
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "to_json_string"):
        return None
    return json.loads(cfg.to_json_string(use_diff=False))


def _model_dtype(model: nn.Module) -> Optional[str]:
    for p in model.parameters():
        if p.is_floating_point():
            return str(p.dtype).replace("torch.", "")
    return None


def _build_hf_model(manifest: dict, origin: str) -> nn.Module:
    import transformers
    from transformers import CONFIG_MAPPING

    arch, hf = manifest.get("architecture"), manifest.get("hf_config")
    if not isinstance(hf, dict):
        raise ValueError(f"{origin} holds no Hugging Face config; pass the model to load into (model=...)")
    model_type = hf.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"{origin}: unknown model_type {model_type!r} in the saved config")
    cls = getattr(transformers, str(arch), None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ValueError(f"{origin}: architecture {arch!r} is not a transformers model class")
    config = CONFIG_MAPPING[model_type].from_dict(hf)
    model = cls(config)
    dtype = manifest.get("dtype")
    if dtype:
        model.to(getattr(torch, dtype))
    return model.eval()


def _check_same_architecture(model: nn.Module, manifest: dict, origin: str) -> None:
    arch = manifest.get("architecture")
    if type(model).__name__ != arch:
        raise ValueError(
            f"{origin} was saved from a {arch}, not a {type(model).__name__}: different architecture"
        )
    saved, mine = manifest.get("hf_config") or {}, _hf_config(model) or {}
    diff = {k: (saved[k], mine.get(k)) for k in _SHAPE_KEYS if k in saved and saved[k] != mine.get(k)}
    if diff:
        raise ValueError(
            f"{origin} was saved from a {arch} with another configuration: {diff} (saved, model)"
        )


# ---------------------------------------------------------------------- save / load
def save_pruned(model: nn.Module, directory: PathLike, *, tokenizer=None) -> SaveReport:
    """Save a masked or exported (packed) model to ``directory`` atomically.

    A Hugging Face model is written as the pruned-model directory of :func:`save_pretrained`
    (the one format: ``from_pretrained`` loads the pruned weights, :func:`load_pruned` the
    masked / packed layers); any other module as the packed directory
    (``spd_model.safetensors`` + ``spd_pruned.json``). An existing ``directory`` is replaced
    only if it is empty or a previous save. Returns a :class:`SaveReport` with the file sizes.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if hasattr(model, "save_pretrained"):
        return save_pretrained(model, directory, tokenizer=tokenizer)
    if tokenizer is not None:
        raise ValueError("a tokenizer is saved with Hugging Face models only")
    return _save_packed(model, directory)


def _save_packed(model: nn.Module, directory: PathLike) -> SaveReport:
    """The packed directory: the state dict as it is (packed values + index arrays)."""
    from safetensors.torch import save_model

    config = sparsity_config(model)
    with _atomic_directory(directory) as tmp:
        save_model(model, str(tmp / TENSORS), metadata={"format": FORMAT})
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "architecture": type(model).__name__,
            "hf_config": _hf_config(model),
            "dtype": _model_dtype(model),
            "sparsity": config.to_dict() if config is not None else None,
            "layers": _layer_records(model),
            "files": _file_records(tmp),
        }
        _write_json(tmp / MANIFEST, manifest)
        files = {name: rec["bytes"] for name, rec in _file_records(tmp).items()}
    return SaveReport(str(directory), files, size_report(model))


def save_pretrained(model: nn.Module, directory: PathLike, *, tokenizer=None, **kwargs) -> SaveReport:
    """Hugging Face ``save_pretrained`` of the dense-equivalent model, plus the sparsity files.

    ``transformers.AutoModel*.from_pretrained(directory)`` loads the dense-equivalent model
    (pruned weights are zeros, outputs equal the pruned model's); :func:`load_pruned` loads it
    back as the masked / packed model. ``tokenizer`` (optional) is saved in the same atomic
    write; other keyword arguments go to ``save_pretrained``. Pruned weights of a
    ``MaskedLinear`` are not kept (they are zeros in the dense weights).
    """
    from safetensors.torch import save_file

    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"{type(model).__name__} is not a Hugging Face model (no save_pretrained)")
    dense = densify(copy.deepcopy(model))
    tensors = {}
    for name, m in model.named_modules():
        if isinstance(m, MaskedLinear):
            tensors[f"{name}.mask"] = m.mask.detach().cpu().contiguous()
            if m.scores is not None:
                tensors[f"{name}.scores"] = m.scores.detach().cpu().contiguous()
        elif isinstance(m, SparseLinear):
            tensors[f"{name}.block_mask"] = m.weight.block_mask().cpu().contiguous()
    config = sparsity_config(model)
    with _atomic_directory(directory) as tmp:
        dense.save_pretrained(tmp, **kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_file(tensors, str(tmp / HF_MASKS), metadata={"format": HF_FORMAT})
        manifest = {
            "format": HF_FORMAT,
            "format_version": FORMAT_VERSION,
            "architecture": type(model).__name__,
            "sparsity": config.to_dict() if config is not None else None,
            "layers": _layer_records(model),
            "files": _file_records(tmp),
        }
        _write_json(tmp / HF_MANIFEST, manifest)
        files = {name: rec["bytes"] for name, rec in _file_records(tmp).items()}
    return SaveReport(str(directory), files, size_report(model))


def load_pruned(directory: PathLike, model: Optional[nn.Module] = None, *, verify: bool = True) -> nn.Module:
    """Load what :func:`save_pruned` or :func:`save_pretrained` wrote.

    Without ``model`` the architecture is rebuilt from the saved Hugging Face config (needs
    ``transformers``); with ``model`` (a dense model of the same architecture and config, e.g.
    a non-HF module) the layers are replaced and loaded in place. ``verify`` checks the files'
    sizes and sha256 against the manifest first. Returns the model in eval mode for fresh
    builds. Raises ``ValueError`` for a corrupted file or another architecture.
    """
    directory = Path(directory)
    _recover(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    if (directory / MANIFEST).is_file():
        return _load_native(directory, model, verify)
    if (directory / HF_MANIFEST).is_file():
        if model is not None:
            raise ValueError(f"{directory} is a save_pretrained directory: load it without model=")
        return _load_hf(directory, verify)
    raise ValueError(f"{directory} holds neither {MANIFEST} nor {HF_MANIFEST}: not a pruned-model directory")


def _load_native(directory: Path, model: Optional[nn.Module], verify: bool) -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    manifest = _read_manifest(directory, MANIFEST, FORMAT)
    origin = str(directory / MANIFEST)
    if verify:
        _verify_files(directory, manifest, names=(TENSORS,))
    if model is None:
        model = _build_hf_model(manifest, origin)
    else:
        _check_same_architecture(model, manifest, origin)
        if any(isinstance(m, (MaskedLinear, SparseLinear, FusedActivation)) for m in model.modules()):
            raise ValueError("load into a dense model: this one already has sparse layers")
    records = manifest.get("layers") or {}
    if not isinstance(records, dict):
        raise ValueError(f"{origin}: 'layers' must be an object")
    _build_layers(model, records, origin)
    try:
        load_model(model, str(directory / TENSORS), strict=True)
    except SafetensorError as exc:
        raise ValueError(f"{directory / TENSORS} is not a valid safetensors file: {exc}") from None
    except RuntimeError as exc:
        raise ValueError(
            f"{directory / TENSORS} does not fit {type(model).__name__} (different architecture?): {exc}"
        ) from None
    if manifest.get("sparsity") is not None:
        setattr(model, CONFIG_ATTR, SparsityConfig.from_dict(manifest["sparsity"]))
    _fuse_if_exported(model)
    return model


def _fuse_if_exported(model: nn.Module) -> None:
    """An exported (packed) model on SDPA gets its fused QKV attention back, as export gave it."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) == "sdpa" and any(
        isinstance(m, SparseLinear) for m in model.modules()
    ):
        fuse_attention(model)


def _load_hf(directory: Path, verify: bool) -> nn.Module:
    import transformers
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    manifest = _read_manifest(directory, HF_MANIFEST, HF_FORMAT)
    origin = str(directory / HF_MANIFEST)
    if verify:
        _verify_files(directory, manifest)
    arch = manifest.get("architecture")
    cls = getattr(transformers, str(arch), None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ValueError(f"{origin}: architecture {arch!r} is not a transformers model class")
    model = cls.from_pretrained(str(directory), use_safetensors=True).eval()  # never a pickle
    try:
        tensors = load_file(str(directory / HF_MASKS))
    except SafetensorError as exc:
        raise ValueError(f"{directory / HF_MASKS} is not a valid safetensors file: {exc}") from None
    for name, rec in (manifest.get("layers") or {}).items():
        module = _module_at(model, name, rec, origin)
        if rec["kind"] == "fused_activation":
            _set(model, name, FusedActivation(module, rec["activation"]))
            continue
        block = _record_block(rec)
        if rec["kind"] == "masked":
            new = MaskedLinear.from_linear(
                module, block=block, scores=rec["scores"], sparse_path=rec["sparse_path"]
            )
            new.set_mask(_tensor(tensors, f"{name}.mask", origin), allow_regrow=True)
            if rec["scores"] is not None:
                with torch.no_grad():
                    new.scores.copy_(_tensor(tensors, f"{name}.scores", origin))
            new.density, new.threshold = rec["density"], rec["threshold"]
        else:
            bmask = _tensor(tensors, f"{name}.block_mask", origin)
            new = SparseLinear.from_linear(module, mask=bmask, block=block, activation=rec["activation"])
            if new.values.shape[0] != rec["nnz_blocks"]:
                raise ValueError(f"{origin}: layer {name!r} has {new.values.shape[0]} blocks, expected {rec}")
        _set(model, name, new)
    _fuse_if_exported(model)
    if manifest.get("sparsity") is not None:
        setattr(model, CONFIG_ATTR, SparsityConfig.from_dict(manifest["sparsity"]))
    return model


def _tensor(tensors: dict, key: str, origin: str) -> torch.Tensor:
    if key not in tensors:
        raise ValueError(f"{origin}: {HF_MASKS} has no tensor {key!r}")
    return tensors[key]


__all__ = [
    "SaveReport",
    "atomic_save_tensors",
    "atomic_write_bytes",
    "atomic_write_json",
    "load_pruned",
    "save_pretrained",
    "save_pruned",
]
