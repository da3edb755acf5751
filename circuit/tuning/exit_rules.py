"""Decision rules for early exits, compared on the same cached outputs as the joint optimizer (issue #15, item 4).

An *exit* here is a node whose handed-on state covers part of the mamabear's work (``CachedRun.covers`` has
``(exit, mamabear)``: an early exit after k of the mamabear's L layers, :class:`babybear.nodes.early_exit.EarlyExit`);
an *exit edge* is an edge out of one. Three rules decide where a sentence leaves the exits:

- ``joint`` (the default, :func:`babybear.tuning.optimizer.optimize`): every edge's threshold on its calibrated gate,
  tuned together.
- :func:`shared_threshold` (The Right Tool for the Job, Schwartz et al. 2020): one threshold ``t`` on every exit
  edge's calibrated gate score. The other edges keep the joint optimizer's thresholds (and the nodes it switched off,
  exits excepted): the rule replaces only the exits' decision, so the comparison is the exits' rule alone.
- :func:`patience_rule` (PABEE, Zhou et al. 2020): a sentence leaves at exit j when exit j's spans equal those of each
  of the ``patience`` exits before it on its path (patience 1 with exits @3, @6: it leaves at @6 when @3 and @6
  agree). An exit with fewer than ``patience`` exits before it never stops a sentence: the first exit never does,
  as PABEE's first classifier cannot (its agreement counter starts at 0). Other edges as for the shared rule.

Both rules route with the one routing rule (:func:`babybear.routing.goes_on` via :meth:`CachedRun.reach` /
:meth:`CachedRun.evaluate`): the shared rule is a threshold vector with one value on the exit edges; patience's stop
is not a gate threshold, so :func:`patience_run` gives the same cached run with each exit edge's scores replaced by
the agreement indicator (1.0 where the exit may stop the sentence, else 0.0) and :func:`patience_thresholds` puts
0.5 on those edges, so that ``goes_on`` sends on exactly the sentences whose answers disagree.

Both pick their setting with the joint optimizer's default bound, Learn-then-Test (``bound="ltt"`` of
:func:`babybear.tuning.optimizer.optimize`, the same halves for the same ``seed``): settings meeting the budget on
the learn half, safest first, are tested in fixed sequence on the other half (one-sided t-tests of the F1 margins,
:func:`babybear.tuning.optimizer.passes`); the last before the first failure is chosen, else the safe setting (no
exit stops a sentence: ``t = 1``, or no patience). Figures are those the optimizer reports, on all rows, priced as
it prices them (:meth:`CachedRun.cost_per_unit`: an exit at k of L layers costs k/L of the mamabear, the resumed
mamabear (L-k)/L).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import BabybearError
from ..routing import CachedRun, Edge
from ..schema import Budget
from .optimizer import (
    N_CANDIDATES,
    Outcome,
    Scorer,
    TuneResult,
    _f1_lower_t,
    _meets,
    _targets,
    check_budget,
    ltt_halves,
    optimize,
    pareto,
    passes,
)


@dataclass
class RuleResult:
    """A decision rule's chosen setting on a cached run and the figures the optimizer reports for it (all rows).

    ``setting``: ``{"threshold": t}`` (shared), ``{"patience": p}`` (PABEE; ``None``: no exit stops a sentence) or
    the joint thresholds; ``thresholds``: every edge's threshold as routed (for patience, on :func:`patience_run`'s
    scores); ``cost_fraction``: cost per token as a fraction of the mamabear alone's; ``sweep``: every setting
    tried, scored on all rows."""

    rule: str
    setting: dict[str, Any]
    thresholds: dict[Edge, float]
    disabled: frozenset[str]
    f1: float
    f1_lower_bound: float | None
    mamabear_calls_avoided: float
    mamabear_tokens_avoided: float
    cost_per_token: float
    cost_fraction: float
    sweep: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "setting": self.setting,
            "thresholds": {f"{s}->{t}": v for (s, t), v in self.thresholds.items()},
            "switched_off": sorted(self.disabled),
            "f1": self.f1,
            "f1_lower_bound": self.f1_lower_bound,
            "mamabear_calls_avoided": self.mamabear_calls_avoided,
            "mamabear_tokens_avoided": self.mamabear_tokens_avoided,
            "cost_per_token": self.cost_per_token,
            "cost_fraction": self.cost_fraction,
            "sweep": self.sweep,
        }


def exit_nodes(run: CachedRun) -> list[str]:
    """The exits of ``run``'s circuit: nodes (not switched off) whose handed-on state covers part of the mamabear's
    work, in topological order."""
    topo = run.topology
    covering = {u for (u, v), share in run.covers.items() if v == topo.mamabear and share > 0}
    return [n for n in topo.order if n in covering and n not in topo.disabled]


def exit_edges(run: CachedRun, exits: Sequence[str] | None = None) -> list[Edge]:
    """The edges out of an exit (:func:`exit_nodes` unless ``exits`` names them), in topological order."""
    exits = set(exit_nodes(run) if exits is None else exits)
    return [e for e in run.topology.edges_in_order() if e[0] in exits]


def _figures(run: CachedRun, thresholds: Mapping[Edge, float]) -> dict[str, float]:
    out = run.evaluate(thresholds)
    alone = run.costs.get(run.topology.mamabear, 0.0)
    return {
        "f1": out["f1"],
        "mamabear_calls_avoided": out["mamabear_calls_avoided"],
        "mamabear_tokens_avoided": out["mamabear_tokens_avoided"],
        "cost_per_token": out["cost_per_token"],
        "cost_fraction": out["cost_per_token"] / alone if alone else float("nan"),
    }


def _base(run: CachedRun, budget: Budget, base: TuneResult | Mapping[Edge, float] | None, exits: Sequence[str], seed: int) -> tuple[CachedRun, dict[Edge, float]]:
    """The run routed with the base's switched-off nodes (exits never switched off) and the base's thresholds."""
    if base is None:
        base = optimize(run, budget, seed=seed)
    if isinstance(base, TuneResult):
        thresholds, disabled = dict(base.thresholds), frozenset(base.disabled) - set(exits)
    else:
        thresholds, disabled = dict(base), run.topology.disabled
    missing = [f"{s}->{t}" for s, t in run.topology.edges if (s, t) not in thresholds]
    if missing:
        raise BabybearError(f"exit rules: the base thresholds miss edges {', '.join(missing)}")
    return run.with_topology(replace(run.topology, disabled=disabled)), thresholds


def _exits_of(run: CachedRun, exits: Sequence[str] | None) -> list[str]:
    exits = exit_nodes(run) if exits is None else [n for n in run.topology.order if n in set(exits)]
    if not exits:
        raise BabybearError("exit rules: the circuit has no early exit (no node hands the mamabear a state it resumes from)")
    return exits


def _choose(
    candidates: Sequence[tuple[Any, Scorer, dict[Edge, float]]], safe: tuple[Any, Scorer, dict[Edge, float]], budget: Budget, seed: int
) -> tuple[tuple[Any, Scorer, dict[Edge, float]], float | None]:
    """Learn-then-Test over ``candidates`` (setting, its scorer, its thresholds): those meeting ``budget`` on the
    learn half, Pareto-filtered and safest (costliest) first, tested in fixed sequence on the test half; the last
    passing one (``safe`` when none does) and its F1 lower bound on the test half."""
    scorer = safe[1]
    constrained = sorted(budget.per_label)
    targets = _targets(budget, constrained)
    learn, test = ltt_halves(scorer.run.n, seed)
    learned: list[tuple[Outcome, int]] = []
    for k, (_, sc, th) in enumerate(candidates):
        o = sc.outcome(th, learn)[0]
        if _meets(o, budget):
            learned.append((o, k))
    front = {id(o) for o in pareto([o for o, _ in learned])}
    path = sorted([(o, k) for o, k in learned if id(o) in front], key=lambda ok: -ok[0].cost_per_token)
    chosen = safe
    for _, k in path:
        _, sc, th = candidates[k]
        if not passes(sc.outcome(th, test)[1], targets, budget.confidence):
            break
        chosen = candidates[k]
    lower = _f1_lower_t(chosen[1].outcome(chosen[2], test)[1][:, 0, :].astype(float), budget.confidence)
    return chosen, lower


def _result(rule: str, setting: dict[str, Any], run: CachedRun, thresholds: dict[Edge, float], lower: float | None, sweep: list[dict[str, Any]]) -> RuleResult:
    return RuleResult(rule, setting, thresholds, run.topology.disabled, f1_lower_bound=lower, sweep=sweep, **_figures(run, thresholds))


def shared_threshold(
    run: CachedRun,
    budget: Budget,
    *,
    base: TuneResult | Mapping[Edge, float] | None = None,
    exits: Sequence[str] | None = None,
    n_candidates: int = N_CANDIDATES,
    seed: int = 0,
) -> RuleResult:
    """One threshold ``t`` on every exit edge (The Right Tool for the Job): the cheapest ``t`` that meets ``budget``
    under the Learn-then-Test bound. Candidates: 0, 1 and just above quantiles of the exit edges' pooled scores on
    the learn half. Non-exit edges keep ``base``'s thresholds (default: :func:`optimize` on ``run`` with ``seed``;
    or a threshold mapping); ``exits`` defaults to :func:`exit_nodes`."""
    check_budget(budget, {s.label for p in run.reference for s in p.spans})
    exits = _exits_of(run, exits)
    routed, base_th = _base(run, budget, base, exits, seed)
    edges = exit_edges(routed, exits)
    learn, _ = ltt_halves(run.n, seed)
    pooled = np.concatenate([np.asarray(routed.scores[e])[learn] for e in edges]) if edges else np.zeros(0)
    qs = np.quantile(pooled, np.linspace(0, 1, n_candidates + 1)[1:]) if len(pooled) else []
    ts = sorted({0.0, 1.0} | {float(np.nextafter(q, 1.0)) for q in qs if q < 1.0})
    scorer = Scorer(routed, sorted(budget.per_label))
    candidates = [(t, scorer, {**base_th, **dict.fromkeys(edges, t)}) for t in ts]
    (t, _, thresholds), lower = _choose(candidates, candidates[-1], budget, seed)
    sweep = [{"threshold": c, **_figures(routed, th)} for c, _, th in candidates]
    return _result("shared_threshold", {"threshold": t}, routed, thresholds, lower, sweep)


def patience_agreement(run: CachedRun, patience: int, exits: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Per exit, per row: True where PABEE lets the row leave there, i.e. the exit's spans equal those of each of
    the ``patience`` exits before it on its path (its ancestors among ``exits``). All False for an exit with fewer
    than ``patience`` exits before it (the first exit never stops a row)."""
    if patience < 1:
        raise BabybearError(f"exit rules: patience must be at least 1, got {patience}")
    exits = _exits_of(run, exits)
    out = {}
    for j in exits:
        before = [a for a in run.topology.ancestors_and_self(j) if a in exits and a != j][-patience:]
        agree = np.zeros(run.n, dtype=bool)
        if len(before) == patience:
            mine = [set(p.spans) for p in run.preds[j]]
            agree[:] = [all(set(run.preds[a][i].spans) == mine[i] for a in before) for i in range(run.n)]
        out[j] = agree
    return out


