"""Warm-up: the mamabear labels a stream of unlabeled text, the babybears learn from its answers, and the gates
learn from every node's answers on held-out texts (kept as the circuit's :class:`~babybear.heldout.Heldout`)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import BabybearError, NotFittedError
from .heldout import Heldout
from .metrics import entity_f1
from .tuning.optimizer import check_budget
from .scheduler import NodeRun, Scheduler
from .text import n_tokens, units_of
from .types import Prediction

if TYPE_CHECKING:
    from .circuit import Circuit

log = logging.getLogger("babybear")
MAX_HELDOUT = 3000  # texts each for calibration and tuning, by default; the rest of a large stream trains


def fit(
    circuit: Circuit,
    texts: Sequence[str],
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    max_heldout: int | None = MAX_HELDOUT,
    block: int = 64,
    batch_size: int = 256,
    progress: bool = True,
) -> None:
    """Warm up on unlabeled ``texts``: the mamabear labels them, babybears learn, gates are fitted (then
    :meth:`Circuit.fit` tunes the thresholds).

    The stream is deduplicated and split into train (babybears learn), calibration (gates learn) and tuning
    (thresholds are set for the budget) parts. The split moves blocks of ``block`` consecutive texts, so the
    sentences of one document (which arrive together) stay in one part and the held-out parts look like new
    documents, not like the training ones; ``block=1`` splits text by text. ``max_heldout`` caps the calibration
    and the tuning parts at that many texts each, and the rest of a large stream goes to the babybears: a few
    thousand rows fit the gates and bound the F1, while the babybears keep learning from more text (on BBC with
    3,000 + 3,000 held-out texts, a CRF trained on 24,861 sentences avoided 44.2% of md's calls at 0.99 against
    40.4% for one trained on half of them: ``benchmarks/warmup_text.py``). None: the fractions alone.
    """
    circuit.validate()
    if len(fractions) != 3 or min(fractions) < 0 or fractions[1] <= 0 or fractions[2] <= 0 or sum(fractions) > 1 + 1e-9:
        raise BabybearError(f"fractions (train, calibration, tuning) must be >= 0 with calibration and tuning > 0 and a sum <= 1, got {fractions}")
    if max_heldout is not None and max_heldout < 10:
        raise BabybearError(f"max_heldout must be at least 10 texts (or None), got {max_heldout}")
    units = list(dict.fromkeys(u for t in texts for u in units_of(t)))
    if len(units) < 20:
        raise BabybearError(f"warm-up needs at least 20 distinct non-blank texts, got {len(units)}")
    blocks = [units[i : i + block] for i in range(0, len(units), max(block, 1))]
    random.Random(seed).shuffle(blocks)
    units = [u for b in blocks for u in b]
    topo = circuit.topology
    circuit.warm_up()
    tokens = np.array([n_tokens(u) for u in units])
    asked = _taps(circuit)
    labelled, kept = _label(circuit, units, tokens, split_sizes(len(units), fractions, max_heldout)[0] if asked else 0, asked, batch_size, progress)
    keep = [i for i in range(len(units)) if i not in labelled.errors]  # no reference, nothing to learn from
    if labelled.errors:
        log.warning("warm-up: the mamabear failed on %d of %d texts; they are left out", len(labelled.errors), len(units))
    if len(keep) < 20:
        raise BabybearError(f"warm-up needs at least 20 texts the mamabear can answer, got {len(keep)} of {len(units)}")
    units, tokens, ref = [units[i] for i in keep], tokens[keep], [labelled.preds[i] for i in keep]
    a, n_cal = split_sizes(len(units), fractions, max_heldout)
    b = a + n_cal
    train, calib, tune = units[:a], units[a:b], units[b:]
    check_budget(circuit.budget, {s.label for p in ref[b:] for s in p.spans})  # before the babybears train
    kept = [kept[i] for i in keep[:a]]
    for name in topo.order:
        if name in asked.get(topo.mamabear, {}):
            circuit.node(name).fit(train, ref[:a], kept=[k.get(name) if k else None for k in kept])
        elif name != topo.mamabear:
            circuit.node(name).fit(train, ref[:a])
    del kept  # the kept states are the warm-up's largest object
    held, held_ref, held_tokens = calib + tune, ref[a:], tokens[a:]
    preds: dict[str, list[Prediction]] = {}
    failed: set[int] = set()
    with Scheduler(circuit, batch_size, progress=progress) as scheduler:
        for name in topo.order:
            if name == topo.mamabear:
                continue
            node = circuit.node(name)
            node.warm_up()  # untimed: loading, ONNX export, the first batch's kernel set-up
            scheduler.predict(name, held[:8])
            start = time.perf_counter()
            run = scheduler.predict(name, held)
            node.cost_ = (time.perf_counter() - start) / max(int(held_tokens.sum()), 1)
            preds[name], failed = run.preds, failed | set(run.errors)
    if failed:  # at run time such units go on to the next node; the cache keeps only answers gates can learn from
        log.warning("warm-up: babybears failed on %d of %d held-out texts; they are left out of calibration and tuning", len(failed), len(held))
        keep = [i for i in range(len(held)) if i not in failed]
        held, held_ref, held_tokens = [held[i] for i in keep], [held_ref[i] for i in keep], held_tokens[keep]
        preds = {n: [p[i] for i in keep] for n, p in preds.items()}
        n_cal = sum(i < len(calib) for i in keep)
        calib, tune = held[:n_cal], held[n_cal:]
    preds[topo.mamabear] = held_ref
    costs = {name: float(circuit.node(name).cost_ or 0.0) for name in topo.order}
    circuit.heldout_ = Heldout.build(held, preds, costs, len(calib), circuit)
    fit_gates(circuit)
    circuit.report_ = {
        "warm_up": {
            "texts": len(texts), "units": len(units), "mamabear_failures": len(labelled.errors),
            "babybear_failures": len(failed),
            "train": len(train), "calibration": len(calib), "tuning": len(tune), "seed": seed,
        },
        "babybear_f1_alone": {
            n: entity_f1([p.spans for p in preds[n][len(calib):]], [p.spans for p in held_ref[len(calib):]]) for n in topo.order if n != topo.mamabear
        },
    }


def _taps(circuit: Circuit) -> dict[str, dict[str, Any]]:
    """What the nodes ask to keep from the mamabear's pass (:meth:`Node.taps`): {mamabear: {node: request}}. Only
    the mamabear's pass runs before the babybears learn, so a tap on another node is an error."""
    mamabear, asked = circuit.topology.mamabear, {}
    for name in circuit.topology.order:
        for producer, request in circuit.node(name).taps().items():
            if producer != mamabear:
                raise BabybearError(f"nodes.{name}: asks to learn from {producer!r}'s pass, but the warm-up runs only the mamabear's ({mamabear!r}) before the babybears learn")
            asked.setdefault(producer, {})[name] = request
    return asked


