"""Model surgery for Hugging Face encoders: sparsify, densify, export.

* :func:`sparsify` replaces the chosen ``nn.Linear`` modules by :class:`MaskedLinear`
  (a per-architecture table of module names, or the user's names / regex).
* :func:`export` turns every ``MaskedLinear`` into a packed :class:`SparseLinear` and fuses
  the FFN's first linear with its activation (the GELU then runs in the kernel epilogue).
* :func:`densify` undoes both: plain ``nn.Linear`` with the masked weights baked in.

All three work in place and return the model. Nothing here imports ``transformers``: models
are recognised by ``model.config.model_type``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import attention as _attention
from .formats import SparseMatrix, _check_block
from .nn.masked import SCORE_MODES, MaskedLinear, check_sparse_path
from .nn.sparse import FusedActivation, SparseLinear

CONFIG_ATTR = "_spd_sparsity_config"
_LAYER = r"(?:.+\.)?encoder\.layer\.\d+\."
_DISTIL_LAYER = r"(?:.+\.)?transformer\.layer\.\d+\."


@dataclass(frozen=True)
class Fusion:
    """Inside a module whose name matches ``parent``, ``parent.<linear>`` is followed by
    ``parent.<activation>`` and by nothing else, so the activation can move into its epilogue."""

    parent: str
    linear: str
    activation: str


@dataclass(frozen=True)
class ArchSpec:
    """Which linears of an architecture to prune (full-match regexes on module names)."""

    encoder: Tuple[str, ...]
    head: Tuple[str, ...]
    fusions: Tuple[Fusion, ...]


_BERT_LIKE = ArchSpec(
    encoder=(
        _LAYER + r"attention\.self\.(?:query|key|value)",
        _LAYER + r"attention\.output\.dense",
        _LAYER + r"intermediate\.dense",
        _LAYER + r"output\.dense",
    ),
    head=(
        r"(?:.+\.)?pooler\.dense",
        r"classifier",
        r"classifier\.dense",
        r"classifier\.out_proj",
        r"qa_outputs",
    ),
    fusions=(Fusion(_LAYER + "intermediate", "dense", "intermediate_act_fn"),),
)

#: model_type -> module names to prune. MiniLM checkpoints are ``bert``.
ARCHITECTURES: Dict[str, ArchSpec] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    # same module layout as BERT
    "xlm-roberta": _BERT_LIKE,
    "camembert": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "ernie": _BERT_LIKE,
    "megatron-bert": _BERT_LIKE,
    "distilbert": ArchSpec(
        encoder=(
            _DISTIL_LAYER + r"attention\.(?:q_lin|k_lin|v_lin|out_lin)",
            _DISTIL_LAYER + r"ffn\.(?:lin1|lin2)",
        ),
        head=(r"pre_classifier", r"classifier", r"qa_outputs"),
        fusions=(Fusion(_DISTIL_LAYER + "ffn", "lin1", "activation"),),
    ),
}


@dataclass
class SparsityConfig:
    """How :func:`sparsify` turns a model's linears into :class:`MaskedLinear` (saved as JSON)."""

    block: Tuple[int, int] = field(
        default=(1, 1), metadata={"help": "mask granularity (bm, bk); (1, 1) = unstructured"}
    )
    scores: Optional[str] = field(
        default=None,
        metadata={"help": "movement scores: None, 'topk', 'threshold' or 'sigmoid_threshold'"},
    )
    score_init: float = field(default=0.0, metadata={"help": "initial value of the scores"})
    density: float = field(
        default=1.0, metadata={"help": "magnitude-prune each layer to this density at once (1 = keep all)"}
    )
    modules: Optional[List[str]] = field(
        default=None, metadata={"help": "exact module names to prune (replaces the architecture table)"}
    )
    pattern: Optional[str] = field(
        default=None,
        metadata={"help": "regex, full match on module names, of the linears to prune (replaces the table)"},
    )
    include_head: bool = field(
        default=False, metadata={"help": "also prune the pooler / classifier (architecture table only)"}
    )
    sparse_path: str = field(
        default="auto", metadata={"help": "MaskedLinear.sparse_path: 'auto', 'never' or 'always'"}
    )

    def __post_init__(self) -> None:
        self.block = _check_block(tuple(self.block) if isinstance(self.block, list) else self.block)
        if self.scores not in SCORE_MODES:
            raise ValueError(f"scores must be one of {SCORE_MODES}, got {self.scores!r}")
        if not 0.0 <= float(self.density) <= 1.0:
            raise ValueError(f"density must lie in [0, 1], got {self.density!r}")
        check_sparse_path(self.sparse_path)
        if self.modules is not None:
            if isinstance(self.modules, str) or not all(isinstance(m, str) for m in self.modules):
                raise TypeError(f"modules must be a list of module names, got {self.modules!r}")
            self.modules = list(self.modules)
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a valid regex: {exc}") from None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["block"] = list(self.block)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "SparsityConfig":
        if not isinstance(d, Mapping):
            raise TypeError(f"a sparsity config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown sparsity config keys {unknown}; known: {sorted(known)}")
        return cls(**dict(d))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SparsityConfig":
        return cls.from_dict(json.loads(text))