def patience_run(run: CachedRun, patience: int, exits: Sequence[str] | None = None) -> CachedRun:
    """``run`` with each exit edge's gate scores replaced by :func:`patience_agreement` as 1.0 / 0.0, so that with
    :func:`patience_thresholds` the one routing rule (:func:`babybear.routing.goes_on`: on when score < threshold)
    sends on exactly the rows whose answers do not agree."""
    agree = patience_agreement(run, patience, exits)
    scores = dict(run.scores)
    for e in exit_edges(run, list(agree)):
        scores[e] = agree[e[0]].astype(float)
    return CachedRun(run.topology, run.preds, scores, run.costs, run.tokens, run.covers)


def patience_thresholds(run: CachedRun, base: Mapping[Edge, float], exits: Sequence[str] | None = None) -> dict[Edge, float]:
    """``base`` with 0.5 on every exit edge: the threshold that routes :func:`patience_run`'s 0/1 scores."""
    return {**base, **dict.fromkeys(exit_edges(run, exits), 0.5)}


def patience_rule(
    run: CachedRun,
    budget: Budget,
    *,
    base: TuneResult | Mapping[Edge, float] | None = None,
    exits: Sequence[str] | None = None,
    patiences: Sequence[int] | None = None,
    seed: int = 0,
) -> RuleResult:
    """PABEE's patience rule: the smallest (cheapest) patience that meets ``budget`` under the Learn-then-Test bound,
    among ``patiences`` (default 1 .. number of exits - 1); ``{"patience": None}`` when none passes (no exit stops a
    row). Non-exit edges keep ``base``'s thresholds, as in :func:`shared_threshold`."""
    check_budget(budget, {s.label for p in run.reference for s in p.spans})
    exits = _exits_of(run, exits)
    routed, base_th = _base(run, budget, base, exits, seed)
    patiences = sorted(set(range(1, len(exits)) if patiences is None else patiences))
    constrained = sorted(budget.per_label)
    thresholds = patience_thresholds(routed, base_th, exits)
    never = len(exits)  # no exit has this many exits before it: none stops a row
    runs = {p: patience_run(routed, p, exits) for p in [*patiences, never]}
    candidates = [(p, Scorer(runs[p], constrained), thresholds) for p in [*patiences, never]]
    (p, scorer, _), lower = _choose(candidates, candidates[-1], budget, seed)
    sweep = [{"patience": c if c != never else None, **_figures(runs[c], thresholds)} for c, _, _ in candidates]
    return _result("patience", {"patience": p if p != never else None}, scorer.run, thresholds, lower, sweep)


def joint(run: CachedRun, budget: Budget, *, seed: int = 0, result: TuneResult | None = None) -> RuleResult:
    """The default rule's figures in the same form: :func:`optimize` (or its ``result``) on ``run``."""
    result = optimize(run, budget, seed=seed) if result is None else result
    routed = run.with_topology(replace(run.topology, disabled=result.disabled))
    setting = {"thresholds": {f"{s}->{t}": v for (s, t), v in result.thresholds.items()}}
    sweep = [o.to_dict() for o in result.frontier]
    return _result("joint", setting, routed, dict(result.thresholds), result.f1_lower_bound, sweep)


def compare(run: CachedRun, budget: Budget, *, seed: int = 0) -> dict[str, RuleResult]:
    """The three rules side by side on the same cached outputs: ``joint``, ``shared_threshold``, ``patience``."""
    result = optimize(run, budget, seed=seed)
    return {
        "joint": joint(run, budget, seed=seed, result=result),
        "shared_threshold": shared_threshold(run, budget, base=result, seed=seed),
        "patience": patience_rule(run, budget, base=result, seed=seed),
    }
