"""How a sentence moves through a circuit, and a simulator that replays it from cached outputs.

A sentence enters at the roots and leaves a node along every out-edge whose gate scores it below the edge's
threshold (:func:`goes_on`). A switched-off node (``enabled: false``) is not run: every sentence that reaches it
goes on along all its out-edges, and it is not among the nodes visited (:meth:`Topology.visited`). Its answer
merges the nodes it visited (:func:`merge`): for each label, the spans of the deepest visited node that covers
that label (a node with ``labels=None`` covers all). These three functions are the routing rule, written once:
live routing (:meth:`babybear.scheduler.Scheduler.route_steps`), the simulator (:class:`CachedRun`) and the
optimizer (which switches a node off by routing with it disabled) all call them, so for equal gate scores they
agree exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .metrics import calibration_report, f1, per_label_counts, span_counts
from .types import Prediction, Span

Edge = tuple[str, str]


def goes_on(scores: np.ndarray, threshold: float, source_disabled: bool = False, sure: np.ndarray | None = None) -> np.ndarray:
    """The routing rule for one edge: which of the units at its source go on along it, given its gate's ``scores``
    on them. All of them when the source is switched off; otherwise those scored below ``threshold``, and those
    the source (or the node its gate compares with) failed on (``sure`` False: their scores mean nothing)."""
    if source_disabled:
        return np.ones(len(scores), dtype=bool)
    on = scores < threshold
    return on if sure is None else on | ~sure


def resume_sources(covers: Mapping[Edge, float], node: str, ran: Mapping[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per unit, the node whose handed-on state ``node`` continues from, and the share of ``node``'s work it covers:
    among the nodes that ran on the unit (``ran``: masks) and cover ``node`` (``covers``: (producer, consumer) ->
    share), the one that covers most (None and 0 where none did). The unit costs ``node`` 1 - that share."""
    source, share = np.full(n, None, dtype=object), np.zeros(n)
    for (u, v), c in sorted(covers.items()):
        if v == node and u in ran:
            take = ran[u] & (c > share)
            source[take], share[take] = u, c
    return source, share


def merge(visited: Sequence[str], preds: Mapping[str, Prediction], labels: Mapping[str, frozenset[str] | None]) -> tuple[Span, ...]:
    """The answer from the nodes a sentence visited (``visited`` in topological order)."""
    spans: list[Span] = []
    covered: set[str] = set()
    for name in reversed(visited):
        node_labels = labels.get(name)
        if node_labels is None:
            spans += [s for s in preds[name].spans if s.label not in covered]
            break
        spans += [s for s in preds[name].spans if s.label in node_labels and s.label not in covered]
        covered |= node_labels
    return tuple(sorted(spans))


@dataclass
class Topology:
    """The parts of a circuit routing needs: node order, edges, label coverage, the mamabear."""

    order: list[str]
    edges: list[Edge]
    labels: dict[str, frozenset[str] | None]
    mamabear: str
    disabled: frozenset[str] = frozenset()
    agree_with: dict[Edge, str] = field(default_factory=dict)  # edge -> the earlier node its gate compares with

    def visited(self, reach: Mapping[str, np.ndarray], i: int) -> list[str]:
        """The nodes unit ``i`` visited (ran on it), in topological order."""
        return [name for name in self.order if reach[name][i] and name not in self.disabled]

    @property
    def roots(self) -> list[str]:
        targets = {t for _, t in self.edges}
        return [n for n in self.order if n not in targets]

    def ancestors_and_self(self, node: str) -> list[str]:
        seen = {node}
        for s, t in reversed(self.edges_in_order()):
            if t in seen:
                seen.add(s)
        return [n for n in self.order if n in seen]

    def edges_in_order(self) -> list[Edge]:
        rank = {n: i for i, n in enumerate(self.order)}
        return sorted(self.edges, key=lambda e: (rank[e[0]], rank[e[1]]))


def gate_evidence(preds: Sequence[Prediction], other: Sequence[Prediction] | None = None, name: str | None = None) -> list[dict[str, float]]:
    """What a gate sees of each prediction: its node's evidence, plus ``agrees_with_<name>`` (1.0 where the spans
    equal ``other``'s, the answers of the earlier node the edge's ``agree_with`` names) when there is one."""
    if other is None:
        return [p.evidence for p in preds]
    key = f"agrees_with_{name}"
    return [{**p.evidence, key: float(set(p.spans) == set(q.spans))} for p, q in zip(preds, other, strict=True)]