# ---------------------------------------------------------------------- helpers
def model_type_of(model: nn.Module) -> Optional[str]:
    """``model.config.model_type`` of a Hugging Face model, else None."""
    return getattr(getattr(model, "config", None), "model_type", None)


def sparsity_config(model: nn.Module) -> Optional[SparsityConfig]:
    """The config :func:`sparsify` applied to ``model`` (None if it was not sparsified)."""
    return getattr(model, CONFIG_ATTR, None)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    new.train(old.training)
    setattr(parent, attr, new)


def _linear_names(model: nn.Module) -> List[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def target_patterns(model: nn.Module, config: SparsityConfig) -> List[str]:
    """The regexes (full match) :func:`sparsify` looks for in ``model`` under ``config``."""
    if config.pattern is not None:
        return [config.pattern]
    if config.modules is not None:
        return [re.escape(m) for m in config.modules]
    mt = model_type_of(model)
    spec = ARCHITECTURES.get(mt) if mt is not None else None
    if spec is None:
        raise ValueError(
            f"no module-name table for {type(model).__name__} (model_type={mt!r}); known model "
            f"types: {sorted(ARCHITECTURES)}. Pass SparsityConfig(modules=[...]) or pattern=..."
        )
    return list(spec.encoder + (spec.head if config.include_head else ()))


def find_targets(model: nn.Module, config: SparsityConfig) -> List[str]:
    """Names of the ``nn.Linear`` modules that :func:`sparsify` would replace."""
    patterns = target_patterns(model, config)
    linears = _linear_names(model)
    if config.modules is not None:
        all_names = dict(model.named_modules())
        for name in config.modules:
            if name not in all_names:
                raise ValueError(
                    f"module {name!r} is not in {type(model).__name__}; linear layers: {_few(linears)}"
                )
            if not isinstance(all_names[name], nn.Linear):
                raise ValueError(f"module {name!r} is a {type(all_names[name]).__name__}, not an nn.Linear")
    compiled = [re.compile(p) for p in patterns]
    found = [n for n in linears if any(c.fullmatch(n) for c in compiled)]
    if not found:
        raise ValueError(
            f"no nn.Linear of {type(model).__name__} matches the patterns {patterns}; "
            f"linear layers seen: {_few(linears)}"
        )
    return found


def _few(names: Sequence[str], n: int = 8) -> str:
    shown = ", ".join(repr(x) for x in names[:n])
    return f"[{shown}{', ...' if len(names) > n else ''}] ({len(names)} in all)"


# ---------------------------------------------------------------------- sparsify
def sparsify(
    model: nn.Module,
    config: Optional[SparsityConfig] = None,
    *,
    masks: Optional[Mapping[str, Tensor]] = None,
    **overrides,
) -> nn.Module:
    """Replace the chosen ``nn.Linear`` modules of ``model`` by :class:`MaskedLinear` (in place).

    ``config`` (or keyword overrides of its fields, e.g. ``block=32``) says which layers and how;
    ``masks`` maps module names to initial bool masks ((N, K) or block grid). Every layer is
    checked before any is replaced: a block that does not divide a layer, a mask of the wrong
    shape, or a model with no matching layer raises ``ValueError`` and leaves the model as it was.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if config is None:
        config = SparsityConfig(**overrides)
    elif overrides:
        config = SparsityConfig(**{**config.to_dict(), **overrides})
    elif not isinstance(config, SparsityConfig):
        raise TypeError(f"config must be a SparsityConfig, got {type(config).__name__}")
    already = [n for n, m in model.named_modules() if isinstance(m, (MaskedLinear, SparseLinear))]
    if already:
        raise ValueError(f"model is already sparsified (e.g. {already[0]!r}); densify it first")
    targets = find_targets(model, config)
    modules = dict(model.named_modules())
    bm, bk = config.block
    for name in targets:
        n, k = modules[name].weight.shape
        if n % bm or k % bk:
            raise ValueError(
                f"cannot sparsify layer {name!r}: its weight shape {(n, k)} is not divisible by "
                f"block {config.block} ({n} % {bm} = {n % bm}, {k} % {bk} = {k % bk})"
            )
    masks = dict(masks or {})
    unknown = sorted(set(masks) - set(targets))
    if unknown:
        raise ValueError(f"masks given for layers that are not sparsified: {unknown}")
    new: Dict[str, MaskedLinear] = {}
    for name in targets:
        m = MaskedLinear.from_linear(
            modules[name],
            block=config.block,
            scores=config.scores,
            score_init=config.score_init,
            sparse_path=config.sparse_path,
        )
        if name in masks:
            try:
                m.set_mask(masks[name], allow_regrow=True)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"mask for layer {name!r}: {exc}") from None
        if config.density < 1.0:
            m.prune_magnitude(config.density)
        new[name] = m
    for name, m in new.items():
        _replace(model, name, m)
    setattr(model, CONFIG_ATTR, config)
    return model


def set_masks(model: nn.Module, masks: Mapping[str, Tensor], allow_regrow: bool = False) -> None:
    """``set_mask`` on each named :class:`MaskedLinear`; errors name the layer."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        layer = modules.get(name)
        if not isinstance(layer, MaskedLinear):
            kind = "missing" if layer is None else type(layer).__name__
            raise ValueError(f"layer {name!r} is not a MaskedLinear ({kind})")
        try:
            layer.set_mask(mask, allow_regrow=allow_regrow)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"mask for layer {name!r}: {exc}") from None


