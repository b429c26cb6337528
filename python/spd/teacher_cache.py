"""The frozen teacher's outputs per training example, computed once and kept on disk.

A teacher in eval mode with fixed weights gives the same logits, hidden states and attention
maps for a sentence at every step of every epoch and of every run that shares it, so the
distillation targets are computed in one pass (batches sorted by length, no dropout) and
stored; training then gathers them per batch instead of running the teacher.

Layout under the cache root (default ``~/.cache/spd/teacher``, ``SPD_CACHE`` moves it)::

    <key>/manifest.json          what is stored, the shard list (sizes), written last
    <key>/shard-00000.safetensors  examples [start, end): logits (n, C) float32,
                                   hidden (tokens, states, H), attn (flat L_i² maps)
    evals/<key>.json             the teacher's validation/test metrics (evaluated once)

The key is a SHA-256 of the teacher (config and every weight), the encoded split (token ids,
so the tokenizer, the data and the maximum length), the fields stored, the storage dtype and
the format version: a cache whose key differs is never read. Every shard carries a SHA-256 of
its tensors (the checkpoint format), checked on load; a missing, truncated or corrupt shard
is reported and the cache rebuilt. Hidden states and attention maps are stored in float16
by default (``--teacher-cache-dtype``); logits always in float32.

Only the targets come from the cache: SPD's grafting still runs the teacher's layers live on
the student's hidden states.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from . import checkpoint as ckpt
from .data import EncodedSplit

FORMAT = "spd-teacher-cache"
VERSION = 1
FIELDS = ("logits", "hidden", "attn")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
SHARD_EXAMPLES = 2048


def default_cache_root() -> str:
    return os.path.join(os.path.expanduser(os.environ.get("SPD_CACHE", "~/.cache/spd")), "teacher")


def model_digest(model: nn.Module) -> str:
    """SHA-256 of a model's config and every tensor of its state dict."""
    cfg = getattr(model, "config", None)
    desc = cfg.to_json_string(use_diff=False) if hasattr(cfg, "to_json_string") else type(model).__name__
    return hashlib.sha256((desc + ckpt.tensors_digest(model.state_dict())).encode()).hexdigest()


def split_digest(split: EncodedSplit) -> str:
    return ckpt.tensors_digest(
        {"ids": split.ids, "type_ids": split.type_ids, "offsets": split.offsets, "labels": split.labels}
    )


@dataclass
class TeacherTargets:
    """What ``distillation_loss`` reads of a teacher's output, for one padded batch."""

    logits: Tensor
    hidden_states: Optional[Tuple[Tensor, ...]] = None
    attentions: Optional[Tuple[Tensor, ...]] = None


