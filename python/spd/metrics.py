"""Task metrics, written out (no ``evaluate`` dependency): accuracy, binary F1, Matthews
correlation, Pearson and Spearman correlation, per-class recall and macro-F1, and the collapse
guard (:func:`collapse_check`). Inputs are 1-D sequences or arrays."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

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


def per_class(pred: Sequence[int], labels: Sequence[int], num_labels: Optional[int] = None):
    """(support, predicted counts, recall, F1) per class id 0..C-1 as float64 arrays; recall
    and F1 are NaN for a class with no support (F1 also 0 when never predicted nor present)."""
    p, y = _arrays(pred, labels)
    p, y = p.astype(np.int64), y.astype(np.int64)
    c = max(int(num_labels or 0), int(p.max(initial=-1)) + 1, int(y.max(initial=-1)) + 1)
    support = np.bincount(y, minlength=c).astype(np.float64)
    predicted = np.bincount(p, minlength=c).astype(np.float64)
    tp = np.bincount(y[p == y], minlength=c).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        f1_ = np.where(support > 0, 2 * tp / (support + predicted), np.nan)
    return support, predicted, recall, f1_


def macro_f1(pred: Sequence[int], labels: Sequence[int], num_labels: Optional[int] = None) -> float:
    """Mean F1 over the classes present in ``labels`` (a one-class predictor scores about 1/C)."""
    _, _, _, f = per_class(pred, labels, num_labels)
    return float(np.nanmean(f)) if np.isfinite(f).any() else 0.0


# the collapse guard's thresholds (docs/training.md, "Your own data")
COLLAPSE_SHARE = 0.5  # top predicted share beyond the data's majority share + this x the rest
COLLAPSE_MARGIN = 0.02  # accuracy within this of the majority-class rate (or 1/4 of what is left)
COLLAPSE_MIN_SUPPORT = 5  # a class needs this many examples for "never predicted" to count
IMBALANCE_RATIO = 2.0  # largest / smallest class share from which data counts as imbalanced


def collapse_check(
    pred: Sequence[int],
    labels: Sequence[int],
    num_labels: Optional[int] = None,
    names: Optional[Sequence[str]] = None,
    share: float = COLLAPSE_SHARE,
    margin: float = COLLAPSE_MARGIN,
    min_support: int = COLLAPSE_MIN_SUPPORT,
) -> Dict[str, Any]:
    """Whether a classifier answers (nearly) one class, from its predictions on a split.

    Flagged for any of: ``one_class``: the top predicted class's share is above the data's
    majority share m plus ``share`` x (1 - m) (past halfway to answering one class everywhere);
    ``near_majority``: accuracy at most m + min(``margin``, (1 - m) / 4), what answering the
    majority class everywhere scores; ``never_predicted``: a class with ``min_support``
    examples or more is never predicted. Splits with fewer than two classes are not judged.
    Returns {"flagged", "reasons" (codes), "messages", the shares, accuracy, macro-F1, the
    recall of each class (by name), "imbalanced"}."""
    p, y = _arrays(pred, labels)
    support, predicted, recall, f = per_class(p, y, num_labels)
    n = len(y)
    name = (lambda i: str(names[i])) if names is not None and len(names) == len(support) else str
    out: Dict[str, Any] = {"flagged": False, "reasons": [], "messages": []}
    if n == 0:
        return out
    present = support > 0
    maj = int(support.argmax())
    top = int(predicted.argmax())
    m, top_share = support[maj] / n, predicted[top] / n
    acc = float((p == y).mean())
    shares = support[present] / n
    out.update(
        {
            "accuracy": acc,
            "majority_class": name(maj),
            "majority_share": float(m),
            "top_class": name(top),
            "top_class_share": float(top_share),
            "macro_f1": float(np.nanmean(f)) if present.any() else 0.0,
            "recall": {name(i): float(recall[i]) for i in range(len(support)) if present[i]},
            "imbalanced": bool(shares.max() >= IMBALANCE_RATIO * shares.min()),
        }
    )
    if present.sum() < 2:
        return out
    reasons: List[str] = []
    msgs: List[str] = []
    if top_share > m + share * (1 - m):
        reasons.append("one_class")
        msgs.append(
            f"predicts {name(top)!r} for {top_share:.0%} of the examples "
            f"(the data's largest class is {m:.0%})"
        )
    if acc <= m + min(margin, (1 - m) / 4):
        reasons.append("near_majority")
        msgs.append(f"accuracy {acc:.3f} is about what answering {name(maj)!r} everywhere scores ({m:.3f})")
    never = [i for i in range(len(support)) if support[i] >= min_support and predicted[i] == 0]
    if never:
        reasons.append("never_predicted")
        msgs.append(
            "never predicts "
            + ", ".join(f"{name(i)!r} ({support[i] / n:.0%} of the examples)" for i in never)
        )
    out.update({"flagged": bool(reasons), "reasons": reasons, "messages": msgs})
    if never:
        out["never_predicted"] = [name(i) for i in never]
    return out


def collapse_text(check: Optional[Dict[str, Any]]) -> str:
    """One line for a flagged check ('' when not flagged): the reasons, macro-F1 and recalls."""
    if not check or not check.get("flagged"):
        return ""
    rec = ", ".join(f"{k} {v:.2f}" for k, v in check.get("recall", {}).items())
    return (
        "; ".join(check["messages"])
        + f" (macro-F1 {check.get('macro_f1', 0.0):.3f}, recall per class: {rec})"
    )


_FUNCS = {"accuracy": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman}


def compute_metrics(names: Sequence[str], pred: Sequence, labels: Sequence) -> Dict[str, float]:
    """``{name: value}`` for each metric in ``names``."""
    out = {}
    for n in names:
        if n not in _FUNCS:
            raise ValueError(f"unknown metric {n!r}; known: {METRICS}")
        out[n] = _FUNCS[n](pred, labels)
    return out


__all__ = [
    "METRICS",
    "accuracy",
    "collapse_check",
    "collapse_text",
    "compute_metrics",
    "f1",
    "macro_f1",
    "mcc",
    "pearson",
    "per_class",
    "spearman",
]
