"""Threshold tuning compared on one fitted circuit: BabyBear's nearest rule, per-edge, and the joint optimizer.

    python benchmarks/optimizer.py trained/news --test data/bbc.test.txt --out benchmarks/results
        [--test-limit 4000] [--eval-limit 1000] [--budgets 0.99 0.95] [--resamples 30] [--audit-fraction 0.2]

Writes ``optimizer.json`` and its PNGs into the ``--out`` folder.

1. Every method at budgets 0.99 and 0.95 on the held-out tuning rows and on BBC test (every node's output on
   the test sentences is cached once and each setting scored exactly by the simulator; each setting is also
   run for real with ``Circuit.evaluate`` on the first ``--eval-limit`` test sentences).
2. Search: exact grid vs coordinate descent for the joint optimizer (cost found, settings scored, seconds).
3. The guarantee: tune on resamples of the tuning rows (with replacement, half their size); the share of
   resamples whose setting keeps F1 >= budget on the whole tuning pool (the population it was drawn from)
   and on BBC test.
4. Drift: the circuit tuned on BBC answers WNUT-16 tweets (first half) under an audit; recalibrate from the
   audit (``Circuit.tune(run=...)``) and score both settings on the second half of the tweets.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from babybear import Budget, Circuit
from babybear import plots
from babybear.tuning.audit import Audit
from babybear.corpus import wnut_sentences
from babybear.tuning.optimizer import optimize
from babybear.routing import CachedRun
from babybear.heldout import Heldout

METHODS = {  # name -> optimize() arguments
    "nearest": {"method": "nearest"},
    "per_edge": {"method": "per_edge"},
    "joint_ltt": {"method": "joint", "bound": "ltt"},
    "joint_bootstrap": {"method": "joint", "bound": "bootstrap"},
}


def cache(circuit: Circuit, texts: list[str], batch_size: int = 256) -> CachedRun:
    """Every node's output and every gate's score on ``texts`` (with each edge's agree_with evidence)."""
    topo = circuit.topology
    preds = {}
    for name in topo.order:
        node = circuit.node(name)
        preds[name] = [p for k in range(0, len(texts), batch_size) for p in node.predict_batch(texts[k : k + batch_size])]
    costs = {n: float(circuit.node(n).cost_ or 0.0) for n in topo.order}
    return Heldout.build(texts, preds, costs, 0, circuit).rescore(circuit).run


def summary(run: CachedRun, thresholds: dict) -> dict:
    e = run.evaluate(thresholds)
    return {"f1": e["f1"], "mamabear_calls_avoided": e["mamabear_calls_avoided"], "cost_per_token": e["cost_per_token"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("circuit", help="fitted circuit folder")
    ap.add_argument("--test", default="data/bbc.test.txt", help="test sentences, one per line")
    ap.add_argument("--test-limit", type=int, default=4000, help="test sentences cached for the simulator")
    ap.add_argument("--eval-limit", type=int, default=1000, help="test sentences run for real per setting")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.99, 0.95])
    ap.add_argument("--resamples", type=int, default=30, help="resamples of the tuning rows for the guarantee")
    ap.add_argument("--audit-fraction", type=float, default=0.2, help="share of babybear answers audited in the drift run")
    ap.add_argument("--out", default="benchmarks/results", help="folder for optimizer.json and the PNGs")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    circuit = Circuit.load(args.circuit)
    circuit.warm_up()
    pool = circuit.heldout_.tuning
    test_texts = [t for t in Path(args.test).read_text(encoding="utf-8").splitlines() if t.strip()][: args.test_limit]
    start = time.perf_counter()
    test = cache(circuit, test_texts)
    print(f"cached {test.n} test sentences in {time.perf_counter() - start:.0f}s; tuning pool {pool.n}", flush=True)
    everything = {e: 1.0 for e in pool.topology.edges}
    results: dict = {
        "command": f"python benchmarks/optimizer.py {args.circuit} --test {args.test} --test-limit {args.test_limit} --eval-limit {args.eval_limit} --resamples {args.resamples} --out {args.out}",
        "circuit": args.circuit,
        "tuning_rows": pool.n,
        "test_sentences": test.n,
        "costs_seconds_per_token": pool.costs,
        "mamabear_alone": {"tuning": summary(pool, everything), "test": summary(test, everything)},
        "budgets": {},
    }

    for b in args.budgets:
        budget = circuit.budget.model_copy(update={"min_entity_f1": b, "per_label": {}})
        row: dict = {}
        for name, kw in METHODS.items():
            r = optimize(pool, budget, **kw)
            circuit.set_thresholds(r.thresholds)
            real = circuit.evaluate(test_texts[: args.eval_limit], progress=False)
            row[name] = {
                "thresholds": r.to_dict()["chosen"]["thresholds"],
                "f1_lower_bound": r.f1_lower_bound,
                "seconds": r.seconds,
                "tuning": summary(pool, r.thresholds),
                "test_simulated": summary(test, r.thresholds),
                "test_real": {k: real[k] for k in ("entity_f1_vs_mamabear", "mamabear_calls_avoided", "wall_time_ratio", "texts")},
                "switch_off": r.details.get("switch_off"),
            }
            if name == "joint_ltt":
                frontier = [o.to_dict() for o in r.frontier]
            print(f"budget {b} {name:>16}: tuning {row[name]['tuning']}, test {row[name]['test_simulated']}", flush=True)
        for search in ("grid", "coordinate"):
            r = optimize(pool, budget, search=search, bound="bootstrap", switch_off=False)
            row[f"search_{search}"] = {"cost_per_token": r.chosen.cost_per_token, "f1": r.chosen.f1, "settings_scored": r.settings_scored, "seconds": r.seconds}
        results["budgets"][str(b)] = row
        others = {k: row[k]["tuning"] for k in ("nearest", "per_edge", "joint_bootstrap")}
        plots.frontier(frontier, row["joint_ltt"]["tuning"], b, out / f"optimizer_frontier_{b}.png", others)

    rng = np.random.default_rng(0)
    guarantee: dict = {}
    for b in args.budgets:
        budget = circuit.budget.model_copy(update={"min_entity_f1": b, "per_label": {}})
        hits = {name: {"pool": [], "test": [], "calls_avoided": []} for name in METHODS}
        for k in range(args.resamples):
            rows = rng.choice(pool.n, pool.n // 2, replace=True)
            sample = pool.subset(rows)
            for name, kw in METHODS.items():
                th = optimize(sample, budget, seed=k, switch_off=False, **kw).thresholds
                hits[name]["pool"].append(pool.evaluate(th)["f1"] >= b)
                hits[name]["test"].append(test.evaluate(th)["f1"] >= b)
                hits[name]["calls_avoided"].append(pool.evaluate(th)["mamabear_calls_avoided"])
        guarantee[str(b)] = {
            name: {"rate_pool": float(np.mean(h["pool"])), "rate_test": float(np.mean(h["test"])), "mean_calls_avoided": float(np.mean(h["calls_avoided"]))}
            for name, h in hits.items()
        }
        print(f"guarantee at {b}: {guarantee[str(b)]}", flush=True)
    results["guarantee"] = {"resamples": args.resamples, "sample_size": pool.n // 2, "confidence": circuit.budget.confidence, "by_budget": guarantee}

    tweets, _ = wnut_sentences()
    half = len(tweets) // 2
    live, later = tweets[:half], tweets[half:]
    circuit.tune(args.budgets[0], method="joint")
    before = dict(circuit.thresholds)
    audit = Audit(circuit, fraction=args.audit_fraction, seed=0)
    audit(live)
    audit.flush()
    report = audit.report()
    later_run = cache(circuit, later)
    circuit.tune(run=audit.cached_run())
    results["drift"] = {
        "tuned_on": "BBC tuning rows, joint, budget " + str(args.budgets[0]),
        "live_tweets": len(live),
        "audit": report,
        "held_out_tweets_before": summary(later_run, before),
        "recalibrated_thresholds": {f"{s}->{t}": v for (s, t), v in circuit.thresholds.items()},
        "held_out_tweets_after": summary(later_run, circuit.thresholds),
        "bbc_test_after": summary(test, circuit.thresholds),
    }
    print(f"drift: {json.dumps(results['drift'])}", flush=True)
    (out / "optimizer.json").write_text(json.dumps(results, indent=2, default=float), encoding="utf-8")
    _plots(results, out)


def _plots(results: dict, out: Path) -> None:
    import matplotlib.pyplot as plt

    budgets = list(results["budgets"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.2
    for k, name in enumerate(METHODS):
        x = np.arange(len(budgets)) + k * width
        axes[0].bar(x, [results["budgets"][b][name]["test_simulated"]["mamabear_calls_avoided"] for b in budgets], width, label=name)
        axes[1].bar(x, [results["guarantee"]["by_budget"][b][name]["rate_pool"] for b in budgets], width, label=name)
    for ax, title in zip(axes, ["BBC test: mamabear calls avoided", "share of resamples meeting the budget"]):
        ax.set_xticks(np.arange(len(budgets)) + 1.5 * width, [f"budget {b}" for b in budgets])
        ax.set_title(title, fontsize=10)
    axes[1].axhline(results["guarantee"]["confidence"], ls="--", color="crimson", lw=1)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "optimizer_methods.png", dpi=110)
    plt.close(fig)
    d = results["drift"]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    bars = {"tweets, BBC thresholds": d["held_out_tweets_before"], "tweets, recalibrated": d["held_out_tweets_after"]}
    ax.bar(list(bars), [v["f1"] for v in bars.values()], color=["tab:red", "tab:green"])
    ax.axhline(d["audit"]["budget"], ls="--", color="black", lw=1)
    lo, hi = d["audit"]["interval"]
    ax.errorbar([0], [d["audit"]["realised_f1"]], yerr=[[d["audit"]["realised_f1"] - lo], [hi - d["audit"]["realised_f1"]]], fmt="ko", label="audit estimate")
    ax.set_ylim(min(v["f1"] for v in bars.values()) - 0.03, 1.0)
    ax.set_ylabel("entity-F1 vs mamabear (held-out tweets)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "optimizer_drift.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