# ---------------------------------------------------------------------- densify / export
def densify(model: nn.Module) -> nn.Module:
    """Undo :func:`sparsify` / :func:`export` in place: every :class:`MaskedLinear` and
    :class:`SparseLinear` becomes an ``nn.Linear`` holding the masked weight, fused activations
    go back to their modules."""
    for name, m in list(model.named_modules()):
        if isinstance(m, (MaskedLinear, SparseLinear)):
            _replace(model, name, m.to_linear())
        elif isinstance(m, FusedActivation):
            _replace(model, name, m.original)
    unfuse_attention(model)
    if hasattr(model, CONFIG_ATTR):
        delattr(model, CONFIG_ATTR)
    return model


def activation_name(module: nn.Module) -> Optional[str]:
    """The epilogue name (:data:`spd_kernels.ACTIVATIONS`) computing what ``module`` computes,
    or None when the kernels have no such epilogue."""
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.GELU):
        return "gelu" if module.approximate == "none" else "gelu_tanh"
    cls = type(module)
    if not cls.__module__.startswith("transformers."):
        return None
    if cls.__name__ == "GELUActivation":
        act = getattr(module, "act", None)  # F.gelu, or the erf formula in Python
        if act is F.gelu or getattr(act, "__name__", "") == "_gelu_python":
            return "gelu"
        return None
    if cls.__name__ in ("GELUTanh", "PytorchGELUTanh", "NewGELUActivation", "FastGELUActivation"):
        return "gelu_tanh"
    return None