@dataclass
class CachedRun:
    """Every node's output and every gate's score on the same units, so any thresholds can be scored exactly.

    ``preds[node][i]`` is node's prediction on unit i; ``scores[edge][i]`` the edge gate's P(agree) from the
    source's evidence; ``reference`` is the mamabear's answer; ``costs`` seconds per token; ``tokens`` per unit;
    ``covers`` (node, later node) -> the share of the later node's work a state the first hands on covers (early
    exits: a unit that ran exit@k costs the mamabear 1 - k/L of its price, see :func:`resume_sources`).
    """

    topology: Topology
    preds: dict[str, list[Prediction]]
    scores: dict[Edge, np.ndarray]
    costs: dict[str, float]
    tokens: np.ndarray
    covers: dict[Edge, float] = field(default_factory=dict)
    _counts: dict[tuple[int, tuple[str, ...]], tuple[int, int, int, dict]] = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return len(self.tokens)

    @property
    def reference(self) -> list[Prediction]:
        return self.preds[self.topology.mamabear]

    def reach(self, thresholds: Mapping[Edge, float], rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Boolean mask per node: which units reach it under ``thresholds`` (optionally on a subset of rows)."""
        n = self.n if rows is None else len(rows)
        topo = self.topology
        reach = {name: np.zeros(n, dtype=bool) for name in topo.order}
        for r in topo.roots:
            reach[r][:] = True
        for s, t in topo.edges_in_order():
            sc = self.scores[(s, t)] if rows is None else self.scores[(s, t)][rows]
            reach[t] |= reach[s] & goes_on(sc, thresholds[(s, t)], s in topo.disabled)
        return reach

    def _unit_counts(self, i: int, visited: tuple[str, ...]) -> tuple[int, int, int, dict]:
        key = (i, visited)
        if key not in self._counts:
            answer = merge(visited, {v: self.preds[v][i] for v in visited}, self.topology.labels)
            ref = self.reference[i].spans
            self._counts[key] = (*span_counts(answer, ref), per_label_counts([answer], [ref]))
        return self._counts[key]

    def evaluate(self, thresholds: Mapping[Edge, float], rows: np.ndarray | None = None) -> dict:
        """Entity F1 vs the mamabear, per-label counts, mamabear calls and tokens avoided, the share of units each node
        answered (the last node they visited) and the expected cost of ``thresholds``."""
        rows = np.arange(self.n) if rows is None else np.asarray(rows)
        reach = self.reach(thresholds, rows)
        order = self.topology.order
        tp = fp = fn = 0
        per_label: dict[str, list[int]] = {}
        stopped = dict.fromkeys(order, 0)
        for j, i in enumerate(rows):
            visited = tuple(self.topology.visited(reach, j))
            stopped[visited[-1]] += 1
            a, b, c, pl = self._unit_counts(int(i), visited)
            tp, fp, fn = tp + a, fp + b, fn + c
            for label, counts in pl.items():
                acc = per_label.setdefault(label, [0, 0, 0])
                for k in range(3):
                    acc[k] += counts[k]
        tokens = self.tokens[rows]
        cost = self.cost_per_unit({name: reach[name] for name in order if name not in self.topology.disabled}) @ tokens
        return {
            "f1": f1(tp, fp, fn),
            "counts": (tp, fp, fn),
            "per_label": per_label,
            "mamabear_calls_avoided": 1.0 - float(reach[self.topology.mamabear].mean()) if len(rows) else 0.0,
            # the long sentences are the hard ones: the share of tokens the mamabear did not see
            "mamabear_tokens_avoided": 1.0 - float(tokens[reach[self.topology.mamabear]].sum() / max(tokens.sum(), 1)),
            "reach": {name: float(m.mean()) if len(rows) else 0.0 for name, m in reach.items()},
            "answered": {name: k / len(rows) if len(rows) else 0.0 for name, k in stopped.items()},
            "cost_per_token": float(cost / max(tokens.sum(), 1)),
        }

    def cost_per_unit(self, ran: Mapping[str, np.ndarray]) -> np.ndarray:
        """Each unit's price per token: the cost of every node that ran on it (``ran``: masks), less the share
        of a node's work a state handed on to it covered."""
        n = len(next(iter(ran.values()))) if ran else 0
        out = np.zeros(n)
        for name, mask in ran.items():
            _, share = resume_sources(self.covers, name, ran, n)
            out += self.costs.get(name, 0.0) * mask * (1.0 - share)
        return out

    def with_topology(self, topology: Topology) -> CachedRun:
        """The same cached outputs routed by ``topology`` (e.g. with other nodes switched off)."""
        return CachedRun(topology, self.preds, self.scores, self.costs, self.tokens, self.covers)

    def subset(self, rows: np.ndarray) -> CachedRun:
        """The same run restricted to ``rows``."""
        rows = np.asarray(rows)
        return CachedRun(
            self.topology,
            {k: [v[i] for i in rows] for k, v in self.preds.items()},
            {e: v[rows] for e, v in self.scores.items()},
            self.costs,
            self.tokens[rows],
            self.covers,
        )

    def calibration(self, edge: Edge) -> dict:
        """How well the edge gate's scores predict that its source's answer equals the mamabear's, on these rows."""
        exits = self.exit_answers(edge[0])
        agrees = [exits[i] == self.reference[i].spans for i in range(self.n)]
        return calibration_report(self.scores[edge], np.array(agrees))

    def exit_answers(self, node: str) -> list[tuple[Span, ...]]:
        """Each unit's answer if it stopped at ``node`` having visited every ancestor (gate training targets)."""
        visited = self.topology.ancestors_and_self(node)
        return [merge(visited, {v: self.preds[v][i] for v in visited}, self.topology.labels) for i in range(self.n)]