class TeacherCache:
    """Teacher targets of one split. Build or load with :meth:`prepare`, then
    :meth:`targets` per batch.

    Args:
        teacher: the frozen teacher (eval mode is set while building).
        split: the encoded split whose examples the indices refer to.
        fields: which outputs to store, a subset of ``("logits", "hidden", "attn")``.
        root: cache directory (None = :func:`default_cache_root`).
        dtype: storage dtype of hidden states and attention maps.
    """

    def __init__(
        self,
        teacher: nn.Module,
        split: EncodedSplit,
        fields: Sequence[str],
        root: Optional[str] = None,
        dtype: str = "float16",
        batch_size: int = 64,
    ):
        bad = [f for f in fields if f not in FIELDS]
        if bad or "logits" not in fields:
            raise ValueError(f"fields must include 'logits' and be among {FIELDS}, got {list(fields)}")
        if dtype not in DTYPES:
            raise ValueError(f"teacher cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.teacher, self.split = teacher, split
        self.fields = tuple(f for f in FIELDS if f in fields)
        self.root = root or default_cache_root()
        self.dtype = dtype
        self.batch_size = int(batch_size)
        self.lengths = split.lengths
        # where example i starts in the flat hidden-state (tokens) and attention-map buffers
        self._tok_off: List[int] = split.offsets.tolist()
        per = int(teacher.config.num_hidden_layers) * int(teacher.config.num_attention_heads)
        self._attn_off: List[int] = [0]
        for n in self.lengths:
            self._attn_off.append(self._attn_off[-1] + per * n * n)
        self.key = self._key()
        self.dir = os.path.join(self.root, self.key)
        self.hits = 0  # examples served from the cache
        self.built = False  # True when this process computed the targets
        self._data: Dict[str, Tensor] = {}

    def _key(self) -> str:
        import transformers

        desc = {
            "format": FORMAT,
            "version": VERSION,
            "teacher": model_digest(self.teacher),
            "data": split_digest(self.split),
            "fields": list(self.fields),
            "dtype": self.dtype,
            "transformers": transformers.__version__,
        }
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:32]

    # ------------------------------------------------------------------ disk
    def _manifest_path(self) -> str:
        return os.path.join(self.dir, "manifest.json")

    def load(self) -> bool:
        """Read the cache from disk; False when it is absent. A damaged cache (manifest,
        size or checksum) raises ``ValueError`` naming the file."""
        mpath = self._manifest_path()
        if not os.path.isfile(mpath):
            return False
        try:
            with open(mpath, encoding="utf-8") as f:
                man = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{mpath}: unreadable teacher-cache manifest ({e})") from e
        if not isinstance(man, dict) or not isinstance(man.get("shards"), list):
            raise ValueError(f"{mpath}: not a teacher-cache manifest (no list of shards)")
        if man.get("key") != self.key or man.get("n") != len(self.split):
            raise ValueError(f"{mpath}: manifest does not describe this cache (key or size differs)")
        parts: Dict[str, List[Tensor]] = {f: [] for f in self.fields}
        for sh in man["shards"]:
            if not isinstance(sh, dict) or not isinstance(sh.get("file"), str) or os.sep in sh["file"]:
                raise ValueError(f"{mpath}: malformed shard record {sh!r}")
            path = os.path.join(self.dir, sh["file"])
            size = os.path.getsize(path) if os.path.isfile(path) else -1
            if size != sh["bytes"]:
                raise ValueError(f"{path}: teacher-cache shard has {size} bytes, expected {sh['bytes']}")
            _, tensors = ckpt.load_checkpoint(path, fmt=FORMAT)
            for f in self.fields:
                parts[f].append(tensors[f])
        self._data = {f: torch.cat(v) for f, v in parts.items()}
        return True

    def _write(self, data: Dict[str, Tensor], starts: List[int]) -> None:
        os.makedirs(self.dir, exist_ok=True)
        shards = []
        for j, a in enumerate(starts):
            b = starts[j + 1] if j + 1 < len(starts) else len(self.split)
            t_a, t_b = self._tok_off[a], self._tok_off[b]
            m_a, m_b = self._attn_off[a], self._attn_off[b]
            tensors = {"logits": data["logits"][a:b]}
            if "hidden" in data:
                tensors["hidden"] = data["hidden"][t_a:t_b]
            if "attn" in data:
                tensors["attn"] = data["attn"][m_a:m_b]
            name = f"shard-{j:05d}.safetensors"
            path = os.path.join(self.dir, name)
            ckpt.save_checkpoint(path, {"start": a, "end": b}, tensors, fmt=FORMAT)
            shards.append({"file": name, "start": a, "end": b, "bytes": os.path.getsize(path)})
        ckpt.atomic_write_json(
            self._manifest_path(),
            {
                "key": self.key,
                "n": len(self.split),
                "fields": list(self.fields),
                "dtype": self.dtype,
                "shards": shards,
            },
        )

    # ------------------------------------------------------------------ build

    @torch.no_grad()
    def compute(self, progress: bool = False) -> Dict[str, Tensor]:
        """Run the teacher over the whole split (eval mode, batches sorted by length)."""
        from .models import attention_implementation

        t = self.teacher
        was = t.training
        t.eval()
        device = next(t.parameters()).device
        sdt = DTYPES[self.dtype]
        n = len(self.split)
        cfg = t.config
        n_tok = int(self.split.offsets[-1])
        out: Dict[str, Tensor] = {"logits": torch.zeros(n, int(cfg.num_labels))}
        if "hidden" in self.fields:
            out["hidden"] = torch.zeros(
                n_tok, int(cfg.num_hidden_layers) + 1, int(cfg.hidden_size), dtype=sdt
            )
        if "attn" in self.fields:
            out["attn"] = torch.zeros(self._attn_off[-1], dtype=sdt)
        order = sorted(range(n), key=lambda i: self.lengths[i])
        tok, att = self._tok_off, self._attn_off
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="teacher targets", dynamic_ncols=True, leave=False)
        try:
            with attention_implementation(t, "eager" if "attn" in self.fields else "sdpa"):
                for a in range(0, n, self.batch_size):
                    idx = order[a : a + self.batch_size]
                    b = {k: v.to(device) for k, v in self.split.collate(idx).items()}
                    o = t(
                        input_ids=b["input_ids"],
                        attention_mask=b["attention_mask"],
                        token_type_ids=b["token_type_ids"],
                        output_hidden_states="hidden" in self.fields,
                        output_attentions="attn" in self.fields,
                    )
                    out["logits"][idx] = o.logits.float().cpu()
                    if "hidden" in self.fields:
                        hs = torch.stack(o.hidden_states, 2).cpu()  # (B, L, S, H)
                    if "attn" in self.fields:
                        at = torch.stack(o.attentions, 1).cpu()  # (B, layers, heads, L, L)
                    for row, i in enumerate(idx):
                        n_i = self.lengths[i]
                        if "hidden" in self.fields:
                            out["hidden"][tok[i] : tok[i + 1]] = hs[row, :n_i].to(sdt)
                        if "attn" in self.fields:
                            out["attn"][att[i] : att[i + 1]] = at[row, :, :, :n_i, :n_i].reshape(-1).to(sdt)
                    if bar is not None:
                        bar.update(len(idx))
        finally:
            t.train(was)
            if bar is not None:
                bar.close()
        return out

    def prepare(
        self, is_main: bool = True, barrier: Optional[Callable[[], None]] = None, progress: bool = False
    ) -> "TeacherCache":
        """Load the cache, or (main process) compute and write it first. A damaged cache is
        reported on stderr and rebuilt. Other processes wait at ``barrier`` and then load."""
        ok = False
        if is_main:
            try:
                ok = self.load()
            except ValueError as e:
                print(f"teacher cache damaged, rebuilding: {e}", file=sys.stderr)
            if not ok:
                data = self.compute(progress=progress)
                starts = list(range(0, len(self.split), SHARD_EXAMPLES)) or [0]
                self._write(data, starts)
                self._data = data
                self.built = True
        if barrier is not None:
            barrier()
        if not is_main and not self.load():
            raise ValueError(f"teacher cache {self.dir} missing after the main process built it")
        return self

    # ------------------------------------------------------------------ per batch
    def targets(self, idx: Sequence[int], width: int, device) -> TeacherTargets:
        """The stored outputs for examples ``idx``, padded to ``width`` tokens (zeros at
        padding, which the losses mask), float32 on ``device``."""
        idx = [int(i) for i in idx]
        cfg = self.teacher.config
        logits = self._data["logits"][idx].to(device)
        hidden = attn = None
        tok, att = self._tok_off, self._attn_off
        if "hidden" in self.fields:
            h = self._data["hidden"]
            buf = torch.zeros(h.shape[1], len(idx), width, h.shape[2], dtype=torch.float32)
            for row, i in enumerate(idx):
                n_i = self.lengths[i]
                buf[:, row, :n_i] = h[tok[i] : tok[i + 1]].transpose(0, 1)
            hidden = tuple(buf.to(device).unbind(0))
        if "attn" in self.fields:
            a = self._data["attn"]
            nl, nh = int(cfg.num_hidden_layers), int(cfg.num_attention_heads)
            buf = torch.zeros(nl, len(idx), nh, width, width, dtype=torch.float32)
            for row, i in enumerate(idx):
                n_i = self.lengths[i]
                buf[:, row, :, :n_i, :n_i] = a[att[i] : att[i + 1]].view(nl, nh, n_i, n_i)
            attn = tuple(buf.to(device).unbind(0))
        self.hits += len(idx)
        return TeacherTargets(logits, hidden, attn)


def needed_fields(needs_hidden: bool, needs_attentions: bool) -> Tuple[str, ...]:
    return ("logits",) + (("hidden",) if needs_hidden else ()) + (("attn",) if needs_attentions else ())


def cached_evaluation(
    teacher: nn.Module,
    split: EncodedSplit,
    evaluate: Callable[[], Dict[str, float]],
    root: Optional[str] = None,
) -> Dict[str, float]:
    """The teacher's metrics on ``split``, computed once per (teacher, split) and stored
    under ``root/evals``; ``evaluate`` computes them on a miss."""
    key = hashlib.sha256(f"{model_digest(teacher)}|{split_digest(split)}|{VERSION}".encode()).hexdigest()[:32]
    path = os.path.join(root or default_cache_root(), "evals", f"{key}.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        pass
    metrics = evaluate()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ckpt.atomic_write_json(path, metrics)
    return metrics


__all__ = [
    "TeacherCache",
    "TeacherTargets",
    "cached_evaluation",
    "default_cache_root",
    "model_digest",
    "needed_fields",
    "split_digest",
]