def export(
    model: nn.Module, *, fuse_activations: bool = True, attention: str = "sdpa", fuse_qkv: bool = True
) -> nn.Module:
    """Pack every :class:`MaskedLinear` of ``model`` into a :class:`SparseLinear` (in place).

    With ``fuse_activations`` the FFN's first linear and its activation (BERT/RoBERTa
    ``intermediate.dense`` + ``intermediate_act_fn``, DistilBERT ``ffn.lin1`` + ``activation``)
    become one ``SparseLinear(activation=...)``; the activation module is replaced by a
    :class:`FusedActivation` (the identity). Activations without a kernel epilogue stay.

    ``attention="sdpa"`` switches a Hugging Face model that runs another attention
    (eager, or the map-returning variant used while distilling attention) to
    ``scaled_dot_product_attention``, the fast one for inference; ``"keep"`` leaves it.

    With ``fuse_qkv`` (and ``attention="sdpa"``) each BERT-family self-attention computes q, k
    and v with one linear (the three patterns concatenated, N = 3·hidden) and runs the fused CPU
    attention kernel (:mod:`spd_kernels.attention`) on its output in place; it falls back to the
    module's own SDPA path whenever the kernel does not apply: attention maps or head masks asked
    for, autograd recording, training with dropout, a cache / cross-attention / causal mask, a
    mask that is not plain key padding, a non-CPU or non-float32 input, a head size that is not
    a multiple of 8, ``torch.compile`` tracing, another attention implementation set after
    export. The module tree and state dict stay as they were
    (the saved folder format does not change; :func:`densify` undoes it): see :func:`fuse_attention`.
    Raises ``ValueError`` for a model with no sparse layer (nothing would be packed).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if attention not in ("sdpa", "keep"):
        raise ValueError(f"attention must be 'sdpa' or 'keep', got {attention!r}")
    if not any(isinstance(m, (MaskedLinear, SparseLinear)) for m in model.modules()):
        raise ValueError(
            f"{type(model).__name__} has no MaskedLinear layer to pack: sparsify (or prune) it first"
        )
    if attention == "sdpa":
        use_sdpa_attention(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, MaskedLinear):
            packed = SparseLinear.from_masked(m)
            packed.values.requires_grad_(m.weight.requires_grad)
            _replace(model, name, packed)
    if fuse_activations:
        spec = ARCHITECTURES.get(model_type_of(model) or "")
        for rule in spec.fusions if spec else ():
            parent_re = re.compile(rule.parent)
            for pname, parent in list(model.named_modules()):
                if not parent_re.fullmatch(pname):
                    continue
                lin = getattr(parent, rule.linear, None)
                act = getattr(parent, rule.activation, None)
                if not isinstance(lin, SparseLinear) or lin.activation != "none" or act is None:
                    continue
                act_name = activation_name(act)
                if act_name is None:
                    continue
                lin.activation = act_name
                setattr(parent, rule.activation, FusedActivation(act, act_name))
    if fuse_qkv and attention == "sdpa":
        fuse_attention(model)
    return model


def use_sdpa_attention(model: nn.Module) -> bool:
    """Switch a Hugging Face model to SDPA attention when it supports it; returns whether the
    model now runs SDPA (False for models without a config or without SDPA support)."""
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current is None:
        return False
    if current != "sdpa" and callable(getattr(model, "set_attn_implementation", None)):
        try:
            model.set_attn_implementation("sdpa")
        except (ValueError, ImportError):  # this architecture has no SDPA path: keep its own
            return False
    return getattr(model.config, "_attn_implementation", None) == "sdpa"


# ---------------------------------------------------------------------- fused attention
# Hugging Face self-attention classes whose forward is BERT's (hidden_states, attention_mask,
# past_key_values, **kwargs) with query / key / value linears and no positional term in the scores.
_FUSABLE_ATTENTION = (
    "BertSelfAttention", "RobertaSelfAttention", "XLMRobertaSelfAttention", "CamembertSelfAttention",
    "ElectraSelfAttention", "ErnieSelfAttention", "MegatronBertSelfAttention",
)  # fmt: skip
_FUSED_CLASSES: Dict[type, type] = {}


class FusedQKVAttention:
    """Mixed into a Hugging Face BERT-family self-attention by :func:`fuse_attention`: q, k and v
    come from one linear (N = 3·hidden: a :class:`SparseLinear` on the three concatenated
    patterns, or one dense ``F.linear``), and the fused CPU kernel reads them in place and writes
    ``(B, S, hidden)``. The ``query`` / ``key`` / ``value`` modules stay (state dict, save, load
    and :func:`densify` see the model as before); the fused copy is rebuilt when one of them
    changes. Whenever the kernel does not apply, the original forward (SDPA) runs."""

    _spd_base: type

    def _spd_fast_path_ok(self, hidden_states, past_key_values, kwargs) -> bool:
        if torch.compiler.is_compiling() or past_key_values is not None:
            return False
        if getattr(self.config, "_attn_implementation", None) != "sdpa":
            return False  # another attention was asked for after export (eager, flex, ...)
        if kwargs.get("output_attentions") or getattr(self.config, "output_attentions", False):
            return False
        if kwargs.get("head_mask") is not None or kwargs.get("encoder_hidden_states") is not None:
            return False
        if getattr(self, "is_causal", False) or getattr(self, "is_decoder", False):
            return False
        if self.training and getattr(self, "dropout", None) is not None and self.dropout.p > 0:
            return False
        if not isinstance(hidden_states, Tensor) or hidden_states.dim() != 3:
            return False
        if hidden_states.device.type != "cpu" or hidden_states.dtype != torch.float32:
            return False
        if self.attention_head_size % 8 or not _attention.available():
            return False
        if torch.is_grad_enabled() and (
            hidden_states.requires_grad or any(p.requires_grad for p in self.parameters())
        ):
            return False  # the kernel has no backward: SDPA under autograd
        return True

    def _spd_fused_qkv(self) -> Optional[nn.Module]:
        """The fused QKV linear (None when the three cannot be fused), rebuilt when the query,
        key or value parameters were replaced or changed in place."""
        parts = (self.query, self.key, self.value)
        key = []
        for lin in parts:
            for t in (getattr(lin, "values", None), getattr(lin, "weight", None), lin.bias):
                if isinstance(t, Tensor):
                    key.append((t.data_ptr(), t._version, tuple(t.shape), t.dtype, t.device))
                else:
                    key.append(None)
            key.append(type(lin))
        key = tuple(key)
        cached = self.__dict__.get("_spd_qkv")
        if cached is None or cached[0] != key:
            cached = (key, _fuse_qkv_linear(*parts))
            self.__dict__["_spd_qkv"] = cached
        return cached[1]

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, **kwargs):
        if self._spd_fast_path_ok(hidden_states, past_key_values, kwargs):
            b, s, _ = hidden_states.shape
            try:
                start, end = _attention.key_range(attention_mask, b, s)
            except (TypeError, ValueError):
                start = None  # not plain key padding: the module's own attention takes the mask
            if start is not None:
                heads, d = self.num_attention_heads, self.attention_head_size
                fused = self._spd_fused_qkv()
                if fused is not None:
                    q, k, v = _attention.split_qkv(fused(hidden_states), heads)
                else:  # three outputs, read as strided views all the same
                    q, k, v = (
                        m(hidden_states).view(b, s, heads, d) for m in (self.query, self.key, self.value)
                    )
                out = _attention._ext.c_op(_attention.OP)(q, k, v, start, end, float(self.scaling))
                return out, None
        return self._spd_base.forward(self, hidden_states, attention_mask, past_key_values, **kwargs)


def _fuse_qkv_linear(q: nn.Module, k: nn.Module, v: nn.Module) -> Optional[nn.Module]:
    """One linear computing ``cat([q(x), k(x), v(x)], -1)``: a :class:`SparseLinear` on the
    concatenated patterns (same block, no activation), an ``nn.Linear`` for three plain linears,
    else None."""
    parts = (q, k, v)
    with torch.no_grad():
        if all(isinstance(m, SparseLinear) and m.activation == "none" for m in parts):
            if len({(m.block, m.in_features, m.values.dtype, m.values.device) for m in parts}) != 1:
                return None
            if len({m.bias is None for m in parts}) != 1:
                return None
            offsets, nnz = [parts[0].row_offsets], int(parts[0].values.shape[0])
            for m in parts[1:]:
                offsets.append(m.row_offsets[1:] + nnz)
                nnz += int(m.values.shape[0])
            weight = SparseMatrix(
                torch.cat([m.values.detach() for m in parts]),
                torch.cat(offsets),
                torch.cat([m.col_indices for m in parts]),
                (sum(m.out_features for m in parts), parts[0].in_features),
            )
            bias = torch.cat([m.bias.detach() for m in parts]) if parts[0].bias is not None else None
            fused = SparseLinear.from_sparse(weight, bias)
        elif all(type(m) is nn.Linear for m in parts):
            if len({(m.in_features, m.weight.dtype, m.weight.device, m.bias is None) for m in parts}) != 1:
                return None
            fused = nn.Linear(
                parts[0].in_features, sum(m.out_features for m in parts), parts[0].bias is not None
            )
            fused = fused.to(parts[0].weight.device, parts[0].weight.dtype)
            fused.weight.copy_(torch.cat([m.weight for m in parts]))
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([m.bias for m in parts]))
        else:
            return None
    fused.requires_grad_(False)
    return fused.eval()


def _fused_class(base: type) -> type:
    cls = _FUSED_CLASSES.get(base)
    if cls is None:
        cls = type(f"FusedQKV{base.__name__}", (FusedQKVAttention, base), {"_spd_base": base})
        cls.__module__ = __name__
        _FUSED_CLASSES[base] = cls
    return cls


def fuse_attention(model: nn.Module) -> int:
    """Switch every BERT-family self-attention of ``model`` (in place) to one fused QKV linear
    and the fused CPU attention kernel (:class:`FusedQKVAttention`); returns how many. The module
    keeps its class as a base (``isinstance`` and Hugging Face's attention-map capture still see
    it), its children and its state dict. Undone by :func:`unfuse_attention` and :func:`densify`."""
    n = 0
    for _, m in model.named_modules():
        base = type(m)
        if isinstance(m, FusedQKVAttention):
            n += 1
            continue
        if base.__name__ not in _FUSABLE_ATTENTION or not base.__module__.startswith("transformers."):
            continue
        if not all(
            hasattr(m, a)
            for a in ("query", "key", "value", "num_attention_heads", "attention_head_size", "scaling")
        ):
            continue
        m.__class__ = _fused_class(base)
        m._spd_fused_qkv()  # built now: inference does not repack
        n += 1
    return n


def unfuse_attention(model: nn.Module) -> int:
    """Undo :func:`fuse_attention`: the attention modules get their original class back."""
    n = 0
    for _, m in model.named_modules():
        if isinstance(m, FusedQKVAttention):
            m.__dict__.pop("_spd_qkv", None)
            m.__class__ = m._spd_base
            n += 1
    return n


def sparse_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """Name -> every :class:`MaskedLinear` / :class:`SparseLinear` of ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (MaskedLinear, SparseLinear))}


def size_report(model: nn.Module) -> Dict[str, dict]:
    """Per sparse layer: ``density`` and the bytes of its dense weight, of its packed values,
    of its saved index arrays (``index``) and of every index array it holds in memory
    (``index_in_memory``, with the transposed metadata); plus a ``"total"`` entry."""
    out: Dict[str, dict] = {}
    total = {"dense": 0, "values": 0, "index": 0, "index_in_memory": 0}
    for name, m in sparse_layers(model).items():
        if isinstance(m, MaskedLinear):
            m = SparseLinear.from_masked(m)
        b = m.storage_bytes()
        out[name] = {"density": m.density, **b}
        for key in total:
            total[key] += b[key]
    out["total"] = {**total, "density": total["values"] / total["dense"] if total["dense"] else 0.0}
    return out


__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "Fusion",
    "SparsityConfig",
    "activation_name",
    "densify",
    "export",
    "find_targets",
    "fuse_attention",
    "model_type_of",
    "set_masks",
    "size_report",
    "sparse_layers",
    "sparsify",
    "sparsity_config",
    "target_patterns",
    "unfuse_attention",
    "use_sdpa_attention",
]
