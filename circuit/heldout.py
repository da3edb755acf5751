"""The held-out cache: every node's output on the warm-up texts no babybear learned from, and its file format.

Its first ``n_calibration`` rows fit the gates; the rest (the tuning rows) set the thresholds. Kept in a fitted
folder as ``heldout.json``, so thresholds can be re-tuned later without running a model; an audit saves the
texts it checked in the same format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ArtifactError
from .routing import CachedRun
from .text import n_tokens
from .types import Prediction, Span

if TYPE_CHECKING:
    from .structure import Structure


@dataclass
class Heldout:
    """Held-out texts, every node's answers and gate scores on them (``run``), and how many rows calibrate."""

    texts: list[str]
    run: CachedRun
    n_calibration: int

    @property
    def tuning(self) -> CachedRun:
        """The rows that set thresholds (after the calibration rows, which the gates learned from)."""
        return self.run.subset(np.arange(self.n_calibration, self.run.n))

    def save(self, file: Path) -> None:
        """Write the texts, every node's spans and evidence, and the measured costs as JSON."""
        data = {
            "n_calibration": self.n_calibration,
            "texts": self.texts,
            "costs": self.run.costs,
            "preds": {n: [{"spans": [list(s) for s in p.spans], "evidence": p.evidence} for p in ps] for n, ps in self.run.preds.items()},
        }
        file.write_text(json.dumps(data), encoding="utf-8")

    @classmethod
    def build(cls, texts: list[str], preds: Mapping[str, list[Prediction]], costs: Mapping[str, float], n_calibration: int, structure: Structure) -> Heldout:
        """The cache of ``preds`` on ``texts``, scored by ``structure``'s gates (fitted, or to be fitted and then
        :meth:`rescore`)."""
        run = CachedRun(structure.topology, dict(preds), {}, dict(costs), np.array([n_tokens(t) for t in texts]), structure.covers())
        return cls(list(texts), run, n_calibration)

    def rescore(self, structure: Structure) -> Heldout:
        """Score every row with ``structure``'s gates as they are now; returns self."""
        self.run.scores.update(structure.score_gates(self.run.preds))
        return self

    @classmethod
    def load(cls, file: Path, structure: Structure) -> Heldout:
        """Read a cache written by :meth:`save` and score it with ``structure``'s loaded gates; a damaged file is an
        :class:`ArtifactError` naming it and what is wrong."""
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
            problem = _problem(data)
            if problem:
                raise ValueError(problem)
            preds = {n: [Prediction([Span(*s) for s in p["spans"]], p["evidence"]) for p in ps] for n, ps in data["preds"].items()}
            costs = {n: float(c) for n, c in data["costs"].items()}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ArtifactError(f"{file}: cannot read the held-out cache: {err}") from err
        order = structure.topology.order
        if set(preds) != set(order):
            raise ArtifactError(f"{file}: cached nodes {sorted(preds)} do not match the circuit's {sorted(order)}")
        return cls.build(data["texts"], preds, costs, data["n_calibration"], structure).rescore(structure)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _problem(data: Any) -> str | None:
    """What is wrong with a held-out cache's contents, or None: every node's answers are one per text, spans lie
    inside their text, evidence and costs are finite numbers, and some rows are left to tune on after calibration."""
    missing = [k for k in ("n_calibration", "texts", "costs", "preds") if not isinstance(data, dict) or k not in data]
    if missing:
        return f"lacks {', '.join(missing)}"
    texts, preds, n_cal = data["texts"], data["preds"], data["n_calibration"]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return "texts is not a list of strings"
    if not isinstance(data["costs"], dict) or not all(_is_number(c) and c >= 0 for c in data["costs"].values()):
        return "costs must map each node to a number >= 0"
    if not isinstance(n_cal, int) or isinstance(n_cal, bool) or not 0 <= n_cal < len(texts):
        return f"n_calibration is {n_cal!r}; it must be a whole number in [0, {len(texts)}) (the cache has {len(texts)} texts, and the rest after calibration tune)"
    if not isinstance(preds, dict):
        return "preds is not an object"
    for node, answers in preds.items():
        if not isinstance(answers, list) or len(answers) != len(texts):
            return f"preds.{node} has {len(answers) if isinstance(answers, list) else 'no list of'} answers for {len(texts)} texts"
        for i, (text, answer) in enumerate(zip(texts, answers)):
            where = f"preds.{node}[{i}]"
            if not isinstance(answer, dict) or not isinstance(answer.get("spans"), list) or not isinstance(answer.get("evidence"), dict):
                return f"{where} is not an object with a spans list and an evidence object"
            if not all(isinstance(k, str) and _is_number(v) for k, v in answer["evidence"].items()):
                return f"{where}.evidence holds a value that is not a finite number"
            for span in answer["spans"]:
                ok = isinstance(span, list) and len(span) == 3 and all(isinstance(x, int) and not isinstance(x, bool) for x in span[:2])
                if not ok or not 0 <= span[0] <= span[1] <= len(text) or not isinstance(span[2], str):
                    return f"{where}: span {span!r} is not [start, end, label] with 0 <= start <= end <= {len(text)} (the text's length)"
    return None
