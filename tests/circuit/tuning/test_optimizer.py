"""The joint threshold optimizer on cached outputs: exact scoring, the bound, per-label budgets, bad budgets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from babybear import BabybearError, Budget
from babybear.tuning.optimizer import Scorer, _optimize_one, candidates, optimize
from babybear.routing import CachedRun, Topology
from babybear.types import Prediction, Span


def synthetic_run(n: int, seed: int = 0, chain: tuple[str, ...] = ("rules", "crf")) -> CachedRun:
    """A chain of babybears before a mamabear with known difficulty: each node errs more on harder sentences,
    later nodes less, and each gate scores P(agree) with noise. Costs grow along the chain."""
    rng = np.random.default_rng(seed)
    order = [*chain, "mama"]
    edges = list(zip(order, order[1:]))
    difficulty = rng.random(n)
    ref, preds = [], {name: [] for name in order}
    scores = {e: np.zeros(n) for e in edges}
    for i in range(n):
        spans = [Span(10 * k, 10 * k + 4, str(rng.choice(["PER", "ORG", "LOC"], p=[0.3, 0.5, 0.2]))) for k in range(int(rng.integers(0, 4)))]
        ref.append(Prediction(spans))
        for depth, name in enumerate(chain):
            p_err = difficulty[i] ** (1 + 2 * depth) * 0.9
            wrong = [s for s in spans if rng.random() < p_err]
            out = [s for s in spans if s not in wrong] + [Span(s.start, s.end + 1, s.label) for s in wrong[:1]]
            preds[name].append(Prediction(out, {"d": float(difficulty[i])}))
            if depth < len(chain):
                scores[edges[depth]][i] = np.clip(1 - p_err + rng.normal(0, 0.1), 1e-6, 1 - 1e-6)
    preds["mama"] = ref
    topo = Topology(order, edges, {name: None for name in order}, "mama")
    costs = {name: 10.0 ** depth for depth, name in enumerate(order)}
    return CachedRun(topo, preds, scores, costs, rng.integers(5, 40, n).astype(float))


@pytest.mark.parametrize("switched_off", [frozenset(), frozenset({"b"})])
def test_vectorised_scores_equal_the_simulator(switched_off):
    run = synthetic_run(400, chain=("a", "b", "c"))
    run = run.with_topology(replace(run.topology, disabled=switched_off))
    scorer = Scorer(run, ["PER"])
    rng = np.random.default_rng(1)
    for _ in range(20):
        th = {e: float(rng.choice([0.0, rng.random(), 1.0])) for e in run.topology.edges}
        ours, _ = scorer.outcome(th)
        ref = run.evaluate(th)
        assert ours.f1 == pytest.approx(ref["f1"])
        assert ours.cost_per_token == pytest.approx(ref["cost_per_token"])
        assert ours.mamabear_calls_avoided == pytest.approx(ref["mamabear_calls_avoided"])
        tp, fp, fn = ref["per_label"].get("PER", [0, 0, 0])
        assert ours.per_label_f1["PER"] == pytest.approx(1.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))


def test_answered_shares_count_each_unit_at_the_last_node_it_visited():
    run = synthetic_run(300, chain=("a", "b", "c"))
    run = run.with_topology(replace(run.topology, disabled=frozenset({"b"})))
    th = {("a", "b"): 0.5, ("b", "c"): 0.0, ("c", "mama"): 0.7}
    out = run.evaluate(th)
    score_a, score_c = run.scores[("a", "b")], run.scores[("c", "mama")]
    assert out["answered"]["a"] == pytest.approx(np.mean(score_a >= 0.5))
    assert out["answered"]["b"] == 0.0  # switched off: passes every unit on
    assert out["answered"]["c"] == pytest.approx(np.mean((score_a < 0.5) & (score_c >= 0.7)))
    assert out["answered"]["mama"] == pytest.approx(1 - out["mamabear_calls_avoided"])
    assert sum(out["answered"].values()) == pytest.approx(1.0)


def test_candidates_of_some_rows_are_those_rows_own_quantiles():
    from babybear.tuning.optimizer import candidates

    run = synthetic_run(400)
    rows = np.arange(0, 400, 2)
    assert candidates(run, 20, rows) == candidates(run.subset(rows), 20) != candidates(run, 20)


@pytest.mark.parametrize("bound", ["ltt", "bootstrap"])
@pytest.mark.parametrize("target", [0.99, 0.95])
def test_chosen_setting_meets_the_bound_on_its_own_data_and_saves(bound, target):
    run = synthetic_run(1500)
    result = optimize(run, Budget(min_entity_f1=target), bound=bound)
    assert result.chosen.f1 >= target
    assert result.f1_lower_bound is not None and result.f1_lower_bound >= target - 1e-6
    assert result.chosen.mamabear_calls_avoided > {0.99: 0.05, 0.95: 0.4}[target]  # seeds 0-7 average 0.15 and 0.59 with ltt
    assert result.chosen.cost_per_token < run.evaluate({e: 1.0 for e in run.topology.edges})["cost_per_token"]
    costs = [o.cost_per_token for o in result.frontier]
    assert costs == sorted(costs) and [o.f1 for o in result.frontier] == sorted(o.f1 for o in result.frontier)


def test_joint_saves_at_least_as_much_as_per_edge_at_a_met_budget():
    run = synthetic_run(1200)
    joint = optimize(run, Budget(min_entity_f1=0.97), bound="bootstrap", switch_off=False)
    per_edge = optimize(run, Budget(min_entity_f1=0.97), method="per_edge")
    nearest = optimize(run, Budget(min_entity_f1=0.97), method="nearest")
    assert joint.chosen.f1 >= 0.97
    assert joint.chosen.cost_per_token <= per_edge.chosen.cost_per_token or per_edge.chosen.f1 < 0.97
    assert abs(nearest.chosen.f1 - 0.97) <= abs(per_edge.chosen.f1 - 0.97) + 1e-9


def test_guarantee_holds_over_resamples_at_about_the_stated_rate():
    """Tune on small samples drawn from a large pool; the pool's F1 is the 'population' F1."""
    pool = synthetic_run(3000, seed=3)
    target, confidence = 0.97, 0.9
    rng = np.random.default_rng(0)
    ok = []
    for k in range(20):
        rows = rng.choice(pool.n, 500, replace=True)
        result = optimize(pool.subset(rows), Budget(min_entity_f1=target, confidence=confidence), seed=k, n_candidates=8, switch_off=False)
        ok.append(pool.evaluate(result.thresholds)["f1"] >= target)
    assert np.mean(ok) >= confidence - 0.1  # 20 draws: allow sampling error around the stated rate


