"""Audit in production: a random fraction of the texts babybears answered also goes to the mamabear.

>>> audit = Audit(circuit, fraction=0.05)
>>> answers = audit(texts)        # the circuit's answers; sampled texts are queued, not checked inline
>>> audit.flush()                 # batched, off the hot path: run the queued texts through every node
>>> audit.report()                # realised entity-F1 vs the mamabear with its confidence interval, and alarm
>>> circuit.tune(run=audit.cached_run())   # recalibrate the thresholds on the audited (new-domain) texts
>>> audit.save("audit.json")      # or later: babybear tune DIR --audit audit.json

Every answered text is sampled with probability ``fraction``. Texts the mamabear answered are its own answer
(exact, no extra call), so realised F1 = counts of the mamabear's stratum (known) + the babybears' stratum
estimated from its audited sample (scaled to the stratum's size). The interval is a bootstrap over the
audited texts at the budget's confidence; the alarm fires when its upper end is below the budget (the drop
is significant, not noise) and at least ``MIN_AUDITED`` babybear answers were audited: the percentile bootstrap
of a handful of texts has (almost) no spread (one text: zero width) and would call any single error
significant. The sampled texts of both strata form a uniform sample of the traffic; with
every node's output on them they are a CachedRun that ``Circuit.tune(run=...)`` re-tunes on. Texts longer
than one unit (see babybear.text) are answered but not sampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, BabybearError
from ..circuit import Circuit
from ..heldout import Heldout
from ..metrics import f1, span_counts
from ..routing import CachedRun
from ..scheduler import Scheduler
from ..text import units_of
from ..types import Answer, Prediction, Span

N_BOOTSTRAP = 1000
MIN_AUDITED = 20  # audited babybear answers before the alarm may fire (the bootstrap interval is too narrow below)


class Audit:
    """Samples ``fraction`` of answered texts for a mamabear check; call :meth:`flush` to run the checks."""

    def __init__(self, circuit: Circuit, fraction: float = 0.05, batch_size: int = 64, seed: int = 0) -> None:
        if not 0 < fraction <= 1:
            raise BabybearError(f"audit fraction must be in (0, 1], got {fraction}")
        self.circuit, self.fraction, self.batch_size = circuit, fraction, batch_size
        self.rng = np.random.default_rng(seed)  # which texts are sampled
        self.seed = seed  # the report's bootstrap draws from its own generator, so reporting never changes sampling
        self.mamabear = circuit.mamabear
        self.queue: list[tuple[str, tuple[Span, ...], str]] = []  # (text, answer, answering node)
        self.texts: list[str] = []  # audited texts, in the order of ``preds``
        self.answers: list[tuple[Span, ...]] = []  # the circuit's answers to them
        self.preds: dict[str, list[Prediction]] = {n: [] for n in circuit.topology.order}
        self.by_babybear: list[bool] = []
        self.answered = {"babybear": 0, "mamabear": 0}
        self.mamabear_tp = 0  # spans in the mamabear's own answers: true positives by definition
        self.left_out = 0  # queued texts a node failed on during flush

    def __call__(self, texts: Sequence[str], ids: Sequence[str] | None = None) -> list[Answer]:
        """The circuit's answers to ``texts``; a random ``fraction`` of them is queued for the audit."""
        answers = self.circuit(texts, ids)
        for a in answers:
            if a.node is None or a.error is not None:  # blank, or the mamabear failed: nothing to check against
                continue
            by_mamabear = a.node == self.mamabear
            self.answered["mamabear" if by_mamabear else "babybear"] += 1
            self.mamabear_tp += len(a.spans) if by_mamabear else 0
            if self.rng.random() < self.fraction and len(units_of(a.text)) == 1:
                self.queue.append((a.text, a.spans, a.node))
        return answers

    def flush(self) -> None:
        """Run the queued texts through every node (the mamabear only where a babybear answered), in batches,
        with the scheduler's fault isolation. A text some node fails on is left out (and counted); a batch is
        recorded whole or not at all, so a flush that raises can be called again."""
        order = self.circuit.topology.order
        with Scheduler(self.circuit, self.batch_size) as scheduler:
            while self.queue:
                batch = self.queue[: self.batch_size]
                texts = [t for t, _, _ in batch]
                runs = {name: scheduler.predict(name, texts) for name in order if name != self.mamabear}
                checked = [i for i, (_, _, node) in enumerate(batch) if node != self.mamabear]
                ref_run = scheduler.predict(self.mamabear, [texts[i] for i in checked])
                ref = dict(zip(checked, ref_run.preds))
                failed = {i for run in runs.values() for i in run.errors} | {checked[j] for j in ref_run.errors}
                keep = [i for i in range(len(batch)) if i not in failed]
                for name, run in runs.items():
                    self.preds[name] += [run.preds[i] for i in keep]
                self.preds[self.mamabear] += [Prediction(ref[i].spans) if i in ref else Prediction(batch[i][1]) for i in keep]
                self.texts += [texts[i] for i in keep]
                self.answers += [batch[i][1] for i in keep]
                self.by_babybear += [batch[i][2] != self.mamabear for i in keep]
                self.left_out += len(failed)
                del self.queue[: self.batch_size]

    def _babybear_counts(self) -> np.ndarray:
        """(tp, fp, fn) of each audited babybear answer against the mamabear's."""
        ref = self.preds[self.mamabear]
        rows = [i for i, b in enumerate(self.by_babybear) if b]
        return np.array([span_counts(self.answers[i], ref[i].spans) for i in rows], dtype=float).reshape(-1, 3)

    def report(self) -> dict[str, Any]:
        """Realised entity-F1 vs the mamabear, its interval at the budget's confidence, and the drift alarm."""
        budget = self.circuit.budget
        counts = self._babybear_counts()
        n_b, m = self.answered["babybear"], len(counts)
        scale = n_b / m if m else 0.0

        def estimate(c: np.ndarray) -> float:
            tp, fp, fn = c.sum(axis=0) * scale if len(c) else (0.0, 0.0, 0.0)
            return f1(self.mamabear_tp + tp, fp, fn)

        point = estimate(counts)
        if m:
            idx = np.random.default_rng(self.seed).integers(0, m, size=(N_BOOTSTRAP, m))
            reps = np.array([estimate(counts[i]) for i in idx])
            alpha = 1 - budget.confidence
            lo, hi = (float(v) for v in np.quantile(reps, [alpha / 2, 1 - alpha / 2]))
        else:
            lo, hi = (point, point) if n_b == 0 else (0.0, 1.0)
        return {
            "texts": sum(self.answered.values()),
            "answered_by_babybears": n_b,
            "audited": m,
            "mamabear_calls_for_audit": m,
            "left_out_after_a_node_failed": self.left_out,
            "realised_f1": float(point),
            "interval": [lo, hi],
            "confidence": budget.confidence,
            "budget": budget.min_entity_f1,
            "below_budget": bool(point < budget.min_entity_f1),
            "alarm": bool(m >= MIN_AUDITED and hi < budget.min_entity_f1),
        }

    def checked(self) -> Heldout:
        """The audited texts with every node's output and gate score on them, as a held-out cache none of whose rows
        calibrate (all tune)."""
        c = self.circuit
        if not self.texts:
            raise BabybearError("the audit has no checked texts yet: answer some texts and call flush() first")
        costs = {n: float(c.node(n).cost_ or 0.0) for n in c.topology.order}
        return Heldout.build(list(self.texts), {n: list(p) for n, p in self.preds.items()}, costs, 0, c).rescore(c)

    def cached_run(self) -> CachedRun:
        """Every node's output and gate score on the audited texts: tuning data from the current traffic."""
        return self.checked().run

    def save(self, path: str | Path) -> Path:
        """Write the audited texts and every node's output as JSON (the held-out cache's format)."""
        path = Path(path)
        self.checked().save(path)
        return path


def load_run(path: str | Path, circuit: Circuit) -> CachedRun:
    """The CachedRun of an audit saved by :meth:`Audit.save`, scored by ``circuit``'s gates."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"audit file {path}: not found (Audit.save writes one)")
    try:
        return Heldout.load(path, circuit).run
    except ArtifactError as err:  # it speaks of the held-out cache, whose format an audit shares
        detail = f"cannot read it: {err.__cause__}" if err.__cause__ else str(err).removeprefix(f"{path}: ")
        raise ArtifactError(f"audit file {path}: {detail}") from err
