"""The Circuit: build it (:mod:`babybear.structure`), fit it (:mod:`babybear.warmup`), tune it
(:mod:`babybear.tuning.tune`), run it (:mod:`babybear.scheduler`), save and load it (:mod:`babybear.artifacts`).

Three doors open onto it: the Python builder (``Circuit().add(...).connect(...)``), YAML
(``Circuit.from_yaml``), and the spaCy component / CLI, which load a fitted circuit folder.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts, warmup
from .tuning import tune as tuning
from .heldout import Heldout
from .metrics import seqeval_f1
from .tuning.optimizer import Method
from .routing import CachedRun
from .scheduler import Routed, Scheduler
from .schema import Budget
from .structure import Structure
from .text import n_tokens, split_text, stitch_spans
from .types import Answer, Prediction, Span


class Circuit(Structure):
    """A DAG of babybears in front of one mamabear, with what it learned: fit, tune, run, evaluate, save, load."""

    def __init__(self, name: str = "circuit", budget: Budget | dict | None = None) -> None:
        super().__init__(name, budget)
        self.report_: dict[str, Any] = {}
        self.heldout_: Heldout | None = None  # every node's output on the held-out warm-up texts

    # -- running -----------------------------------------------------------------------------------------------
    def _predict(self, name: str, texts: Sequence[str], batch_size: int, progress: bool) -> list[Prediction]:
        """Node ``name``'s answers through the scheduler; a text it fails on gets an empty one (and a warning)."""
        with Scheduler(self, batch_size, progress=progress) as scheduler:
            return scheduler.predict(name, texts).preds

    def route(self, units: Sequence[str], batch_size: int = 256, progress: bool = False) -> Routed:
        """Route text units (no splitting) through the circuit: each one's answer, the node it stopped at, its
        confidence (the lowest gate score on that node's out-edges; None for the mamabear), errors, and stats."""
        with Scheduler(self, batch_size, progress=progress) as scheduler:
            return scheduler.route(units)

    def __call__(self, texts: Sequence[str], ids: Sequence[str] | None = None, batch_size: int = 256, progress: bool = False) -> list[Answer]:
        """Answer every text, in order. Blank texts get no entities without running a model (``node`` None).
        A text the mamabear fails on gets no entities and ``error``; one a babybear fails on goes on to the next
        nodes (see :class:`babybear.scheduler.Scheduler`)."""
        answers, _ = self._run(texts, ids, batch_size, progress)
        return answers

    def stream(self, texts: Iterable[str], ids: Iterable[str] | None = None, chunk: int = 10_000, batch_size: int = 256) -> Iterator[Answer]:
        """Answer an iterable of any length in order and in flat memory, in chunks of at most ``chunk`` texts
        (see :meth:`Scheduler.stream`); GPU nodes work on one chunk while the CPU nodes start on the next."""
        self.warm_up()
        with Scheduler(self, batch_size) as scheduler:
            yield from scheduler.stream(texts, ids, chunk)

    def _run(self, texts: Sequence[str], ids: Sequence[str] | None, batch_size: int, progress: bool) -> tuple[list[Answer], dict]:
        self.warm_up()
        with Scheduler(self, batch_size, progress=progress) as scheduler:
            return scheduler.run(texts, ids)

    # -- warm-up and tuning -------------------------------------------------------------------------------------
    def fit(
        self,
        texts: Sequence[str],
        *,
        seed: int = 0,
        fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
        max_heldout: int | None = warmup.MAX_HELDOUT,
        block: int = 64,
        batch_size: int = 256,
        progress: bool = True,
    ) -> Circuit:
        """Warm up on unlabeled ``texts`` and tune the thresholds (see :func:`babybear.warmup.fit`); returns self."""
        warmup.fit(self, texts, seed=seed, fractions=fractions, max_heldout=max_heldout, block=block, batch_size=batch_size, progress=progress)
        return self.tune()

    def fit_gates(self) -> Circuit:
        """Refit the gates on the held-out cache, without running a model (see :func:`babybear.warmup.fit_gates`)."""
        warmup.fit_gates(self)
        return self

    def tune(
        self,
        min_entity_f1: float | None = None,
        method: Method = "joint",
        run: CachedRun | None = None,
        costs: dict[str, float] | None = None,
        confidence: float | None = None,
        off: Collection[str] = (),
        **options: Any,
    ) -> Circuit:
        """Set every threshold for the budget from cached outputs (see :func:`babybear.tuning.tune.tune`); returns self."""
        tuning.tune(self, min_entity_f1, method, run, costs, confidence, off, **options)
        return self

    # -- evaluation --------------------------------------------------------------------------------------------
    def evaluate(self, texts: Sequence[str], gold: Sequence[Sequence[Span]] | None = None, batch_size: int = 256, progress: bool = True) -> dict[str, Any]:
        """Run the circuit and, on the same texts, the mamabear alone; compare answers, calls and wall time."""
        keep = [i for i, t in enumerate(texts) if t.strip()]
        texts = [texts[i] for i in keep]
        gold = [gold[i] for i in keep] if gold is not None else None
        self.warm_up()  # loading models is not part of either side's timing, nor are the first calls' one-off costs:
        sample = texts[:64]  # a few texts through both sides, untimed
        self._run(sample, None, batch_size, False)
        self._predict(self.mamabear, [t[s:e] for t in sample for s, e, _, _ in split_text(t)], batch_size, False)
        start = time.perf_counter()
        answers, stats = self._run(texts, None, batch_size, progress)
        circuit_seconds = time.perf_counter() - start
        mama = self.mamabear
        start = time.perf_counter()
        bounds = [split_text(text) for text in texts]
        units = [text[s:e] for text, text_bounds in zip(texts, bounds) for s, e, _, _ in text_bounds]
        ref_units = self._predict(mama, units, batch_size, progress)
        mama_seconds = time.perf_counter() - start
        ref, k = [], 0
        for text_bounds in bounds:
            ref.append(stitch_spans(text_bounds, [p.spans for p in ref_units[k : k + len(text_bounds)]]))
            k += len(text_bounds)
        answered = {n: 0 for n in self.topology.order}
        for a in answers:
            answered[a.node] += 1
        # the calls hide that the hard texts are the long ones: tokens (whitespace words) of the texts the
        # mamabear answered (a long text counts whole when it answered any of its units)
        tokens = np.array([n_tokens(t) for t in texts])
        to_mama = np.array([a.node == mama for a in answers], dtype=bool)
        report: dict[str, Any] = {
            "texts": len(texts),
            "texts_per_node": answered,
            "mamabear_calls_avoided": 1.0 - stats[mama]["texts"] / max(len(units), 1),
            "mamabear_tokens_avoided": 1.0 - float(tokens[to_mama].sum()) / max(int(tokens.sum()), 1),
            "entity_f1_vs_mamabear": seqeval_f1(texts, [a.spans for a in answers], ref),
            "wall_time_ratio": circuit_seconds / max(mama_seconds, 1e-9),
            "circuit_seconds": circuit_seconds,
            "mamabear_alone_seconds": mama_seconds,
            "node_cost_seconds_per_text": {n: s["seconds"] / s["texts"] if s["texts"] else 0.0 for n, s in stats.items()},
            "node_texts_reached": {n: s["texts"] for n, s in stats.items()},
        }
        if gold is not None:
            report["entity_f1_vs_gold"] = {"circuit": seqeval_f1(texts, [a.spans for a in answers], gold), "mamabear": seqeval_f1(texts, ref, gold)}
        return report

    # -- persistence -------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the fitted circuit to a folder, atomically and under its lock (see :func:`babybear.artifacts.save`)."""
        return artifacts.save(self, path)

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        """Load a folder written by :meth:`save`; runs no code from it (see :func:`babybear.artifacts.load`)."""
        return artifacts.load(cls, path)
