"""Tuning: every threshold of a fitted circuit set for its budget from cached outputs, without running a model
(the search and the statistical guarantee are :mod:`babybear.tuning.optimizer`'s)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import BabybearError, CircuitValidationError, NotFittedError
from .optimizer import Method, optimize
from ..routing import CachedRun
from ..schema import budget_problems

if TYPE_CHECKING:
    from ..circuit import Circuit


def tune(
    circuit: Circuit,
    min_entity_f1: float | None = None,
    method: Method = "joint",
    run: CachedRun | None = None,
    costs: dict[str, float] | None = None,
    confidence: float | None = None,
    off: Collection[str] = (),
    **options: Any,
) -> None:
    """Set every threshold for the budget from cached outputs, without running a model.

    ``min_entity_f1`` and ``confidence`` replace the budget's (checked before anything changes).

    ``method``: "joint" (babybear.tuning.optimizer: all edges together, on a lower confidence bound), "per_edge"
    or "nearest" (point-estimate rules kept for comparison). ``run`` tunes on other cached outputs (e.g.
    :meth:`babybear.tuning.audit.Audit.cached_run` to recalibrate after drift) instead of the held-out tuning rows.
    ``costs`` prices nodes per token in place of the costs measured during fit, for when the circuit will
    run on other hardware than it was fitted on (``{"mamabear": 1.0, "crf": 0.0}`` minimises mamabear
    calls alone); nodes it does not name keep their measured cost. ``off`` names babybears to keep switched off
    (to see what the circuit saves without them); the optimizer may switch off others. ``options`` go to
    :func:`babybear.tuning.optimizer.optimize`.
    """
    if run is None and circuit.heldout_ is None:
        raise NotFittedError("nothing to tune from: fit the circuit first (or load a folder saved by a fit)")
    unknown = sorted(set(off) - set(circuit.graph))
    if unknown:
        raise BabybearError(f"off: unknown node {', '.join(unknown)}; nodes: {', '.join(circuit.graph)}")
    if circuit.topology.mamabear in off:
        raise BabybearError(f"off: {circuit.topology.mamabear} is the mamabear, which cannot be switched off")
    anchors = sorted({a for (s, _), a in circuit.topology.agree_with.items() if s not in off} & set(off))
    if anchors:
        raise BabybearError(f"off: a gate compares with {', '.join(anchors)} (agree_with), so it must stay on while that gate's source is on")
    update = {k: v for k, v in {"min_entity_f1": min_entity_f1, "confidence": confidence}.items() if v is not None}
    if update:
        budget = circuit.budget.model_copy(update=update)
        problems = budget_problems(budget)
        if problems:
            raise CircuitValidationError(problems)
        circuit.budget = budget
    tuned_on = "held-out tuning split" if run is None else "given run"
    if run is None:
        run = circuit.heldout_.tuning
    measured = run.costs
    if costs:
        unknown = sorted(set(costs) - set(circuit.graph))
        if unknown:
            raise BabybearError(f"costs: unknown node {', '.join(unknown)}; nodes: {', '.join(circuit.graph)}")
        negative = sorted(n for n, c in costs.items() if not c >= 0)
        if negative:
            raise BabybearError(f"costs: {', '.join(negative)} must be a number >= 0")
        run = replace(run, costs={**run.costs, **{n: float(c) for n, c in costs.items()}})
    kept_off = replace(circuit.topology, disabled=frozenset(off))  # every other node on: the optimizer decides
    result = optimize(run.with_topology(kept_off), circuit.budget, method=method, **options)
    circuit.set_thresholds(result.thresholds)
    for name in circuit.graph:
        circuit.slot(name).enabled = name not in result.disabled
    outcome = run.with_topology(circuit.topology).evaluate(circuit.thresholds)
    circuit.report_.update(
        budget=circuit.budget.model_dump(),
        costs_seconds_per_token=measured,
        cost_override={n: float(c) for n, c in (costs or {}).items()},
        gates={f"{s}->{t}": {**circuit.edge(s, t).gate.report, "tuning": run.calibration((s, t))} for s, t in circuit.graph.edges},
        thresholds={f"{s}->{t}": v for (s, t), v in circuit.thresholds.items()},
        tuning={k: v for k, v in outcome.items() if k != "per_label"},
        tuned_on={"source": tuned_on, "texts": run.n},
        kept_off=sorted(off),
        optimizer=result.to_dict(),
    )
