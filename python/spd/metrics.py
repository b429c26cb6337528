"""Task metrics, written out (no ``evaluate`` dependency): accuracy, binary F1, Matthews
correlation, Pearson and Spearman correlation. Inputs are 1-D sequences or arrays."""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman")


def _arrays(pred, labels):
    p, y = np.asarray(pred), np.asarray(labels)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"predictions {p.shape} and labels {y.shape} must be 1-D of the same length")
    return p, y


def accuracy(pred: Sequence, labels: Sequence) -> float:
    p, y = _arrays(pred, labels)
    return float((p == y).mean()) if len(y) else 0.0


def f1(pred: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """Binary F1 of the ``positive`` class (0 when it is never predicted nor present)."""
    p, y = _arrays(pred, labels)
    tp = float(((p == positive) & (y == positive)).sum())
    fp = float(((p == positive) & (y != positive)).sum())
    fn = float(((p != positive) & (y == positive)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def mcc(pred: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation (multi-class form of Gorodkin 2004; the binary φ for two classes)."""
    p, y = _arrays(pred, labels)
    classes = np.union1d(p, y)
    idx = {c: i for i, c in enumerate(classes.tolist())}
    k = len(classes)
    conf = np.zeros((k, k), dtype=np.float64)
    for a, b in zip(y.tolist(), p.tolist()):
        conf[idx[a], idx[b]] += 1
    t, pk = conf.sum(1), conf.sum(0)
    c, s = np.trace(conf), conf.sum()
    num = c * s - (t * pk).sum()
    den = np.sqrt(s * s - (pk * pk).sum()) * np.sqrt(s * s - (t * t).sum())
    return float(num / den) if den > 0 else 0.0


def pearson(pred: Sequence[float], labels: Sequence[float]) -> float:
    p, y = _arrays(pred, labels)
    p, y = p.astype(np.float64), y.astype(np.float64)
    pc, yc = p - p.mean(), y - y.mean()
    den = np.sqrt((pc * pc).sum() * (yc * yc).sum())
    return float((pc * yc).sum() / den) if den > 0 else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(pred: Sequence[float], labels: Sequence[float]) -> float:
    p, y = _arrays(pred, labels)
    return pearson(_ranks(p.astype(np.float64)), _ranks(y.astype(np.float64)))


_FUNCS = {"accuracy": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman}


def compute_metrics(names: Sequence[str], pred: Sequence, labels: Sequence) -> Dict[str, float]:
    """``{name: value}`` for each metric in ``names``."""
    out = {}
    for n in names:
        if n not in _FUNCS:
            raise ValueError(f"unknown metric {n!r}; known: {METRICS}")
        out[n] = _FUNCS[n](pred, labels)
    return out


__all__ = ["METRICS", "accuracy", "compute_metrics", "f1", "mcc", "pearson", "spearman"]
