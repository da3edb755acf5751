"""Early-exit decision rules on cached outputs: one shared threshold (The Right Tool) and PABEE's patience."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from babybear import BabybearError, Budget
from babybear.routing import CachedRun, Topology
from babybear.tuning.exit_rules import (
    compare,
    exit_edges,
    exit_nodes,
    patience_agreement,
    patience_rule,
    patience_run,
    patience_thresholds,
    shared_threshold,
)
from babybear.tuning.optimizer import ltt_halves
from babybear.types import Prediction, Span

EXITS = ("exit3", "exit6", "exit9")
BASE = {("rules", "crf"): 0.99, ("crf", "exit3"): 0.97, ("exit3", "exit6"): 1.0, ("exit6", "exit9"): 1.0, ("exit9", "mama"): 1.0}


def exit_run(n: int = 600, seed: int = 0, exits: tuple[str, ...] = EXITS) -> CachedRun:
    """rules -> crf -> exits at layers 3, 6, 9 of a 12-layer mamabear -> mama. Each node errs on harder sentences,
    deeper exits less; a wrong exit shifts a span's end by its own amount, so two exits agree exactly when both are
    right (or the sentence has no entity). Gate scores are P(agree) with noise. Costs per token: an exit at k
    costs k/12 of the mamabear and covers k/12 of it (and k/j of a deeper exit at j)."""
    rng = np.random.default_rng(seed)
    order = ["rules", "crf", *exits, "mama"]
    edges = list(pairwise(order))
    layer = {e: 3 * (k + 1) for k, e in enumerate(exits)}
    difficulty = rng.random(n)
    preds: dict[str, list[Prediction]] = {name: [] for name in order}
    scores = {e: np.zeros(n) for e in edges}
    for i in range(n):
        ref = [Span(10 * k, 10 * k + 4, str(rng.choice(["PER", "ORG"]))) for k in range(int(rng.integers(0, 3)))]
        preds["mama"].append(Prediction(ref))
        for depth, name in enumerate(order[:-1]):
            p_err = difficulty[i] ** (1 + depth) * 0.9
            wrong = ref and rng.random() < p_err
            spans = [Span(s.start, s.end + 1 + depth, s.label) for s in ref[:1]] + ref[1:] if wrong else ref
            preds[name].append(Prediction(spans))
            scores[edges[depth]][i] = np.clip(1 - p_err + rng.normal(0, 0.05), 1e-6, 1 - 1e-6)
    topo = Topology(order, edges, dict.fromkeys(order), "mama")
    costs = {"rules": 0.001, "crf": 0.01, **{e: layer[e] / 12 for e in exits}, "mama": 1.0}
    covers = {(e, "mama"): layer[e] / 12 for e in exits}
    covers |= {(a, b): layer[a] / layer[b] for a in exits for b in exits if layer[a] < layer[b]}
    return CachedRun(topo, preds, scores, costs, rng.integers(5, 40, n).astype(float), covers)


def test_exits_are_the_nodes_whose_state_the_mamabear_resumes_from():
    run = exit_run(50)
    assert exit_nodes(run) == list(EXITS)
    assert exit_edges(run) == [("exit3", "exit6"), ("exit6", "exit9"), ("exit9", "mama")]


@pytest.mark.parametrize("target", [0.98, 0.95])
def test_shared_threshold_puts_one_t_on_every_exit_edge_and_meets_the_budget(target):
    run = exit_run()
    budget = Budget(min_entity_f1=target, confidence=0.9)
    out = shared_threshold(run, budget, base=BASE)
    t = out.setting["threshold"]
    assert 0 < t < 1  # the exits take some sentences: the rule is not the safe fallback here
    assert {e: out.thresholds[e] for e in exit_edges(run)} == dict.fromkeys(exit_edges(run), t)
    assert {e: out.thresholds[e] for e in BASE if e[0] not in EXITS} == {("rules", "crf"): 0.99, ("crf", "exit3"): 0.97}
    # the figures are the simulator's for that setting, priced as the optimizer prices it
    ref = run.evaluate(out.thresholds)
    assert out.f1 == pytest.approx(ref["f1"]) and out.cost_per_token == pytest.approx(ref["cost_per_token"])
    assert out.cost_fraction == pytest.approx(ref["cost_per_token"] / run.costs["mama"])
    assert out.mamabear_calls_avoided == pytest.approx(ref["mamabear_calls_avoided"])
    # it meets the budget on the rows it was chosen on (the learn half) and on all tuning rows
    learn, _ = ltt_halves(run.n, 0)
    assert run.evaluate(out.thresholds, learn)["f1"] >= target
    assert out.f1 >= target
    assert out.f1_lower_bound is not None and out.f1_lower_bound <= out.f1
    # cheaper than sending every sentence that reaches the exits on to the mamabear
    safe = run.evaluate({**BASE, **dict.fromkeys(exit_edges(run), 1.0)})
    assert out.cost_per_token < safe["cost_per_token"]


def test_shared_threshold_falls_back_to_no_exit_when_nothing_meets_the_budget():
    run = exit_run(200)
    out = shared_threshold(run, Budget(min_entity_f1=1.0, confidence=0.95), base=BASE)
    assert out.setting == {"threshold": 1.0}
    assert all(out.thresholds[e] == 1.0 for e in exit_edges(run))


def test_shared_threshold_keeps_the_joint_optimizers_other_edges_by_default():
    from babybear.tuning.optimizer import optimize

    run = exit_run(300)
    budget = Budget(min_entity_f1=0.95, confidence=0.9)
    joint = optimize(run, budget)
    out = shared_threshold(run, budget)
    for e in run.topology.edges:
        if e not in exit_edges(run):
            assert out.thresholds[e] == joint.thresholds[e]


def test_patience_stops_exactly_the_rows_whose_answers_agree():
    run = exit_run(400)
    same = {a: {b: np.array([set(run.preds[a][i].spans) == set(run.preds[b][i].spans) for i in range(run.n)]) for b in EXITS} for a in EXITS}
    one = patience_agreement(run, 1)
    assert not one["exit3"].any()  # the first exit never stops a row
    assert (one["exit6"] == same["exit6"]["exit3"]).all()
    assert (one["exit9"] == same["exit9"]["exit6"]).all()
    assert 0 < one["exit6"].mean() < 1
    two = patience_agreement(run, 2)
    assert not two["exit3"].any() and not two["exit6"].any()
    assert (two["exit9"] == (same["exit9"]["exit6"] & same["exit9"]["exit3"])).all()

    # routed by the one routing rule: every row that reaches exit6 leaves there iff exit3 and exit6 agree
    th = patience_thresholds(run, BASE)
    reach = patience_run(run, 1).reach(th)
    at6 = reach["exit6"]
    assert (reach["exit6"] == reach["exit3"]).all()  # exit3 passes everyone on
    assert (reach["exit9"] == (at6 & ~one["exit6"])).all()
    assert (reach["mama"] == (reach["exit9"] & ~one["exit9"])).all()
    # non-exit edges route as their base thresholds say
    assert (reach["crf"] == (run.scores[("rules", "crf")] < 0.99)).all()
    assert (reach["exit3"] == (reach["crf"] & (run.scores[("crf", "exit3")] < 0.97))).all()


def test_patience_prices_an_exit_at_k_over_l_and_the_resumed_mamabear_at_the_rest():
    run = exit_run(300)
    th = {**BASE, ("rules", "crf"): 1.0, ("crf", "exit3"): 1.0}  # every row reaches the exits
    routed = patience_run(run, 1)
    out = routed.evaluate(patience_thresholds(run, th))
    agree6, agree9 = patience_agreement(run, 1)["exit6"], patience_agreement(run, 1)["exit9"]
    # exit@6 costs 6/12; exit@9 resumes to 9/12; the mamabear's rest makes the full 12/12
    per_unit = 0.011 + np.where(agree6, 6 / 12, np.where(agree9, 9 / 12, 1.0))
    assert out["cost_per_token"] == pytest.approx(float(per_unit @ run.tokens / run.tokens.sum()))
    assert out["mamabear_calls_avoided"] == pytest.approx(float((agree6 | agree9).mean()))


def test_patience_rule_chooses_the_cheapest_patience_that_meets_the_budget():
    run = exit_run(800)
    budget = Budget(min_entity_f1=0.9, confidence=0.9)
    out = patience_rule(run, budget, base=BASE)
    assert out.setting["patience"] in (1, 2, None)
    assert [s["patience"] for s in out.sweep] == [1, 2, None]
    costs = [s["cost_per_token"] for s in out.sweep]
    assert costs[0] <= costs[1] <= costs[2]  # more patience, fewer rows leave
    chosen = next(s for s in out.sweep if s["patience"] == out.setting["patience"])
    assert out.cost_per_token == pytest.approx(chosen["cost_per_token"]) and out.f1 >= 0.9
    assert {e: out.thresholds[e] for e in [("rules", "crf"), ("crf", "exit3")]} == {("rules", "crf"): 0.99, ("crf", "exit3"): 0.97}
    strict = patience_rule(run, Budget(min_entity_f1=1.0, confidence=0.95), base=BASE)
    assert strict.setting == {"patience": None} and strict.mamabear_calls_avoided == pytest.approx(
        run.evaluate({**BASE, **dict.fromkeys(exit_edges(run), 1.0)})["mamabear_calls_avoided"]
    )


def test_compare_reports_the_three_rules_on_the_same_rows():
    run = exit_run(300)
    out = compare(run, Budget(min_entity_f1=0.95, confidence=0.9))
    assert set(out) == {"joint", "shared_threshold", "patience"}
    for r in out.values():
        assert 0 < r.cost_fraction <= 1 and set(r.to_dict()) >= {"f1", "mamabear_calls_avoided", "cost_fraction"}


def test_a_circuit_without_exits_is_a_clear_error():
    run = exit_run(50)
    no_exits = CachedRun(run.topology, run.preds, run.scores, run.costs, run.tokens, {})
    with pytest.raises(BabybearError, match="no early exit"):
        shared_threshold(no_exits, Budget(min_entity_f1=0.95), base=BASE)
    with pytest.raises(BabybearError, match="patience must be at least 1"):
        patience_agreement(run, 0)