def test_per_label_budget_is_honoured():
    run = synthetic_run(1500)
    loose = optimize(run, Budget(min_entity_f1=0.9), bound="bootstrap", switch_off=False)
    strict = optimize(run, Budget(min_entity_f1=0.9, per_label={"PER": 0.995}), bound="bootstrap", switch_off=False)
    assert strict.chosen.per_label_f1["PER"] >= 0.995
    assert strict.chosen.f1 >= 0.9
    assert strict.chosen.cost_per_token >= loose.chosen.cost_per_token


def test_coordinate_descent_matches_the_grid_closely_on_three_edges():
    run = synthetic_run(800, chain=("a", "b", "c"))
    grid = optimize(run, Budget(min_entity_f1=0.97), search="grid", bound="bootstrap", n_candidates=8)
    coord = optimize(run, Budget(min_entity_f1=0.97), search="coordinate", bound="bootstrap", n_candidates=8)
    assert coord.chosen.f1 >= 0.97
    assert coord.chosen.cost_per_token <= 1.25 * grid.chosen.cost_per_token
    assert coord.settings_scored < grid.settings_scored


@pytest.mark.parametrize(
    "budget, message",
    [
        (Budget(min_entity_f1=1.5), "min_entity_f1 must be in"),
        (Budget(min_entity_f1=0.0), "min_entity_f1 must be in"),
        (Budget(confidence=1.0), "confidence must be in"),
        (Budget(per_label={"PERSN": 0.99}), "PERSN: the mamabear never used this label here; labels: LOC, ORG, PER"),
        (Budget(per_label={"PER": 2.0}), "per_label.PER must be in"),
    ],
)
def test_bad_budgets_are_rejected_with_a_clear_error(budget, message):
    with pytest.raises(BabybearError, match=message.replace(".", r"\.")):
        optimize(synthetic_run(100), budget)


def test_unknown_method_is_rejected():
    with pytest.raises(BabybearError, match="known: joint, per_edge, nearest"):
        optimize(synthetic_run(100), Budget(), method="magic")  # type: ignore[arg-type]


