"""The YAML shape of a circuit, and validation that reports every problem at once with its location.

Parsing has two steps: the file's shape (pydantic models, unknown fields forbidden), then its meaning (known
node and gate types, their params, edges, one mamabear sink, no cycles, every node reachable, a budget in
(0, 1]). Both steps collect problems instead of stopping at the first.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import networkx as nx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import ready, registry
from .errors import BabybearError, CircuitValidationError, Problem


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Budget(_Strict):
    """Entity-F1 against the mamabear that the circuit must keep, with the confidence of that promise."""

    min_entity_f1: float = 0.99
    confidence: float = 0.95
    per_label: dict[str, float] = Field(default_factory=dict)


class GateSpec(_Strict):
    type: str = "babybear.CalibratedGate.v1"
    params: dict[str, Any] = Field(default_factory=dict)


class NodeSpec(_Strict):
    type: str
    params: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] | None = None
    enabled: bool = True  # tuning switches off a node whose cost it does not earn back


class EdgeSpec(_Strict):
    source: str
    target: str
    gate: GateSpec = Field(default_factory=GateSpec)
    threshold: float | None = None  # set by fitting; a sentence goes on when P(agree) < threshold
    agree_with: str | None = None  # an earlier node: the gate also sees whether the source's spans equal its


class CircuitSpec(_Strict):
    version: int = 1
    name: str = "circuit"
    budget: Budget = Field(default_factory=Budget)
    nodes: dict[str, NodeSpec]
    edges: list[EdgeSpec] = Field(default_factory=list)


class _LocatingLoader(yaml.SafeLoader):
    """A SafeLoader that also records the line of every key path, and a problem for every key repeated within
    one mapping (plain PyYAML keeps the later value silently, so a node would vanish without a word)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.lines: dict[tuple, int] = {}
        self.repeated: list[Problem] = []

    def compose_document(self) -> yaml.Node:
        root = super().compose_document()
        if root is not None:
            self._walk(root, ())
        return root

    def _walk(self, node: yaml.Node, path: tuple) -> None:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for k, v in node.value:
                if not isinstance(k, yaml.ScalarNode) or k.value == "<<":  # complex keys, merge keys: not paths
                    continue
                line = k.start_mark.line + 1
                if k.value in first:
                    where = ".".join(map(str, path + (k.value,)))
                    self.repeated.append(Problem(where, f"key '{k.value}' appears twice (first at line {first[k.value]}); the later one would silently replace the first", line))
                first.setdefault(k.value, line)
                self.lines[path + (k.value,)] = line
                self._walk(v, path + (k.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self._walk(v, path + (i,))


def _parse(text: str, source: str | None) -> tuple[Any, dict[tuple, int], list[Problem]]:
    """The YAML document, the line of each key path in it, and its repeated keys; bad YAML is a located error."""
    loader = _LocatingLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        raise CircuitValidationError([Problem("<file>", f"not valid YAML{line}: {getattr(err, 'problem', err)}")], source) from None
    finally:
        loader.dispose()
    return data, loader.lines, loader.repeated


def pydantic_problems(err: ValidationError, prefix: tuple, known: dict[tuple, list[str]]) -> list[Problem]:
    """pydantic's errors as located problems; ``known`` maps a location to the valid names there."""
    problems = []
    for e in err.errors():
        loc = prefix + tuple(e["loc"])
        if e["type"] == "extra_forbidden":
            choices = known.get(loc[:-1])
            kind = "parameter" if len(loc) >= 2 and loc[-2] == "params" else "field"
            msg = f"unknown {kind}" + (f"; known: {', '.join(choices)}" if choices else "")
        elif e["type"] == "missing":
            msg = "required but missing"
        else:
            msg = f"{e['msg']} (got {e.get('input')!r})"
        problems.append(Problem(".".join(map(str, loc)), msg))
    return problems


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


def name_problem(name: str) -> str | None:
    """What is wrong with a node name, or None. A name is a folder in a saved circuit (``nodes/<name>``) and
    half a gate file's name (``gates/<source>--<target>.json``), so it must stay a plain file name."""
    if isinstance(name, str) and _NAME.fullmatch(name) and ".." not in name and "--" not in name:
        return None
    return (f"invalid node name {name!r}: use 1 to 100 letters, digits, '_', '.' and '-', not starting with '.' or "
            "'-' and without '..' or '--' (a node name becomes a folder name in the saved circuit)")


def name_problems(names: list[str]) -> list[Problem]:
    """A located problem for each node name that is not a plain file name, or that differs from another only
    in case (one folder on a case-insensitive file system)."""
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for name in names:
        message = name_problem(name)
        if message is None and name.lower() in seen:
            message = f"differs from node '{seen[name.lower()]}' only in case: their folders would be one on macOS and Windows"
        seen.setdefault(name.lower(), name)
        if message:
            problems.append(Problem(f"nodes.{name}", message))
    return problems


def budget_problems(b: Budget) -> list[Problem]:
    """What is wrong with a budget's numbers, each located under ``budget.``."""
    problems = []
    if not 0 < b.min_entity_f1 <= 1:
        problems.append(Problem("budget.min_entity_f1", f"must be in (0, 1], got {b.min_entity_f1}"))
    if not 0 < b.confidence < 1:
        problems.append(Problem("budget.confidence", f"must be in (0, 1) (no finite sample gives certainty), got {b.confidence}"))
    for label, value in b.per_label.items():
        if not 0 < value <= 1:
            problems.append(Problem(f"budget.per_label.{label}", f"must be in (0, 1], got {value}"))
    return problems


def validate(spec: CircuitSpec) -> list[Problem]:
    """Every problem with the meaning of a well-shaped spec: types, params, graph shape, budget."""
    problems = budget_problems(spec.budget)
    if spec.version != 1:
        problems.append(Problem("version", f"unsupported version {spec.version}; supported: 1"))
    problems += name_problems(list(spec.nodes))
    roles: dict[str, str] = {}
    for name, node in spec.nodes.items():
        problems += _node_problems(name, node)
        if node.type in registry.nodes:
            roles[name] = registry.nodes.get(node.type).role
    graph = nx.DiGraph()
    graph.add_nodes_from(spec.nodes)
    for i, edge in enumerate(spec.edges):
        problems += _edge_problems(i, edge, list(spec.nodes))
        if edge.source in spec.nodes and edge.target in spec.nodes:
            if graph.has_edge(edge.source, edge.target):
                problems.append(Problem(f"edges.{i}", f"duplicate edge {edge.source} -> {edge.target}"))
            graph.add_edge(edge.source, edge.target)
    every_edge_known = all(e.source in spec.nodes and e.target in spec.nodes for e in spec.edges)  # else sinks and reach follow from a named problem
    problems += _graph_problems(graph, roles, {name: n.enabled for name, n in spec.nodes.items()}, every_edge_known)
    if not problems:
        problems += _agreement_problems(spec, graph)
    return problems


def _node_problems(name: str, node: NodeSpec) -> list[Problem]:
    """A node's type is registered and its params are that type's."""
    if node.type not in registry.nodes:
        return [Problem(f"nodes.{name}.type", f"unknown node type '{node.type}'; known: {', '.join(registry.nodes.names())}")]
    cls = registry.nodes.get(node.type)
    try:
        cls.Params(**node.params)
    except ValidationError as err:
        return pydantic_problems(err, ("nodes", name, "params"), {("nodes", name, "params"): sorted(cls.Params.model_fields)})
    return []


def _edge_problems(i: int, edge: EdgeSpec, nodes: list[str]) -> list[Problem]:
    """An edge's ends are nodes, its gate type is registered with valid params, its threshold is in [0, 1]."""
    problems = []
    for end in ("source", "target"):
        if getattr(edge, end) not in nodes:
            problems.append(Problem(f"edges.{i}.{end}", f"no node named '{getattr(edge, end)}'; nodes: {', '.join(nodes)}"))
    if edge.gate.type not in registry.gates:
        problems.append(Problem(f"edges.{i}.gate.type", f"unknown gate type '{edge.gate.type}'; known: {', '.join(registry.gates.names())}"))
    else:
        gcls = registry.gates.get(edge.gate.type)
        try:
            gcls.Params(**edge.gate.params)
        except ValidationError as err:
            problems += pydantic_problems(err, ("edges", i, "gate", "params"), {("edges", i, "gate", "params"): sorted(gcls.Params.model_fields)})
    if edge.threshold is not None and not 0 <= edge.threshold <= 1.0 + 1e-9:
        problems.append(Problem(f"edges.{i}.threshold", f"must be in [0, 1], got {edge.threshold}"))
    return problems


def _shape_problems(data: dict[str, Any], err: ValidationError) -> list[Problem]:
    """A spec whose shape is wrong somewhere: the shape problems, then the meaning problems of the parts (nodes,
    edges, budget) that are well-shaped on their own, so that one pass reports them all."""
    nodes = data.get("nodes") if isinstance(data.get("nodes"), dict) else {}
    edges = data.get("edges") if isinstance(data.get("edges"), list) else []
    known: dict[tuple, list[str]] = {(): sorted(CircuitSpec.model_fields), ("budget",): sorted(Budget.model_fields)}
    known.update({("nodes", n): sorted(NodeSpec.model_fields) for n in nodes})
    known.update({("edges", i): sorted(EdgeSpec.model_fields) for i in range(len(edges))})
    known.update({("edges", i, "gate"): sorted(GateSpec.model_fields) for i in range(len(edges))})
    problems = pydantic_problems(err, (), known) + name_problems([str(n) for n in nodes])
    for name, raw in nodes.items():
        try:
            problems += _node_problems(name, NodeSpec.model_validate(raw))
        except ValidationError:
            pass  # its shape problems are listed already
    for i, raw in enumerate(edges):
        try:
            problems += _edge_problems(i, EdgeSpec.model_validate(raw), [str(n) for n in nodes])
        except ValidationError:
            pass
    try:
        problems += budget_problems(Budget.model_validate(data.get("budget") or {}))
    except ValidationError:
        pass
    return problems


def _agreement_problems(spec: CircuitSpec, graph: nx.DiGraph) -> list[Problem]:
    """``agree_with`` must name a node that has answered every sentence reaching the edge's source: one that
    every path into the source passes through, and that is not switched off."""
    problems = []
    roots = [n for n in graph if graph.in_degree(n) == 0]
    for i, edge in enumerate(spec.edges):
        other = edge.agree_with
        if other is None:
            continue
        where = f"edges.{i}.agree_with"
        if other not in spec.nodes:
            problems.append(Problem(where, f"no node named '{other}'; nodes: {', '.join(spec.nodes)}"))
            continue
        without = graph.subgraph(n for n in graph if n != other)
        bypassed = any(edge.source in nx.descendants(without, r) | {r} for r in roots if r != other)
        if other == edge.source or other not in nx.ancestors(graph, edge.source) or bypassed:
            problems.append(Problem(where, f"'{other}' is not on every path into '{edge.source}', so it has not "
                                    f"answered every sentence there; name a node before '{edge.source}' that all its sentences pass"))
        elif not spec.nodes[other].enabled:
            problems.append(Problem(where, f"'{other}' is switched off (enabled: false), so it answers nothing to agree with"))
    return problems


def _graph_problems(graph: nx.DiGraph, roles: dict[str, str], spec_enabled: dict[str, bool], every_edge_known: bool) -> list[Problem]:
    problems = []
    if not graph.nodes:
        return [Problem("nodes", "a circuit needs at least a mamabear node")]
    for cycle in list(nx.simple_cycles(graph))[:5]:
        problems.append(Problem("edges", f"cycle: {' -> '.join(cycle + cycle[:1])}; a circuit must be acyclic"))
    mamabears = [n for n, r in roles.items() if r == "mamabear"]
    if not mamabears and len(roles) == len(graph):
        problems.append(Problem("nodes", "no mamabear node; add one (e.g. type babybear.SpacyNER.v1) as the last node"))
    if len(mamabears) > 1:
        problems.append(Problem("nodes", f"more than one mamabear: {', '.join(mamabears)}; a circuit has exactly one"))
    sinks = [n for n in graph if graph.out_degree(n) == 0]
    if len(sinks) > 1 and every_edge_known:
        problems.append(Problem("edges", f"more than one sink: {', '.join(sinks)}; every path must end at the mamabear"))
    for m in mamabears:
        if not spec_enabled.get(m, True):
            problems.append(Problem(f"nodes.{m}.enabled", "the mamabear cannot be switched off"))
        if graph.out_degree(m):
            problems.append(Problem(f"nodes.{m}", "the mamabear must be the sink: it can have no out-edges"))
    if not problems and mamabears and every_edge_known:
        roots = [n for n in graph if graph.in_degree(n) == 0]
        cheap_roots = [r for r in roots if r not in mamabears]
        if cheap_roots and len(graph) > 1:
            reach = set().union(*(nx.descendants(graph, r) | {r} for r in cheap_roots))
            for n in graph:
                if n not in reach:
                    problems.append(Problem(f"nodes.{n}", "unreachable: no edge leads to it from the circuit's roots"))
        elif len(graph) > 1:
            problems.append(Problem("edges", "no path leads into the mamabear from a babybear"))
    return problems


def load_spec(data: dict[str, Any] | str | Path, source: str | None = None) -> CircuitSpec:
    """Parse and validate a circuit from a dict, a YAML string, or a YAML file. Raises with every problem.

    A one-line string is a file path when it ends in .yaml/.yml or could not be a YAML mapping (has no ':'); a
    name that is not a file names a ready circuit (``news`` is circuits/news.yaml, see :mod:`babybear.ready`)."""
    text = None
    one_line = isinstance(data, str) and "\n" not in data
    if isinstance(data, Path) or (one_line and (data.endswith((".yaml", ".yml")) or ":" not in data)):
        path = Path(data)
        if not path.exists() and isinstance(data, str) and "/" not in data and ready.find(data):
            path = ready.find(data)  # a ready circuit's name
        source = source or str(path)
        text = read_circuit_file(path)
    elif isinstance(data, str):
        text = data
    lines: dict[tuple, int] = {}
    problems: list[Problem] = []
    if text is not None:
        data, lines, problems = _parse(text, source)
    if not isinstance(data, dict):
        raise CircuitValidationError([Problem("<file>", "a circuit is a mapping with nodes and edges")], source)
    try:
        spec = CircuitSpec.model_validate(data)
        problems += validate(spec)
    except ValidationError as err:
        problems += _shape_problems(data, err)
        spec = None
    if problems:
        located = [p if p.line else Problem(p.location, p.message, _locate(p.location, lines)) for p in problems]
        raise CircuitValidationError(located, source)
    assert spec is not None
    return spec


def read_circuit_file(path: Path) -> str:
    """A circuit file's text; a folder, a missing file or one that is not UTF-8 is a one-line error naming it."""
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        hint = f"; its circuit files: {', '.join(found)}" if found else "; it holds no .yaml file"
        if (path / "circuit.yaml").is_file() and (path / "nodes").is_dir():
            hint = f"; it is a fitted circuit folder, whose description is {path / 'circuit.yaml'}"
        raise BabybearError(f"{path} is a directory, not a circuit file{hint}")
    if not path.is_file():
        raise BabybearError(f"circuit file not found: {path}; ready circuits, by name: {', '.join(ready.names())}")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BabybearError(f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); save it as UTF-8") from None


def _locate(location: str, lines: dict[tuple, int]) -> int | None:
    """The line of the longest key path that ``location`` (dotted) starts with; node names may hold dots."""
    best: tuple[int, int] | None = None
    for path, line in lines.items():
        dotted = ".".join(map(str, path))
        if path and (location == dotted or location.startswith(dotted + ".")) and (best is None or len(dotted) > best[0]):
            best = (len(dotted), line)
    return best[1] if best else None