def split_sizes(n: int, fractions: tuple[float, float, float], max_heldout: int | None) -> tuple[int, int]:
    """How many of ``n`` texts train the babybears and how many calibrate the gates; the rest tune (see :func:`fit`)."""
    train, calib = int(n * fractions[0]), int(n * fractions[1])
    if max_heldout is None:
        return train, calib
    calib = min(calib, max_heldout)
    tune = min(n - train - calib, max_heldout)
    return n - calib - tune, calib


def _label(
    circuit: Circuit, units: list[str], tokens: np.ndarray, n_kept: int, asked: dict[str, dict[str, Any]], batch_size: int, progress: bool
) -> tuple[NodeRun, list[dict[str, Any] | None]]:
    """The mamabear's answers on ``units`` in one pass, keeping what ``asked`` requests (:meth:`Node.keep`) on the
    first ``n_kept`` units (where the training share lies) and, per unit, what was kept there (None beyond them).
    The mamabear's cost per token is timed on the plain rest of the pass (on all of it when nothing is kept)."""
    name = circuit.topology.mamabear
    mama = circuit.node(name)
    with Scheduler(circuit, batch_size, progress=progress) as scheduler:
        first = NodeRun([], states=[])
        if n_kept:
            mama.keep(asked.get(name, {}))
            try:
                first = scheduler.predict(name, units[:n_kept], keep_states=True)
            finally:
                mama.keep({})
        start = time.perf_counter()
        rest = scheduler.predict(name, units[n_kept:])
        seconds = time.perf_counter() - start
    timed = tokens[n_kept:] if n_kept < len(units) else tokens
    mama.cost_ = (seconds if n_kept < len(units) else first.seconds) / max(int(timed.sum()), 1)
    errors = {**first.errors, **{i + n_kept: e for i, e in rest.errors.items()}}
    states = [*(first.states or []), *[None] * (len(units) - n_kept)]
    return NodeRun(first.preds + rest.preds, errors, first.seconds + rest.seconds), states


def fit_gates(circuit: Circuit) -> None:
    """Fit each edge's gate on the calibration part of the held-out cache and score the whole cache with it.

    ``fit`` does this; call it again, without running a model, after changing a gate or an edge's
    ``agree_with`` on a fitted circuit, then :meth:`tune`."""
    if circuit.heldout_ is None:
        raise NotFittedError("no held-out cache to fit gates on: fit the circuit first (or load a folder saved by a fit)")
    run, n_cal = circuit.heldout_.run, circuit.heldout_.n_calibration
    for s, t in circuit.topology.edges_in_order():
        gate = circuit.edge(s, t).gate
        exits = run.exit_answers(s)
        agrees = [exits[i] == run.reference[i].spans for i in range(n_cal)]
        evidence = circuit.gate_evidence(s, t, run.preds)
        gate.fit(evidence[:n_cal], agrees)
        run.scores[(s, t)] = gate.score(evidence)