def test_switching_off_a_node_is_priced_and_taken_when_it_pays():
    run = synthetic_run(800, chain=("a", "b"))
    budget = Budget(min_entity_f1=0.95)
    result = optimize(run, budget, bound="bootstrap", n_candidates=10)
    off = result.details["switch_off"]["b"]
    assert off["thresholds"]["b->mama"] == 1.0 and off["f1"] >= 0.95  # b passes everyone on; a -> b decides
    split = budget.model_copy(update={"confidence": result.details["confidence_per_circuit"]})
    full = optimize(run, split, bound="bootstrap", n_candidates=10, switch_off=False)
    assert off["saving"] == pytest.approx(1 - off["cost_per_token"] / full.chosen.cost_per_token)
    cheapest = min([full.chosen.cost_per_token] + [o["cost_per_token"] for o in result.details["switch_off"].values()])
    assert result.chosen.cost_per_token == pytest.approx(cheapest)
    assert ("b" in result.disabled) == (off["saving"] > 0)
    if "b" in result.disabled:  # the thresholds are the full circuit's, as tuned with b off
        assert result.thresholds[("a", "b")] == off["thresholds"]["a->b"]
    assert "switch_off" not in full.details


def test_an_edge_out_of_a_switched_off_node_is_not_searched():
    run = synthetic_run(200, chain=("a", "b", "c"))
    grid = candidates(run.with_topology(replace(run.topology, disabled=frozenset({"b"}))), 10)
    assert grid[("b", "c")] == [1.0] and len(grid[("a", "b")]) > 2 and len(grid[("c", "mama")]) > 2


def test_a_node_switched_off_in_a_diamond_replays_as_tuned():
    """a -> b -> mama plus a -> mama: with b off, the chosen thresholds must route live as they were priced."""
    run = synthetic_run(800, chain=("a", "b"))
    rng = np.random.default_rng(3)
    edges = [*run.topology.edges, ("a", "mama")]
    scores = {**run.scores, ("a", "mama"): np.clip(run.scores[("a", "b")] + rng.normal(0, 0.2, run.n), 1e-6, 1 - 1e-6)}
    run = CachedRun(replace(run.topology, edges=edges), run.preds, scores, run.costs, run.tokens)
    off = run.with_topology(replace(run.topology, disabled=frozenset({"b"})))
    result = _optimize_one(off, Budget(min_entity_f1=0.95), method="joint", search="auto", bound="bootstrap", n_candidates=10, seed=0)
    assert 0 < result.chosen.mamabear_calls_avoided < 1
    replayed = off.evaluate(result.thresholds)
    assert replayed["mamabear_calls_avoided"] == pytest.approx(result.chosen.mamabear_calls_avoided)
    assert replayed["f1"] == pytest.approx(result.chosen.f1)


@pytest.mark.parametrize("target", [0.99, 0.95])
def test_learn_then_test_never_lands_below_budget_on_its_own_rows_even_when_small(target):
    for seed in range(25):
        run = synthetic_run(160, seed=seed)
        result = optimize(run, Budget(min_entity_f1=target), switch_off=False)
        assert result.chosen.f1 >= target, f"seed {seed}"


def test_a_sample_without_entities_is_no_evidence_for_the_budget():
    """All-zero margins (no entity of the constraint on the test half, none predicted) must not pass the test:
    before, a zero-variance sample got p = 0 and LTT sent nothing to the mamabear with a lower bound of 1."""
    from babybear.tuning.optimizer import _t_pvalue

    assert _t_pvalue(np.zeros(50)) == 1.0 and _t_pvalue(np.full(50, 0.02)) == 0.0
    base = synthetic_run(200)
    empty = CachedRun(base.topology, {k: [Prediction([]) for _ in v] for k, v in base.preds.items()}, base.scores, base.costs, base.tokens)
    result = optimize(empty, Budget(min_entity_f1=0.99), switch_off=False)
    assert result.chosen.mamabear_calls_avoided == 0.0 and result.f1_lower_bound < 0.99


def test_a_per_label_budget_for_a_label_absent_from_the_test_half_is_not_passed_vacuously():
    run = synthetic_run(400)
    perm = np.random.default_rng(0).permutation(run.n)  # optimize's split at seed 0
    learn = set(perm[: run.n // 2].tolist())
    def with_rare(preds):  # a RARE entity, found by every node, on some learn-half rows only
        return [Prediction([*p.spans, Span(500, 504, "RARE")]) if i in learn and i % 7 == 0 else p for i, p in enumerate(preds)]

    preds = {name: with_rare(p) for name, p in run.preds.items()}
    rare = CachedRun(run.topology, preds, run.scores, run.costs, run.tokens)
    result = optimize(rare, Budget(min_entity_f1=0.5, per_label={"RARE": 0.99}), switch_off=False)
    assert result.chosen.mamabear_calls_avoided == 0.0  # nothing on the test half says RARE is found
