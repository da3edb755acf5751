"""Entity-level agreement: exact (start, end, label) matches, micro-averaged.

``span_counts`` is the fast path the engine and optimizer use; ``seqeval_f1`` scores the same thing with
seqeval (conlleval-compatible) over character-level BIO tags, and the tests hold the two equal.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .types import Span


def span_counts(pred: Iterable[Span], ref: Iterable[Span]) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of ``pred`` against ``ref``."""
    p, r = set(pred), set(ref)
    tp = len(p & r)
    return tp, len(p) - tp, len(r) - tp


def f1(tp: float, fp: float, fn: float) -> float:
    """Micro F1 from counts; 1.0 when there is nothing to find and nothing found."""
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2 * tp / denom


def entity_f1(preds: Sequence[Iterable[Span]], refs: Sequence[Iterable[Span]]) -> float:
    tp = fp = fn = 0
    for p, r in zip(preds, refs, strict=True):
        a, b, c = span_counts(p, r)
        tp, fp, fn = tp + a, fp + b, fn + c
    return f1(tp, fp, fn)


def per_label_counts(preds: Sequence[Iterable[Span]], refs: Sequence[Iterable[Span]]) -> dict[str, list[int]]:
    """[tp, fp, fn] per label, summed over the sentences."""
    out: dict[str, list[int]] = {}
    for p, r in zip(preds, refs, strict=True):
        p, r = set(p), set(r)
        for s in p | r:
            c = out.setdefault(s.label, [0, 0, 0])
            c[0 if (s in p and s in r) else 1 if s in p else 2] += 1
    return out


def _char_tags(text_len: int, spans: Iterable[Span]) -> list[str]:
    tags = ["O"] * text_len
    for s in sorted(spans):
        tags[s.start] = f"B-{s.label}"
        for i in range(s.start + 1, s.end):
            tags[i] = f"I-{s.label}"
    return tags


def seqeval_f1(texts: Sequence[str], preds: Sequence[Iterable[Span]], refs: Sequence[Iterable[Span]]) -> float:
    """Entity F1 by seqeval over character-level BIO tags (exact span + label)."""
    from seqeval.metrics import f1_score

    y_true = [_char_tags(len(t), r) for t, r in zip(texts, refs, strict=True)]
    y_pred = [_char_tags(len(t), p) for t, p in zip(texts, preds, strict=True)]
    if not any(any(tag != "O" for tag in seq) for seq in y_true + y_pred):
        return 1.0
    return float(f1_score(y_true, y_pred, zero_division=0))


def calibration_bins(p: np.ndarray, y: np.ndarray, n_bins: int = 10) -> list[dict[str, float]]:
    """Reliability-diagram bins: mean confidence, observed rate and count per equal-width bin."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        m = which == b
        if m.any():
            bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "confidence": float(p[m].mean()), "observed": float(y[m].mean()), "n": int(m.sum())})
    return bins


def expected_calibration_error(p: np.ndarray, y: np.ndarray, n_bins: int = 10) -> float:
    """Count-weighted mean |confidence - observed| over equal-width bins."""
    bins = calibration_bins(p, y, n_bins)
    n = sum(b["n"] for b in bins)
    return float(sum(b["n"] * abs(b["confidence"] - b["observed"]) for b in bins) / n) if n else 0.0


def calibration_report(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """How well confidences ``p`` match outcomes ``y``: n, observed rate, ECE and reliability bins."""
    y = np.asarray(y, float)
    if not len(y):
        return {"n": 0, "agree_rate": None, "ece": None, "bins": []}
    return {"n": int(len(y)), "agree_rate": float(y.mean()), "ece": expected_calibration_error(p, y), "bins": calibration_bins(p, y)}
