"""The scheduler: how a circuit's nodes are fed, batched, overlapped and protected from each other's faults.

* Each node gets the units that reach it as micro-batches cut by a padded-token budget after sorting by
  length (length buckets), so a batch of short sentences is wide and a batch of long ones narrow.
* Nodes run in topological waves (nodes of a wave do not depend on each other). A node whose ``device`` is
  ``"gpu"`` runs on one worker thread, so the CPU babybears keep working meanwhile: within a wave, and across
  chunks of a stream (the GPU answers chunk k's survivors while the CPU nodes start on chunk k+1).
* Faults: an out-of-memory error halves the node's batch and retries; any other error is bisected down to the
  text that causes it. A text a babybear fails on goes on to the next nodes, as if the gates were unsure (a
  warning names node and text); one the mamabear fails on gets an empty answer carrying a :class:`NodeError`.
  The rest go on.
* Results come back in input order, and a stream of any length runs in flat memory (two chunks in flight).
* Nothing is computed twice: a node that hands on a resumable state (an early exit: the mamabear's first layers)
  keeps it for the texts it passes on, and a successor it covers (:meth:`Node.covers`) continues from it
  (:meth:`Node.finish`), from the deepest such state a text has (:func:`babybear.routing.resume_sources`).
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
import networkx as nx
import numpy as np

from .errors import BabybearError, NodeError, NotFittedError
from .node import Node
from .progress import track
from .routing import goes_on, merge, resume_sources
from .structure import Structure
from .text import n_tokens, split_text, stitch_spans
from .types import Answer, Prediction, Span

TOKEN_BUDGET = 32_768  # padded tokens (longest text x texts) per micro-batch
FIRST_CHUNK, MIN_CHUNK = 64, 16  # texts in a stream's first chunk, and in its smallest
_OOM_MESSAGES = ("out of memory", "failed to allocate memory", "cuda_error_out_of_memory")
log = logging.getLogger("babybear")


def micro_batches(lengths: Sequence[int], max_texts: int, max_tokens: int = TOKEN_BUDGET) -> list[list[int]]:
    """Indices into ``lengths`` grouped shortest first into batches of at most ``max_texts`` texts whose
    padded size (longest length x count) stays within ``max_tokens`` (a single longer text gets its own batch)."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        width = max(lengths[i], 1)
        if current and (len(current) >= max_texts or width * (len(current) + 1) > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def is_out_of_memory(err: BaseException) -> bool:
    """True for CUDA (torch) and onnxruntime allocation failures, and host MemoryError."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, MemoryError) or any(m in str(err).lower() for m in _OOM_MESSAGES)


def _release_gpu_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _check_not_one_text(texts: Iterable[str]) -> None:
    if isinstance(texts, str):
        raise BabybearError("expected a list (or other iterable) of texts, got one str: wrap it, e.g. circuit([text])")


def text_answer(
    text: str, bounds: Sequence[tuple[int, int, int, int]], units: Sequence[tuple[Sequence[Span], str, float | None]], rank: dict[str, int], text_id: str | None
) -> Answer:
    """One text's answer from its units' (spans, exit node, confidence), in the order of their ``bounds``: the node
    latest in topological order that answered a unit answers for the text, at the lowest confidence of its units
    there."""
    node = max((exit_ for _, exit_, _ in units), key=rank.__getitem__) if units else None
    scores = [c for _, exit_, c in units if exit_ == node and c is not None]
    spans = stitch_spans(bounds, [spans for spans, _, _ in units])
    return Answer(text, spans, node, text_id, min(scores) if scores else None)


@dataclass
class NodeRun:
    """One node's answers on some units: predictions in order, failures by position, and the seconds it took."""

    preds: list[Prediction]
    errors: dict[int, NodeError] = field(default_factory=dict)
    seconds: float = 0.0
    states: list[Any] | None = None  # per text, the state a covered successor continues from (None: none kept)


@dataclass
class Routed:
    """Routed units: each one's answer, the node it exited at, its confidence (the lowest gate score on that node's
    out-edges; None for a node without any), its error (if the mamabear failed on it: a unit a babybear fails on
    goes on along every out-edge, as if its gates were unsure), and per-node stats."""

    spans: list[tuple[Span, ...]]
    exits: list[str]
    confidences: list[float | None]
    errors: dict[int, NodeError]
    stats: dict[str, dict[str, float]]


Call = Callable[[list[str], list[int]], tuple[list[Prediction], list[Any] | None]]  # (texts, their rows) -> answers
Resume = list[tuple[str, Any] | None]  # per text: (the node whose state it continues from, that state), or None
Wave = dict[str, tuple[list[str], list[str], Resume | None, bool]]  # node -> (texts, ids, resume, keep its states)
RouteSteps = Generator[Wave, dict[str, NodeRun], Routed]


def _resume(covers: dict[tuple[str, str], float], held: dict[str, dict[int, Any]], name: str, ix: np.ndarray, n: int) -> Resume | None:
    """For the units ``ix`` that reach ``name``: the state each continues from (see :func:`resume_sources`), or
    None when none has one."""
    kept = {}
    for u, states in held.items():
        kept[u] = np.zeros(n, dtype=bool)
        kept[u][list(states)] = True
    source, _ = resume_sources(covers, name, kept, n)
    if not any(source[ix]):
        return None
    return [(source[i], held[source[i]][i]) if source[i] else None for i in ix]


@dataclass
class _Job:
    """A chunk in flight: its routing steps, and the wave it waits on (CPU results done, GPU ones pending)."""

    steps: RouteSteps
    finish: Callable[[Routed], list[Answer]] | None = None  # whole texts from routed units
    done: dict[str, NodeRun] = field(default_factory=dict)
    pending: dict[str, Future[NodeRun]] = field(default_factory=dict)
    result: Routed | None = None


class Scheduler:
    """Runs a circuit's nodes over many texts: micro-batching, CPU/GPU overlap, fault isolation, order kept.

    ``batch_size`` caps the texts per micro-batch, ``token_budget`` its padded tokens. Use it as a context
    manager (or call :meth:`close`) to stop the GPU worker thread.
    """

    def __init__(self, circuit: Structure, batch_size: int = 256, token_budget: int = TOKEN_BUDGET, progress: bool = False) -> None:
        if batch_size < 1 or token_budget < 1:
            raise BabybearError(f"batch_size and token_budget must be >= 1, got {batch_size} and {token_budget}")
        self.circuit = circuit
        self.batch_size = batch_size
        self.token_budget = token_budget
        self.progress = progress
        self._caps: dict[str, int] = {}  # per node: the largest batch it may get since it ran out of memory
        self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="babybear-gpu")

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._gpu.shutdown(wait=True)

    # -- one node ----------------------------------------------------------------------------------------------
    def predict(self, name: str, texts: Sequence[str], ids: Sequence[str] | None = None, resume: Resume | None = None, keep_states: bool = False) -> NodeRun:
        """Node ``name``'s answers on ``texts`` in order; a text it fails on gets ``Prediction()`` and an error.
        ``resume`` says, per text, from which earlier node's state to continue (see :meth:`Node.finish`);
        ``keep_states`` keeps the node's own states for its covered successors (:meth:`Node.predict_with_state`)."""
        ids = [str(i) for i in range(len(texts))] if ids is None else ids
        node = self.circuit.node(name)
        start = time.perf_counter()
        run = NodeRun([Prediction() for _ in texts], states=[None] * len(texts) if keep_states else None)
        groups: dict[str | None, list[int]] = {}
        for i in range(len(texts)):
            groups.setdefault(resume[i][0] if resume and resume[i] else None, []).append(i)
        for source, members in groups.items():
            call = self._caller(node, source, resume, keep_states)
            lengths = [n_tokens(texts[i]) for i in members]
            batches = [[members[j] for j in b] for b in micro_batches(lengths, self.batch_size, self.token_budget)]
            show = self.progress and len(batches) > 1
            for batch in track(batches, len(members), f"{name:>12}", show, size=len):
                self._guarded(name, call, batch, texts, ids, run)
        run.seconds = time.perf_counter() - start
        return run

    def _caller(self, node: Node, source: str | None, resume: Resume | None, keep_states: bool) -> Call:
        """How ``node`` answers texts: from the states ``source`` handed on, or afresh (keeping its own states)."""
        if source is not None:
            producer = self.circuit.node(source)
            return lambda texts, rows: producer.finish(node, texts, [resume[i][1] for i in rows])  # type: ignore[index]
        if keep_states:
            return lambda texts, rows: node.predict_with_state(texts)
        return lambda texts, rows: (node.predict_batch(texts), None)

    def _guarded(self, name: str, call: Call, batch: list[int], texts: Sequence[str], ids: Sequence[str], run: NodeRun) -> None:
        """Answer ``batch`` into ``run`` with ``call``: halve on out-of-memory, bisect other failures down to the
        culprit."""
        cap = self._caps.get(name, len(batch))
        if len(batch) > cap:
            for k in range(0, len(batch), cap):
                self._guarded(name, call, batch[k : k + cap], texts, ids, run)
            return
        try:
            preds, states = call([texts[i] for i in batch], batch)
        except BabybearError:
            raise  # a configuration or contract problem, not a bad text
        except Exception as err:  # noqa: BLE001 - any failure of a model on its input is isolated
            if len(batch) == 1:
                run.errors[batch[0]] = NodeError(name, ids[batch[0]], err)
                log.warning("%s", run.errors[batch[0]])
                return
            if is_out_of_memory(err):
                _release_gpu_memory()
                self._caps[name] = len(batch) // 2
                log.warning("node '%s' ran out of memory on %d texts; retrying in batches of %d", name, len(batch), len(batch) // 2)
            half = len(batch) // 2
            self._guarded(name, call, batch[:half], texts, ids, run)
            self._guarded(name, call, batch[half:], texts, ids, run)
            return
        if len(preds) != len(batch):
            raise BabybearError(f"node '{name}' returned {len(preds)} predictions for {len(batch)} texts")
        for k, i in enumerate(batch):
            run.preds[i] = preds[k]
            if run.states is not None and states is not None:
                run.states[i] = states[k]

    # -- routing -----------------------------------------------------------------------------------------------
    def route_steps(self, units: Sequence[str], ids: Sequence[str]) -> RouteSteps:
        """Route ``units`` one topological wave at a time: yields the work of a wave, receives its results."""
        circuit = self.circuit
        topo = circuit.topology
        thresholds = circuit.thresholds
        if any(v is None for v in thresholds.values()):
            raise NotFittedError("the circuit has edges without thresholds: fit it (Circuit.fit) or load a fitted one")
        n = len(units)
        reach = {name: np.zeros(n, dtype=bool) for name in topo.order}
        for r in topo.roots:
            reach[r][:] = True
        failed = np.zeros(n, dtype=bool)  # the mamabear failed on it: no answer
        broken = {name: np.zeros(n, dtype=bool) for name in topo.order}  # a babybear failed on it: passed on
        preds: dict[str, dict[int, Prediction]] = {name: {} for name in topo.order}
        errors: dict[int, NodeError] = {}
        lowest = {name: np.ones(n) for name in topo.order}  # lowest out-edge gate score per unit
        stats: dict[str, dict[str, float]] = {name: {"texts": 0, "seconds": 0.0} for name in topo.order}
        rank = {name: k for k, name in enumerate(topo.order)}
        covers = circuit.covers()
        keeps = {u for u, _ in covers}  # nodes whose states a successor continues from
        held: dict[str, dict[int, Any]] = {u: {} for u in keeps}  # their states, for the units they handed on
        for wave in nx.topological_generations(circuit.graph):
            wave = sorted(wave, key=rank.__getitem__)
            idx = {name: np.flatnonzero(reach[name] & ~failed) for name in wave}
            for name in topo.disabled.intersection(wave):  # switched off: not run, and not scored
                for succ in circuit.successors(name):
                    reach[succ][idx[name][goes_on(np.ones(len(idx[name])), 1.0, source_disabled=True)]] = True
            work = {}
            for name, ix in idx.items():
                if not len(ix) or name in topo.disabled:
                    continue
                resume = _resume(covers, held, name, ix, n) if any(v == name for _, v in covers) else None
                work[name] = ([units[i] for i in ix], [ids[i] for i in ix], resume, name in keeps)
            results = (yield work) if work else {}
            for name, run in results.items():
                ix = idx[name]
                stats[name] = {"texts": len(ix), "seconds": run.seconds}
                preds[name] = dict(zip(ix.tolist(), run.preds))
                for i, state in zip(ix.tolist(), run.states or []):
                    if state is not None:
                        held[name][i] = state
                ok = np.ones(len(ix), dtype=bool)
                for j, err in run.errors.items():
                    ok[j] = False
                    if name == topo.mamabear:
                        errors[int(ix[j])] = err
                        failed[ix[j]] = True
                    else:
                        broken[name][ix[j]] = True
                    held.get(name, {}).pop(int(ix[j]), None)
                for succ in circuit.successors(name):
                    edge = circuit.edge(name, succ)
                    other = edge.agree_with
                    # a unit this node, or the node its gate compares with, failed on is not sure: it is not scored
                    sure = ok & ~broken[other][ix] if other else ok
                    good = ix[sure]
                    scores = np.ones(len(ix))
                    if len(good):
                        here = {v: [preds[v][i] for i in good.tolist()] for v in (name, other) if v is not None}
                        scores[sure] = edge.gate.score(circuit.gate_evidence(name, succ, here))
                        lowest[name][good] = np.minimum(lowest[name][good], scores[sure])
                    reach[succ][ix[goes_on(scores, edge.threshold, sure=sure)]] = True
                if name in held:  # a state is kept only for the units handed on
                    on = np.logical_or.reduce([reach[succ] for succ in circuit.successors(name)] + [np.zeros(n, dtype=bool)])
                    held[name] = {i: state for i, state in held[name].items() if on[i]}
        spans, exits, confidences = [], [], []
        for i in range(n):
            if i in errors:
                spans.append(())
                exits.append(errors[i].node)
                confidences.append(None)
                continue
            visited = [v for v in topo.visited(reach, i) if not broken[v][i]]
            spans.append(merge(visited, {v: preds[v][i] for v in visited}, topo.labels))
            exits.append(visited[-1])
            confidences.append(float(lowest[visited[-1]][i]) if circuit.graph.out_degree(visited[-1]) else None)
        return Routed(spans, exits, confidences, errors, stats)

    def _advance(self, job: _Job) -> None:
        """Drive ``job`` until it waits on the GPU worker or is done: CPU nodes run here, GPU nodes are queued."""
        while not job.pending and job.result is None:
            try:
                work = job.steps.send(job.done or None)  # None starts it; then the last wave's results
            except StopIteration as stop:
                job.result = stop.value
                return
            job.done = {}
            # progress bars draw one at a time, so with them on the GPU nodes run here too (no overlap)
            gpu = [] if self.progress else [name for name in work if self.circuit.node(name).device == "gpu"]
            job.pending = {name: self._gpu.submit(self.predict, name, *work[name]) for name in gpu}
            for name in work:
                if name not in job.pending:
                    job.done[name] = self.predict(name, *work[name])

    def _complete(self, job: _Job) -> Routed:
        """Wait for ``job``'s GPU work, wave after wave, and return its routed units."""
        while job.result is None:
            job.done.update({name: future.result() for name, future in job.pending.items()})
            job.pending = {}
            self._advance(job)
        return job.result

    def route(self, units: Sequence[str], ids: Sequence[str] | None = None) -> Routed:
        """Route ``units`` through the circuit (ids name them in errors; their positions by default)."""
        _check_not_one_text(units)
        ids = [str(i) for i in range(len(units))] if ids is None else ids
        job = _Job(self.route_steps(units, ids))
        self._advance(job)
        return self._complete(job)

    # -- texts -------------------------------------------------------------------------------------------------
    def _job(self, texts: Sequence[str], ids: Sequence[str] | None, first: int = 0) -> _Job:
        """A job answering whole ``texts``: long ones are split into units and their spans stitched back. Without
        ``ids``, errors name a text by its position in the whole input (``first`` is the first text's)."""
        _check_not_one_text(texts)
        if ids is not None and len(ids) != len(texts):
            raise BabybearError(f"got {len(ids)} ids for {len(texts)} texts")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise BabybearError(f"text {ids[i] if ids else i!r} is {type(t).__name__}, not str")
        names = [str(first + i) for i in range(len(texts))] if ids is None else [str(i) for i in ids]
        units, unit_ids, bounds = [], [], []
        per_text: list[list[int]] = []
        for i, text in enumerate(texts):
            text_bounds = split_text(text)
            bounds.append(text_bounds)
            per_text.append(list(range(len(units), len(units) + len(text_bounds))))
            units += [text[s:e] for s, e, _, _ in text_bounds]
            unit_ids += [names[i]] * len(text_bounds)
        rank = {n: k for k, n in enumerate(self.circuit.topology.order)}

        def finish(routed: Routed) -> list[Answer]:
            answers = []
            for i, text in enumerate(texts):
                us = per_text[i]
                error = next((routed.errors[u] for u in us if u in routed.errors), None)
                text_id = ids[i] if ids is not None else None
                if error:
                    answers.append(Answer(text, (), error.node, text_id, error=str(error)))
                    continue
                units = [(routed.spans[u], routed.exits[u], routed.confidences[u]) for u in us]
                answers.append(text_answer(text, bounds[i], units, rank, text_id))
            return answers

        return _Job(self.route_steps(units, unit_ids), finish=finish)

    def run(self, texts: Sequence[str], ids: Sequence[str] | None = None) -> tuple[list[Answer], dict[str, dict[str, float]]]:
        """Answer every text in order; also returns per-node stats (texts reached, seconds)."""
        job = self._job(texts, ids)
        self._advance(job)
        routed = self._complete(job)
        return job.finish(routed), routed.stats  # type: ignore[misc]

    def stream(self, texts: Iterable[str], ids: Iterable[str] | None = None, chunk: int = 10_000, latency: float = 1.0) -> Iterator[Answer]:
        """Answer an iterable of any length in order, a chunk at a time, at most two chunks in flight: while the GPU
        nodes work on one chunk, the CPU nodes work on the next. Chunks start at 64 texts and then hold about
        ``latency`` seconds of work (at most doubling from one to the next, at most ``chunk`` texts), so the first
        answers come out at once and the rest steadily, in flat memory."""
        if chunk < 1 or latency <= 0:
            raise BabybearError(f"chunk must be >= 1 and latency > 0, got {chunk} and {latency}")
        _check_not_one_text(texts)
        texts_it = iter(texts)
        ids_it = iter(ids) if ids is not None else None
        in_flight: deque[_Job] = deque()
        first, size, clock = 0, min(chunk, FIRST_CHUNK), time.perf_counter()
        while chunk_texts := list(itertools.islice(texts_it, size)):
            chunk_ids = list(itertools.islice(ids_it, len(chunk_texts))) if ids_it is not None else None
            job = self._job(chunk_texts, chunk_ids, first)
            first += len(chunk_texts)
            self._advance(job)
            in_flight.append(job)
            if len(in_flight) == 2:
                answers = self._answers(in_flight.popleft())
                now = time.perf_counter()
                rate = len(answers) / max(now - clock, 1e-6)  # texts per second, over the last chunk's turn
                size, clock = max(min(chunk, MIN_CHUNK), min(chunk, 2 * size, int(rate * latency))), now
                yield from answers
        while in_flight:
            yield from self._answers(in_flight.popleft())

    def _answers(self, job: _Job) -> list[Answer]:
        return job.finish(self._complete(job))  # type: ignore[misc]
