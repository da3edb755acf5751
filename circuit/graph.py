"""The Circuit: a networkx DAG of nodes whose edges carry calibrated gates and thresholds.

Three doors open onto it: the Python builder (``Circuit().add(...).connect(...)``), YAML
(``Circuit.from_yaml``), and the spaCy component / CLI, which load a fitted circuit folder.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import yaml
from filelock import FileLock, Timeout
from pydantic import ValidationError

from . import registry
from .errors import ArtifactError, BabybearError, CircuitValidationError, NotFittedError, Problem
from .metrics import entity_f1, seqeval_f1
from .node import Gate, Node
from .routing import CachedRun, Edge, Topology, gate_evidence
from .optimizer import Method, check_budget, optimize
from .scheduler import Routed, Scheduler
from .schema import Budget, CircuitSpec, budget_problems, load_spec, name_problem, pydantic_problems, validate
from .text import n_tokens, pieces, split_text, stitch_spans
from .types import Answer, Prediction, Span


log = logging.getLogger("babybear")


class Circuit:
    """A DAG of babybears in front of one mamabear. Builder methods return ``self``."""

    def __init__(self, name: str = "circuit", budget: Budget | dict | None = None) -> None:
        self.name = name
        self.budget = budget if isinstance(budget, Budget) else Budget(**(budget or {}))
        self.graph = nx.DiGraph()
        self.report_: dict[str, Any] = {}
        self.cache_: CachedRun | None = None  # every node's output on the held-out warm-up texts
        self.n_calibration_ = 0  # the cache's first rows fit the gates; the rest set the thresholds
        self.heldout_texts_: list[str] = []

    # -- building ----------------------------------------------------------------------------------------------
    def add(self, name: str, node: Node, labels: Iterable[str] | None = None, enabled: bool = True) -> Circuit:
        """Add ``node`` under ``name``; ``labels`` limits the labels it answers for (all by default); a node that
        is not ``enabled`` is not run and passes every sentence on (tuning switches off nodes that do not pay)."""
        if name in self.graph:
            raise BabybearError(f"node '{name}' already exists; nodes: {', '.join(self.graph)}")
        self.graph.add_node(name, node=node, labels=frozenset(labels) if labels is not None else None, enabled=enabled)
        return self

    def connect(
        self, source: str, target: str, gate: Gate | None = None, threshold: float | None = None, agree_with: str | None = None
    ) -> Circuit:
        """Add the edge ``source -> target`` guarded by ``gate`` (a CalibratedGate by default). With ``agree_with``
        (an earlier node every sentence reaching ``source`` has passed), the gate also sees whether ``source``'s
        spans equal that node's: two babybears agreeing is evidence neither sees alone."""
        for end in (source, target):
            if end not in self.graph:
                raise BabybearError(f"no node named '{end}'; nodes: {', '.join(self.graph)}")
        if gate is None:
            gate = registry.gates.get("babybear.CalibratedGate.v1")()
        self.graph.add_edge(source, target, gate=gate, threshold=threshold, agree_with=agree_with)
        return self

    # -- description -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The circuit as the YAML describes it (types, params, labels, edges, thresholds); no learned state."""
        nodes = {}
        for name, data in self.graph.nodes(data=True):
            spec: dict[str, Any] = {"type": registry.nodes.name_of(type(data["node"]))}
            params = data["node"].params.model_dump(exclude_defaults=True)
            if params:
                spec["params"] = params
            if data["labels"] is not None:
                spec["labels"] = sorted(data["labels"])
            if not data["enabled"]:
                spec["enabled"] = False
            nodes[name] = spec
        edges = []
        for s, t, data in self.graph.edges(data=True):
            gate: dict[str, Any] = {"type": registry.gates.name_of(type(data["gate"]))}
            gparams = data["gate"].params.model_dump(exclude_defaults=True)
            if gparams:
                gate["params"] = gparams
            edge: dict[str, Any] = {"source": s, "target": t, "gate": gate}
            if data["threshold"] is not None:
                edge["threshold"] = float(data["threshold"])
            if data["agree_with"] is not None:
                edge["agree_with"] = data["agree_with"]
            edges.append(edge)
        return {"version": 1, "name": self.name, "budget": self.budget.model_dump(exclude_defaults=True), "nodes": nodes, "edges": edges}

    def to_yaml(self, path: str | Path | None = None) -> str:
        """:meth:`to_dict` as YAML, also written to ``path`` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_spec(cls, spec: CircuitSpec) -> Circuit:
        """Build unfitted nodes and gates from a validated spec."""
        circuit = cls(spec.name, spec.budget)
        for name, n in spec.nodes.items():
            circuit.add(name, registry.nodes.get(n.type)(**n.params), n.labels, n.enabled)
        for e in spec.edges:
            circuit.connect(e.source, e.target, registry.gates.get(e.gate.type)(**e.gate.params), e.threshold, e.agree_with)
        return circuit

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Circuit:
        """Validate a dict shaped like the YAML (every problem at once) and build the circuit."""
        return cls.from_spec(load_spec(data))

    @classmethod
    def from_yaml(cls, source: str | Path) -> Circuit:
        """Read a circuit from a YAML file path or a YAML string; every problem is reported at once."""
        return cls.from_spec(load_spec(source))

    def validate(self) -> Circuit:
        """Raise :class:`CircuitValidationError` with every problem of the circuit as built; returns self."""
        spec = CircuitSpec.model_validate(self.to_dict())
        problems = validate(spec)
        if problems:
            raise CircuitValidationError(problems)
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Circuit) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Circuit({self.name!r}, nodes={list(self.graph)}, edges={list(self.graph.edges)})"

    # -- structure ---------------------------------------------------------------------------------------------
    def node(self, name: str) -> Node:
        """The node named ``name``."""
        return self.graph.nodes[name]["node"]

    @property
    def mamabear(self) -> str:
        """The name of the single mamabear node."""
        names = [n for n, d in self.graph.nodes(data=True) if d["node"].role == "mamabear"]
        if len(names) != 1:
            raise BabybearError(f"a circuit needs exactly one mamabear node, found {len(names)}")
        return names[0]

    @property
    def topology(self) -> Topology:
        """What routing needs: node order, edges, labels, switched-off nodes, agreements."""
        order = list(nx.lexicographical_topological_sort(self.graph))
        labels = {n: self.graph.nodes[n]["labels"] for n in order}
        disabled = frozenset(n for n in order if not self.graph.nodes[n]["enabled"])
        agree_with = {(s, t): a for s, t, a in self.graph.edges(data="agree_with") if a is not None}
        return Topology(order, list(self.graph.edges), labels, self.mamabear, disabled, agree_with)

    @property
    def thresholds(self) -> dict[Edge, float]:
        """Each edge's threshold: a sentence goes on along an edge when the gate scores it below it."""
        return {(s, t): d["threshold"] for s, t, d in self.graph.edges(data=True)}

    def set_thresholds(self, thresholds: dict[Edge, float]) -> Circuit:
        """Set some edges' thresholds by hand (each in [0, 1]; all checked before any is set); returns self."""
        for (s, t), value in thresholds.items():
            if not self.graph.has_edge(s, t):
                raise BabybearError(f"no edge {s} -> {t}; edges: {', '.join(f'{a}->{b}' for a, b in self.graph.edges)}")
            if not 0 <= float(value) <= 1:
                raise CircuitValidationError([Problem(f"{s}->{t}.threshold", f"must be in [0, 1], got {value}")])
        for edge, value in thresholds.items():
            self.graph.edges[edge]["threshold"] = float(value)
        return self

    def gate_evidence(self, source: str, target: str, preds: Mapping[str, Sequence[Prediction]]) -> list[dict[str, float]]:
        """What the gate on ``source -> target`` sees of ``preds[source]`` (node -> predictions on the same units),
        with the agreement feature where the edge has ``agree_with``."""
        other = self.graph.edges[source, target]["agree_with"]
        return gate_evidence(preds[source], preds[other] if other else None, other)

    def get_params(self) -> dict[str, Any]:
        """scikit-learn style flat params: ``"crf__c1"`` for nodes, ``"crf->mamabear__threshold"`` and
        ``"student->mamabear__agree_with"`` for edges."""
        out: dict[str, Any] = {}
        for name in self.graph:
            out.update({f"{name}__{k}": v for k, v in self.node(name).get_params().items()})
        for s, t, d in self.graph.edges(data=True):
            out.update({f"{s}->{t}__threshold": d["threshold"], f"{s}->{t}__agree_with": d["agree_with"]})
        return out

    def set_params(self, **params: Any) -> Circuit:
        """Set params by their :meth:`get_params` names. A node whose params change is rebuilt from them, fresh
        and unfitted (as scikit-learn's ``clone``): what a node builds from its params, like compiled rules or
        a CRF's features, must not disagree with them. Edge thresholds and ``agree_with`` keep the fit."""
        node_changes: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            target, _, attr = key.partition("__")
            if "->" in target and attr in ("threshold", "agree_with"):
                s, _, t = target.partition("->")
                if not self.graph.has_edge(s, t):
                    raise BabybearError(f"{key}: no edge {s} -> {t}; edges: {', '.join(f'{a}->{b}' for a, b in self.graph.edges)}")
                if attr == "threshold":
                    self.set_thresholds({(s, t): value})
                    continue
                before = self.graph.edges[s, t]["agree_with"]
                self.graph.edges[s, t]["agree_with"] = value
                try:
                    self.validate()
                except CircuitValidationError:
                    self.graph.edges[s, t]["agree_with"] = before
                    raise
            elif target in self.graph:
                node_changes.setdefault(target, {})[attr] = value
            else:
                raise BabybearError(f"{key}: unknown parameter; use NODE__PARAM, SOURCE->TARGET__threshold or SOURCE->TARGET__agree_with")
        for name, changes in node_changes.items():
            node = self.node(name)
            where = ("nodes", name, "params")
            try:
                self.graph.nodes[name]["node"] = type(node)(**{**node.get_params(), **changes})
            except ValidationError as err:
                raise CircuitValidationError(pydantic_problems(err, where, {where: list(node.Params.model_fields)})) from err
        return self

    def warm_up(self) -> Circuit:
        """Load every node's weights (idempotent); returns self."""
        for name in self.graph:
            self.node(name).warm_up()
        return self

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
        nodes (see :class:`circuit.scheduler.Scheduler`)."""
        answers, _ = self._run(texts, ids, batch_size, progress)
        return answers

    def stream(self, texts: Iterable[str], ids: Iterable[str] | None = None, chunk: int = 10_000, batch_size: int = 256) -> Iterator[Answer]:
        """Answer an iterable of any length in order and in flat memory, ``chunk`` texts at a time; GPU nodes
        work on one chunk while the CPU nodes start on the next."""
        self.warm_up()
        with Scheduler(self, batch_size) as scheduler:
            yield from scheduler.stream(texts, ids, chunk)

    def _run(self, texts: Sequence[str], ids: Sequence[str] | None, batch_size: int, progress: bool) -> tuple[list[Answer], dict]:
        self.warm_up()
        with Scheduler(self, batch_size, progress=progress) as scheduler:
            return scheduler.run(texts, ids)

    # -- warm-up -----------------------------------------------------------------------------------------------
    def fit(
        self,
        texts: Sequence[str],
        *,
        seed: int = 0,
        fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
        block: int = 64,
        batch_size: int = 256,
        progress: bool = True,
    ) -> Circuit:
        """Warm up on unlabeled ``texts``: the mamabear labels them, babybears learn, gates and thresholds are fitted.

        The stream is deduplicated and split into train (babybears learn), calibration (gates learn) and tuning
        (thresholds are set for the budget) parts. The split moves blocks of ``block`` consecutive texts, so the
        sentences of one document (which arrive together) stay in one part and the held-out parts look like new
        documents, not like the training ones; ``block=1`` splits text by text.
        """
        self.validate()
        if len(fractions) != 3 or min(fractions) < 0 or fractions[1] <= 0 or fractions[2] <= 0 or sum(fractions) > 1 + 1e-9:
            raise BabybearError(f"fractions (train, calibration, tuning) must be >= 0 with calibration and tuning > 0 and a sum <= 1, got {fractions}")
        units = list(dict.fromkeys(u for t in texts for u in pieces(t)))
        if len(units) < 20:
            raise BabybearError(f"warm-up needs at least 20 distinct non-blank texts, got {len(units)}")
        blocks = [units[i : i + block] for i in range(0, len(units), max(block, 1))]
        random.Random(seed).shuffle(blocks)
        units = [u for b in blocks for u in b]
        topo = self.topology
        self.warm_up()
        mama = self.node(topo.mamabear)
        tokens = np.array([n_tokens(u) for u in units])
        start = time.perf_counter()
        with Scheduler(self, batch_size, progress=progress) as scheduler:
            labelled = scheduler.predict(topo.mamabear, units)
        mama.cost_ = (time.perf_counter() - start) / max(int(tokens.sum()), 1)
        keep = [i for i in range(len(units)) if i not in labelled.errors]  # no reference, nothing to learn from
        if labelled.errors:
            log.warning("warm-up: the mamabear failed on %d of %d texts; they are left out", len(labelled.errors), len(units))
        if len(keep) < 20:
            raise BabybearError(f"warm-up needs at least 20 texts the mamabear can answer, got {len(keep)} of {len(units)}")
        units, tokens, ref = [units[i] for i in keep], tokens[keep], [labelled.preds[i] for i in keep]
        a = int(len(units) * fractions[0])
        b = a + int(len(units) * fractions[1])
        train, calib, tune = units[:a], units[a:b], units[b:]
        check_budget(self.budget, {s.label for p in ref[b:] for s in p.spans})  # before the babybears train
        for name in topo.order:
            if name != topo.mamabear:
                self.node(name).fit(train, ref[:a])
        held, held_ref, held_tokens = calib + tune, ref[a:], tokens[a:]
        preds: dict[str, list[Prediction]] = {}
        failed: set[int] = set()
        with Scheduler(self, batch_size, progress=progress) as scheduler:
            for name in topo.order:
                if name == topo.mamabear:
                    continue
                node = self.node(name)
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
        costs = {name: float(self.node(name).cost_ or 0.0) for name in topo.order}
        self.cache_ = CachedRun(topo, preds, {}, costs, held_tokens)
        self.n_calibration_ = len(calib)
        self.heldout_texts_ = held
        self.fit_gates()
        self.report_ = {
            "warm_up": {
                "texts": len(texts), "units": len(units), "mamabear_failures": len(labelled.errors),
                "babybear_failures": len(failed),
                "train": len(train), "calibration": len(calib), "tuning": len(tune), "seed": seed,
            },
            "babybear_f1_alone": {
                n: entity_f1([p.spans for p in preds[n][len(calib):]], [p.spans for p in held_ref[len(calib):]]) for n in topo.order if n != topo.mamabear
            },
        }
        return self.tune()

    def fit_gates(self) -> Circuit:
        """Fit each edge's gate on the calibration part of the held-out cache and score the whole cache with it.

        ``fit`` does this; call it again, without running a model, after changing a gate or an edge's
        ``agree_with`` on a fitted circuit, then :meth:`tune`."""
        if self.cache_ is None:
            raise NotFittedError("no held-out cache to fit gates on: fit the circuit first (or load a folder saved by a fit)")
        run, n_cal = self.cache_, self.n_calibration_
        for s, t in self.topology.edges_in_order():
            gate = self.graph.edges[s, t]["gate"]
            exits = run.exit_answers(s)
            agrees = [exits[i] == run.reference[i].spans for i in range(n_cal)]
            evidence = self.gate_evidence(s, t, run.preds)
            gate.fit(evidence[:n_cal], agrees)
            run.scores[(s, t)] = gate.score(evidence)
        return self

    def tune(
        self,
        min_entity_f1: float | None = None,
        method: Method = "joint",
        run: CachedRun | None = None,
        costs: dict[str, float] | None = None,
        confidence: float | None = None,
        **options: Any,
    ) -> Circuit:
        """Set every threshold for the budget from cached outputs, without running a model.

        ``min_entity_f1`` and ``confidence`` replace the budget's (checked before anything changes).

        ``method``: "joint" (circuit.optimizer: all edges together, on a lower confidence bound), "per_edge"
        or "nearest" (point-estimate rules kept for comparison). ``run`` tunes on other cached outputs (e.g.
        :meth:`circuit.audit.Audit.cached_run` to recalibrate after drift) instead of the held-out tuning rows.
        ``costs`` prices nodes per token in place of the costs measured during fit, for when the circuit will
        run on other hardware than it was fitted on (``{"mamabear": 1.0, "crf": 0.0}`` minimises mamabear
        calls alone); nodes it does not name keep their measured cost. ``options`` go to
        :func:`circuit.optimizer.optimize`.
        """
        if run is None and self.cache_ is None:
            raise NotFittedError("nothing to tune from: fit the circuit first (or load a folder saved by a fit)")
        update = {k: v for k, v in {"min_entity_f1": min_entity_f1, "confidence": confidence}.items() if v is not None}
        if update:
            budget = self.budget.model_copy(update=update)
            problems = budget_problems(budget)
            if problems:
                raise CircuitValidationError(problems)
            self.budget = budget
        tuned_on = "held-out tuning split" if run is None else "given run"
        if run is None:
            run = self.cache_.subset(np.arange(self.n_calibration_, self.cache_.n))
        measured = run.costs
        if costs:
            unknown = sorted(set(costs) - set(self.graph))
            if unknown:
                raise BabybearError(f"costs: unknown node {', '.join(unknown)}; nodes: {', '.join(self.graph)}")
            negative = sorted(n for n, c in costs.items() if not c >= 0)
            if negative:
                raise BabybearError(f"costs: {', '.join(negative)} must be a number >= 0")
            run = replace(run, costs={**run.costs, **{n: float(c) for n, c in costs.items()}})
        every_node_on = replace(self.topology, disabled=frozenset())
        result = optimize(run.with_topology(every_node_on), self.budget, method=method, **options)
        self.set_thresholds(result.thresholds)
        for name in self.graph:
            self.graph.nodes[name]["enabled"] = name not in result.disabled
        outcome = run.with_topology(self.topology).evaluate(self.thresholds)
        self.report_.update(
            budget=self.budget.model_dump(),
            costs_seconds_per_token=measured,
            cost_override={n: float(c) for n, c in (costs or {}).items()},
            gates={f"{s}->{t}": {**self.graph.edges[s, t]["gate"].report, "tuning": run.calibration((s, t))} for s, t in self.graph.edges},
            thresholds={f"{s}->{t}": v for (s, t), v in self.thresholds.items()},
            tuning={k: v for k, v in outcome.items() if k != "per_label"},
            tuned_on={"source": tuned_on, "texts": run.n},
            optimizer=result.to_dict(),
        )
        return self

    # -- evaluation --------------------------------------------------------------------------------------------
    def evaluate(self, texts: Sequence[str], gold: Sequence[Sequence[Span]] | None = None, batch_size: int = 256, progress: bool = True) -> dict[str, Any]:
        """Run the circuit and, on the same texts, the mamabear alone; compare answers, calls and wall time."""
        keep = [i for i, t in enumerate(texts) if t.strip()]
        texts = [texts[i] for i in keep]
        gold = [gold[i] for i in keep] if gold is not None else None
        self.warm_up()  # loading models is not part of either side's timing
        start = time.perf_counter()
        answers, stats = self._run(texts, None, batch_size, progress)
        circuit_seconds = time.perf_counter() - start
        mama = self.mamabear
        start = time.perf_counter()
        chunks = [split_text(text) for text in texts]
        units = [text[s:e] for text, parts in zip(texts, chunks) for s, e, _, _ in parts]
        ref_units = self._predict(mama, units, batch_size, progress)
        mama_seconds = time.perf_counter() - start
        ref, k = [], 0
        for parts in chunks:
            ref.append(stitch_spans(parts, [p.spans for p in ref_units[k : k + len(parts)]]))
            k += len(parts)
        answered = {n: 0 for n in self.topology.order}
        for a in answers:
            answered[a.node] += 1
        # the calls hide that the hard texts are the long ones: tokens (whitespace words) of the texts the
        # mamabear answered (a long text counts whole when it answered any of its chunks)
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
        """Write the fitted circuit to a folder: circuit.yaml, nodes/<name>/, gates/<source>--<target>.json, report.json
        (and heldout.json after a fit); other files in the folder (report plots, say) stay.

        Atomic and exclusive: under the folder's lock (see :func:`folder_lock`) the whole new circuit is written to
        a fresh folder inside it, renamed to ``.commit`` once complete, and its pieces then replace the old ones
        whole, so no file of an earlier save survives. A load (which takes the lock too) sees the old circuit or
        the new one, never a mix; a save cut short before ``.commit`` leaves the old circuit, one cut short after
        it is finished by the next load or save."""
        path = Path(path)
        for name in self.graph:
            problem = name_problem(name)
            if problem:
                raise BabybearError(f"cannot save node {name!r} into {path}: {problem}")
        path.mkdir(parents=True, exist_ok=True)
        with folder_lock(path):
            staging = path / f"{_STAGING}{uuid.uuid4().hex}"
            try:
                self._write_pieces(staging)
                (staging / _MANIFEST).write_text(json.dumps([p for p in PIECES if (staging / p).exists()]), encoding="utf-8")
                staging.rename(path / _COMMIT)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            _finish_commit(path)
        return path

    def _write_pieces(self, folder: Path) -> None:
        """Write every piece of the saved circuit into the new folder ``folder``."""
        (folder / "gates").mkdir(parents=True)
        for name in self.graph:
            (folder / "nodes" / name).mkdir(parents=True)
            self.node(name).to_disk(folder / "nodes" / name)
        for s, t, data in self.graph.edges(data=True):
            (folder / "gates" / f"{s}--{t}.json").write_text(json.dumps(data["gate"].to_dict()), encoding="utf-8")
        self.to_yaml(folder / "circuit.yaml")
        if self.cache_ is not None:
            _save_cache(folder / "heldout.json", self.heldout_texts_, self.cache_, self.n_calibration_)
        costs = {n: self.node(n).cost_ for n in self.graph}
        (folder / "report.json").write_text(json.dumps({**self.report_, "costs_seconds_per_token": costs}, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        """Load a folder written by :meth:`save`, under its lock. Reads YAML, JSON, and each node's own files, all
        inside the folder (a link out of it is refused); runs no code from it."""
        path = Path(path)
        if not path.is_dir():
            raise ArtifactError(f"{path}: not a fitted circuit folder (no circuit.yaml)")
        with folder_lock(path):
            return cls._read(path)

    @classmethod
    def _read(cls, path: Path) -> Circuit:
        if not (path / "circuit.yaml").is_file():
            raise ArtifactError(f"{path}: not a fitted circuit folder (no circuit.yaml)")
        _refuse_links_out(path)
        circuit = cls.from_spec(load_spec(path / "circuit.yaml"))
        for name in circuit.graph:
            folder = path / "nodes" / name
            if not folder.is_dir():
                raise ArtifactError(f"{folder}: missing node folder for '{name}'")
            try:
                circuit.node(name).from_disk(folder)
            except ArtifactError:
                raise
            except BabybearError as err:  # a param the folder's YAML set is wrong: say where it is
                raise ArtifactError(f"{path / 'circuit.yaml'}: nodes.{name}: {err}") from None
        for s, t, data in circuit.graph.edges(data=True):
            file = path / "gates" / f"{s}--{t}.json"
            try:
                data["gate"].load_dict(json.loads(file.read_text(encoding="utf-8")))
            except (OSError, ValueError) as err:
                raise ArtifactError(f"{file}: cannot read gate {s} -> {t}: {err}") from err
        report_file = path / "report.json"
        if report_file.is_file():
            try:
                circuit.report_ = json.loads(report_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise ArtifactError(f"{report_file}: cannot read the fit report: {err}") from err
            if not isinstance(circuit.report_, dict):
                raise ArtifactError(f"{report_file}: the fit report is not a JSON object")
            for name, cost in circuit.report_.get("costs_seconds_per_token", {}).items():
                if name in circuit.graph:
                    circuit.node(name).cost_ = cost
        if (path / "heldout.json").is_file():
            circuit.heldout_texts_, circuit.cache_, circuit.n_calibration_ = _load_cache(path / "heldout.json", circuit)
        return circuit


LOCK_FILE = ".babybear.lock"
LOCK_TIMEOUT_S = 60.0  # how long a save or load waits for another one on the same folder before giving up
PIECES = ("nodes", "gates", "heldout.json", "report.json", "circuit.yaml")  # what a save writes and replaces
_STAGING = ".saving"  # prefix of the folder a save writes its pieces into
_COMMIT = ".commit"  # a save's complete pieces, being moved into place
_MANIFEST = "pieces.json"  # in _COMMIT: the pieces it holds; the others are removed from the folder


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold a circuit folder's lock (the file ``.babybear.lock`` in it, via ``filelock``) while saving or reading
    it, after finishing any save a crash cut short. Raises :class:`BabybearError` naming the folder when another
    process holds the lock for more than ``LOCK_TIMEOUT_S`` seconds. A folder this process cannot write is read
    without it (nor could it hold a lock file)."""
    if not os.access(folder, os.W_OK):
        if (folder / _COMMIT).exists():
            raise ArtifactError(f"{folder}: a save was cut short ({_COMMIT} is there) and the folder is read-only here; load it once where it can be written")
        yield
        return
    lock = FileLock(folder / LOCK_FILE, timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise BabybearError(
            f"{folder}: another process has been saving or loading this circuit folder for over {LOCK_TIMEOUT_S:.0f} s "
            f"(it holds {folder / LOCK_FILE}); try again when it is done"
        ) from None
    try:
        _finish_commit(folder)
        yield
    finally:
        lock.release()


def _finish_commit(folder: Path) -> None:
    """Move a complete save's pieces from ``.commit`` into place (each step can be repeated after a crash), and
    remove what saves cut short before they were complete left behind. Runs under the folder's lock."""
    commit = folder / _COMMIT
    if commit.is_dir():
        try:
            pieces = json.loads((commit / _MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ArtifactError(f"{commit / _MANIFEST}: cannot read the pieces of a save that was cut short: {err}") from err
        replaced = commit / "replaced"
        replaced.mkdir(exist_ok=True)
        for piece in PIECES:
            new, old = commit / piece, folder / piece
            if piece in pieces and not new.exists():
                continue  # moved in before a crash
            if old.is_symlink() or old.exists():
                os.replace(old, replaced / piece)
            if piece in pieces:
                os.replace(new, old)
        shutil.rmtree(commit)
    for stale in folder.glob(f"{_STAGING}*"):
        shutil.rmtree(stale, ignore_errors=True)


def _refuse_links_out(folder: Path) -> None:
    """Raise :class:`ArtifactError` for a link anywhere in ``folder`` that leads outside it."""
    root = folder.resolve()
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            entry = Path(parent) / name
            if entry.is_symlink() and not entry.resolve().is_relative_to(root):
                raise ArtifactError(f"{entry}: a link to {entry.resolve()}, outside the circuit folder; a saved circuit holds only its own files")


def folder_files(folder: Path, skip: frozenset[str] = frozenset()) -> dict[str, bytes | None]:
    """A circuit folder's contents by relative path, read under its lock: each file's bytes, None for a folder
    (so empty ones travel too); entries named in ``skip`` and the lock file are left out, and a link out of the
    folder is refused. :func:`write_folder_files` writes them back."""
    skip = skip | {LOCK_FILE}
    with folder_lock(folder):
        _refuse_links_out(folder)
        return {f.relative_to(folder).as_posix(): f.read_bytes() if f.is_file() else None for f in sorted(folder.rglob("*")) if f.name not in skip}


def write_folder_files(files: Mapping[str, bytes | None], folder: Path) -> None:
    """Recreate :func:`folder_files`' contents inside ``folder``; a path that would land outside it is refused."""
    root = folder.resolve()
    for rel, data in files.items():
        target = (root / rel).resolve()
        if not target.is_relative_to(root):
            raise ArtifactError(f"{rel!r} points outside the circuit folder {folder}")
        if data is None:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


def _save_cache(file: Path, texts: list[str], run: CachedRun, n_calibration: int) -> None:
    data = {
        "n_calibration": n_calibration,
        "texts": texts,
        "costs": run.costs,
        "preds": {n: [{"spans": [list(s) for s in p.spans], "evidence": p.evidence} for p in ps] for n, ps in run.preds.items()},
    }
    file.write_text(json.dumps(data), encoding="utf-8")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _cache_problem(data: Any) -> str | None:
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


def _load_cache(file: Path, circuit: Circuit) -> tuple[list[str], CachedRun, int]:
    """Read the held-out outputs saved with a fit, and score them with the loaded gates."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        problem = _cache_problem(data)
        if problem:
            raise ValueError(problem)
        preds = {n: [Prediction([Span(*s) for s in p["spans"]], p["evidence"]) for p in ps] for n, ps in data["preds"].items()}
        texts, costs, n_calibration = data["texts"], {n: float(c) for n, c in data["costs"].items()}, data["n_calibration"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ArtifactError(f"{file}: cannot read the held-out cache: {err}") from err
    topo = circuit.topology
    if set(preds) != set(topo.order):
        raise ArtifactError(f"{file}: cached nodes {sorted(preds)} do not match the circuit's {sorted(topo.order)}")
    scores = {(s, t): circuit.graph.edges[s, t]["gate"].score(circuit.gate_evidence(s, t, preds)) for s, t in topo.edges}
    run = CachedRun(topo, preds, scores, costs, np.array([n_tokens(t) for t in texts]))
    return texts, run, n_calibration
