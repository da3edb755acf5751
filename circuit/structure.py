"""A circuit's structure: the DAG of named nodes and gated edges, and what can be said of it without running a
model (its YAML description, thresholds, params, the topology routing reads). No fitting, running or saving.

Each node of the networkx graph holds a :class:`NodeSlot` and each edge an :class:`EdgeSlot` under the key
``"slot"``; read and change them through :meth:`Structure.slot` and :meth:`Structure.edge`, never by string keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import networkx as nx
import numpy as np
import yaml
from pydantic import ValidationError

from . import registry
from .errors import BabybearError, CircuitValidationError, Problem
from .node import Gate, Node
from .routing import Edge, Topology, gate_evidence
from .schema import Budget, CircuitSpec, load_spec, pydantic_problems, validate
from .types import Prediction

S = TypeVar("S", bound="Structure")


@dataclass
class NodeSlot:
    """A node in the circuit: the model, the labels it answers for (None: all) and whether it runs."""

    node: Node
    labels: frozenset[str] | None = None
    enabled: bool = True  # a node that is not enabled is not run and passes every sentence on


@dataclass
class EdgeSlot:
    """An edge ``source -> target``: its gate, threshold (None until tuned) and the node its gate compares with."""

    gate: Gate
    threshold: float | None = None
    agree_with: str | None = None


class Structure:
    """A DAG of babybears in front of one mamabear. Builder methods return ``self``."""

    def __init__(self, name: str = "circuit", budget: Budget | dict | None = None) -> None:
        self.name = name
        self.budget = budget if isinstance(budget, Budget) else Budget(**(budget or {}))
        self.graph = nx.DiGraph()

    # -- building ----------------------------------------------------------------------------------------------
    def add(self: S, name: str, node: Node, labels: Iterable[str] | None = None, enabled: bool = True) -> S:
        """Add ``node`` under ``name``; ``labels`` limits the labels it answers for (all by default); a node that
        is not ``enabled`` is not run and passes every sentence on (tuning switches off nodes that do not pay)."""
        if name in self.graph:
            raise BabybearError(f"node '{name}' already exists; nodes: {', '.join(self.graph)}")
        self.graph.add_node(name, slot=NodeSlot(node, frozenset(labels) if labels is not None else None, enabled))
        return self

    def connect(
        self: S, source: str, target: str, gate: Gate | None = None, threshold: float | None = None, agree_with: str | None = None
    ) -> S:
        """Add the edge ``source -> target`` guarded by ``gate`` (a CalibratedGate by default). With ``agree_with``
        (an earlier node every sentence reaching ``source`` has passed), the gate also sees whether ``source``'s
        spans equal that node's: two babybears agreeing is evidence neither sees alone."""
        for end in (source, target):
            if end not in self.graph:
                raise BabybearError(f"no node named '{end}'; nodes: {', '.join(self.graph)}")
        if gate is None:
            gate = registry.gates.get("babybear.CalibratedGate.v1")()
        self.graph.add_edge(source, target, slot=EdgeSlot(gate, threshold, agree_with))
        return self

    # -- typed access ------------------------------------------------------------------------------------------
    def slot(self, name: str) -> NodeSlot:
        """Node ``name``'s slot: its model, labels and whether it is enabled."""
        if name not in self.graph:
            raise BabybearError(f"no node named '{name}'; nodes: {', '.join(self.graph)}")
        return self.graph.nodes[name]["slot"]

    def edge(self, source: str, target: str) -> EdgeSlot:
        """The edge ``source -> target``'s slot: its gate, threshold and ``agree_with``."""
        if not self.graph.has_edge(source, target):
            raise BabybearError(f"no edge {source} -> {target}; edges: {', '.join(f'{a}->{b}' for a, b in self.graph.edges)}")
        return self.graph.edges[source, target]["slot"]

    def node(self, name: str) -> Node:
        """The node named ``name``."""
        return self.slot(name).node

    def successors(self, name: str) -> list[str]:
        """The nodes ``name`` hands sentences on to."""
        return list(self.graph.successors(name))

    # -- description -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The circuit as the YAML describes it (types, params, labels, edges, thresholds); no learned state."""
        nodes = {}
        for name in self.graph:
            slot = self.slot(name)
            spec: dict[str, Any] = {"type": registry.nodes.name_of(type(slot.node))}
            params = slot.node.params.model_dump(exclude_defaults=True)
            if params:
                spec["params"] = params
            if slot.labels is not None:
                spec["labels"] = sorted(slot.labels)
            if not slot.enabled:
                spec["enabled"] = False
            nodes[name] = spec
        edges = []
        for s, t in self.graph.edges:
            e = self.edge(s, t)
            gate: dict[str, Any] = {"type": registry.gates.name_of(type(e.gate))}
            gparams = e.gate.params.model_dump(exclude_defaults=True)
            if gparams:
                gate["params"] = gparams
            edge: dict[str, Any] = {"source": s, "target": t, "gate": gate}
            if e.threshold is not None:
                edge["threshold"] = float(e.threshold)
            if e.agree_with is not None:
                edge["agree_with"] = e.agree_with
            edges.append(edge)
        return {"version": 1, "name": self.name, "budget": self.budget.model_dump(exclude_defaults=True), "nodes": nodes, "edges": edges}

    def to_yaml(self, path: str | Path | None = None) -> str:
        """:meth:`to_dict` as YAML, also written to ``path`` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_spec(cls: type[S], spec: CircuitSpec) -> S:
        """Build unfitted nodes and gates from a validated spec."""
        built = cls(spec.name, spec.budget)
        for name, n in spec.nodes.items():
            built.add(name, registry.nodes.get(n.type)(**n.params), n.labels, n.enabled)
        for e in spec.edges:
            built.connect(e.source, e.target, registry.gates.get(e.gate.type)(**e.gate.params), e.threshold, e.agree_with)
        return built

    @classmethod
    def from_dict(cls: type[S], data: dict[str, Any]) -> S:
        """Validate a dict shaped like the YAML (every problem at once) and build the circuit."""
        return cls.from_spec(load_spec(data))

    @classmethod
    def from_yaml(cls: type[S], source: str | Path) -> S:
        """Read a circuit from a YAML file path or a YAML string; every problem is reported at once."""
        return cls.from_spec(load_spec(source))

    def validate(self: S) -> S:
        """Raise :class:`CircuitValidationError` with every problem of the circuit as built; returns self."""
        spec = CircuitSpec.model_validate(self.to_dict())
        problems = validate(spec)
        if problems:
            raise CircuitValidationError(problems)
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Structure) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, nodes={list(self.graph)}, edges={list(self.graph.edges)})"

    # -- what routing reads ------------------------------------------------------------------------------------
    @property
    def mamabear(self) -> str:
        """The name of the single mamabear node."""
        names = [n for n in self.graph if self.node(n).role == "mamabear"]
        if len(names) != 1:
            raise BabybearError(f"a circuit needs exactly one mamabear node, found {len(names)}")
        return names[0]

    @property
    def topology(self) -> Topology:
        """What routing needs: node order, edges, labels, switched-off nodes, agreements."""
        order = list(nx.lexicographical_topological_sort(self.graph))
        labels = {n: self.slot(n).labels for n in order}
        disabled = frozenset(n for n in order if not self.slot(n).enabled)
        agree_with = {(s, t): self.edge(s, t).agree_with for s, t in self.graph.edges if self.edge(s, t).agree_with is not None}
        return Topology(order, list(self.graph.edges), labels, self.mamabear, disabled, agree_with)

    @property
    def thresholds(self) -> dict[Edge, float]:
        """Each edge's threshold: a sentence goes on along an edge when the gate scores it below it."""
        return {(s, t): self.edge(s, t).threshold for s, t in self.graph.edges}

    def set_thresholds(self: S, thresholds: Mapping[Edge, float]) -> S:
        """Set some edges' thresholds by hand (each in [0, 1]; all checked before any is set); returns self."""
        for (s, t), value in thresholds.items():
            self.edge(s, t)
            if not 0 <= float(value) <= 1:
                raise CircuitValidationError([Problem(f"{s}->{t}.threshold", f"must be in [0, 1], got {value}")])
        for (s, t), value in thresholds.items():
            self.edge(s, t).threshold = float(value)
        return self

    def gate_evidence(self, source: str, target: str, preds: Mapping[str, Sequence[Prediction]]) -> list[dict[str, float]]:
        """What the gate on ``source -> target`` sees of ``preds[source]`` (node -> predictions on the same units),
        with the agreement feature where the edge has ``agree_with``."""
        other = self.edge(source, target).agree_with
        return gate_evidence(preds[source], preds[other] if other else None, other)

    def covers(self) -> dict[Edge, float]:
        """(node, later node) -> the share of the later node's work the state the first hands on covers (an early
        exit after k of the mamabear's L layers: k / L), for every pair that shares work (see :meth:`Node.covers`)."""
        out = {}
        for u in self.graph:
            for v in nx.descendants(self.graph, u):
                share = self.node(u).covers(v, self.node(v))
                if share > 0:
                    out[(u, v)] = float(share)
        return out

    def score_gates(self, preds: Mapping[str, Sequence[Prediction]]) -> dict[Edge, np.ndarray]:
        """Every edge gate's score on ``preds`` (node -> predictions on the same units)."""
        return {(s, t): self.edge(s, t).gate.score(self.gate_evidence(s, t, preds)) for s, t in self.topology.edges}

    # -- parameters --------------------------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """scikit-learn style flat params: ``"crf__c1"`` for nodes, ``"crf->mamabear__threshold"`` and
        ``"student->mamabear__agree_with"`` for edges."""
        out: dict[str, Any] = {}
        for name in self.graph:
            out.update({f"{name}__{k}": v for k, v in self.node(name).get_params().items()})
        for s, t in self.graph.edges:
            e = self.edge(s, t)
            out.update({f"{s}->{t}__threshold": e.threshold, f"{s}->{t}__agree_with": e.agree_with})
        return out

    def set_params(self: S, **params: Any) -> S:
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
                edge = self.edge(s, t)
                before, edge.agree_with = edge.agree_with, value
                try:
                    self.validate()
                except CircuitValidationError:
                    edge.agree_with = before
                    raise
            elif target in self.graph:
                node_changes.setdefault(target, {})[attr] = value
            else:
                raise BabybearError(f"{key}: unknown parameter; use NODE__PARAM, SOURCE->TARGET__threshold or SOURCE->TARGET__agree_with")
        for name, changes in node_changes.items():
            slot = self.slot(name)
            where = ("nodes", name, "params")
            try:
                slot.node = type(slot.node)(**{**slot.node.get_params(), **changes})
            except ValidationError as err:
                raise CircuitValidationError(pydantic_problems(err, where, {where: list(slot.node.Params.model_fields)})) from err
        return self

    def warm_up(self: S) -> S:
        """Bind every node to the others (:meth:`Node.bind`) and load its weights (idempotent); returns self."""
        nodes = {name: self.node(name) for name in self.graph}
        for node in nodes.values():
            node.bind(nodes)
        for node in nodes.values():
            node.warm_up()
        return self
