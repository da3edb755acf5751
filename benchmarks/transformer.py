"""What babybear saves on a transformer mamabear (issues 14 and 15): one command, one run, the same texts for all.

The mamabear is ``mpnet-news-ner`` (12 layers, hidden 768; ``babybear models build mpnet-news-ner``). On BBC test
sentences (articles no fit saw) it measures

- (a) ``naive``: the mamabear through ``transformers.pipeline("token-classification")``, as a user writes it today;
- (b) ``scheduler``: the mamabear node alone through babybear's scheduler (``dtype: auto``: bf16 autocast on a CPU
  with AMX / AVX512-BF16), and ``scheduler_fp32``, the same in float32, to tell the scheduler's gain from bf16's;
- (c) the circuit ``circuits/news-early-exit.yaml`` (rules → CRF → student → exit@3 → exit@6 → mamabear), fitted
  once on BBC train sentences and tuned at each budget in three shapes from the same held-out cache:
  ``cascade`` (the exits kept off: ``circuits/news-transformer.yaml``), ``exits`` (rules, CRF and student kept off)
  and ``both`` (the tuner switches off whatever does not pay).

For each: texts/s, tokens/s (whitespace tokens), wall-time ratio against (b), mamabear calls avoided, mamabear tokens
avoided, mamabear layer-tokens avoided (a sentence that leaves at exit@k used k of the 12 layers), entity-F1
against (b), and the simulator's figures on the same texts from every node's cached answers (they must equal the
live ones). Then the same tuned circuits on WNUT-16 tweets, a domain they were not fitted on, against the mamabear
on them, with what an audit of ``--audit-fraction`` of the babybears' answers there reports (does it raise the
drift alarm?); and the exits' decision rules (``babybear.tuning.exit_rules``: the joint optimizer, one shared threshold,
PABEE's patience) chosen on the held-out tuning rows and scored on the BBC test texts. Writes JSON and a plot.

    python benchmarks/transformer.py                       # ~25 minutes on 2 quiet CPU cores (the fit ~11 of them)
    python benchmarks/transformer.py --train 400 --test 60 --ood 40 --folder /tmp/tr-smoke --out /tmp/tr-smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from babybear import Circuit
from babybear.corpus import bbc_sentences, wnut_sentences
from babybear.doors.bench import measure, naive_path, say
from babybear.errors import BabybearError
from babybear.heldout import Heldout
from babybear.metrics import entity_f1
from babybear.nodes.mamabear_hf import HFTokenClassifier
from babybear.scheduler import Scheduler
from babybear.text import n_tokens
from babybear.tuning.audit import Audit
from babybear.types import Prediction

SHAPES = {"cascade": ["exit3", "exit6"], "exits": ["rules", "crf", "student"], "both": []}


def fit_or_load(folder: Path, train: list[str], seed: int) -> tuple[Circuit, float | None]:
    """The news-early-exit circuit fitted on ``train`` (saved in ``folder``), or the one saved there before."""
    if (folder / "circuit.yaml").is_file():
        say(f"loading the circuit fitted before from {folder}")
        return Circuit.load(folder), None
    say(f"fitting circuits/news-early-exit.yaml on {len(train):,} BBC train sentences")
    start = time.perf_counter()
    circuit = Circuit.from_yaml("news-early-exit").fit(train, seed=seed)
    seconds = time.perf_counter() - start
    circuit.save(folder)
    return circuit, seconds


def layers_used(circuit: Circuit, nodes: list[str]) -> np.ndarray:
    """Per answer, the share of the mamabear's layers its sentence ran: k/L when it left at exit@k (what the exit's
    state covers of the mamabear), 1 at the mamabear, 0 at a babybear ahead of the exits."""
    mama = circuit.mamabear
    share = {s: c for (s, t), c in circuit.covers().items() if t == mama}
    return np.array([1.0 if n == mama else share.get(n, 0.0) for n in nodes])


def figures(circuit: Circuit, texts: list[str], answers: list[Any], reference: list[tuple], units: int, stats: dict) -> dict[str, Any]:
    mama = circuit.mamabear
    tokens = np.array([n_tokens(t) for t in texts], dtype=float)
    nodes = [a.node for a in answers]
    to_mama = np.array([n == mama for n in nodes])
    return {
        "entity_f1_vs_mamabear": entity_f1([a.spans for a in answers], reference),
        "mamabear_calls_avoided": 1.0 - stats[mama]["texts"] / max(units, 1),
        "mamabear_tokens_avoided": 1.0 - float(tokens[to_mama].sum() / tokens.sum()),
        "mamabear_layer_tokens_avoided": 1.0 - float((tokens * layers_used(circuit, nodes)).sum() / tokens.sum()),
        "texts_answered_per_node": {n: nodes.count(n) for n in circuit.topology.order},
        "node_seconds": {n: round(s["seconds"], 3) for n, s in stats.items()},
        "errors": sum(a.error is not None for a in answers),
    }


def node_costs(circuit: Circuit, texts: list[str], batch_size: int) -> dict[str, float]:
    """Each node's seconds per token on ``texts`` run alone through the scheduler (an exit from its first layer), as
    fit measures them, but here on the quiet machine that times the circuits (the fit ran beside other jobs)."""
    tokens = sum(n_tokens(t) for t in texts)
    costs = {}
    with Scheduler(circuit, batch_size) as scheduler:
        for name in circuit.topology.order:
            scheduler.predict(name, texts[:16])
            start = time.perf_counter()
            scheduler.predict(name, texts)
            costs[name] = (time.perf_counter() - start) / tokens
    return costs


def cached_run(circuit: Circuit, texts: list[str], reference: list[tuple], batch_size: int, costs: dict[str, float]) -> Heldout:
    """Every node's answers on ``texts`` (the mamabear's are ``reference``), scored by the circuit's gates: what
    the simulator and the decision rules replay."""
    preds: dict[str, list[Prediction]] = {}
    with Scheduler(circuit, batch_size, progress=True) as scheduler:
        for name in circuit.topology.order:
            if name != circuit.mamabear:
                preds[name] = scheduler.predict(name, texts).preds
    preds[circuit.mamabear] = [Prediction(list(r), {}) for r in reference]
    return Heldout.build(texts, preds, costs, 0, circuit).rescore(circuit)


def decision_rules(circuit: Circuit, test: Heldout, budgets: list[float], costs: dict[str, float]) -> dict[str, Any]:
    """The exits' decision rules (:mod:`babybear.tuning.exit_rules`), each chosen on the held-out tuning rows with
    only the exits on, then replayed on ``test`` (patience has no live routing: the simulator is the only way to
    run it, and it equals live routing for the threshold rules)."""
    from babybear.tuning import exit_rules

    topo = replace(circuit.topology, disabled=frozenset(SHAPES["exits"]))
    tuning, scored = replace(circuit.heldout_.tuning.with_topology(topo), costs=costs), test.run.with_topology(topo)
    exits = exit_rules.exit_nodes(scored)
    tokens = scored.tokens.astype(float)
    out: dict[str, Any] = {}
    for b in budgets:
        budget = circuit.budget.model_copy(update={"min_entity_f1": b})
        for rule, r in exit_rules.compare(tuning, budget).items():
            run = scored.with_topology(replace(topo, disabled=r.disabled))
            if rule == "patience":
                run = exit_rules.patience_run(run, r.setting["patience"] or len(exits), exits)
            fig = run.evaluate(r.thresholds)
            reach = run.reach(r.thresholds)
            last = [run.topology.visited(reach, i)[-1] for i in range(run.n)]
            out[f"{rule}@{b}"] = {
                "setting": r.setting,
                "switched_off": sorted(r.disabled),
                "tuning_rows": {"f1": r.f1, "f1_lower_bound": r.f1_lower_bound, "mamabear_calls_avoided": r.mamabear_calls_avoided, "cost_fraction": r.cost_fraction},
                "test": {
                    "entity_f1_vs_mamabear": fig["f1"],
                    "mamabear_calls_avoided": fig["mamabear_calls_avoided"],
                    "mamabear_tokens_avoided": fig["mamabear_tokens_avoided"],
                    "mamabear_layer_tokens_avoided": 1.0 - float((tokens * layers_used(circuit, last)).sum() / tokens.sum()),
                    "cost_fraction": fig["cost_per_token"] / run.costs[circuit.mamabear],
                    "answered": fig["answered"],
                },
            }
    return out


def retuned_on_audit(
    circuit: Circuit, audit: Audit, budget: float, off: list[str], costs: dict[str, float], ood: list[str], ood_ref: list[tuple], batch_size: int
) -> dict[str, Any]:
    """What the production remedy for drift gives: the thresholds re-tuned on the audited tweets (a uniform sample
    of that traffic, every node's answer on it), scored on the tweets the audit did not see."""
    checked = audit.checked()
    try:
        circuit.tune(budget, run=checked.run, costs=costs, off=off)
    except BabybearError as err:
        return {"error": str(err)}
    seen = set(checked.texts)
    rest = [i for i, t in enumerate(ood) if t not in seen]
    with Scheduler(circuit, batch_size) as s:
        answers, stats = s.run([ood[i] for i in rest])
    return {
        "audited_texts": len(seen), "scored_texts": len(rest),
        "entity_f1_vs_mamabear": entity_f1([a.spans for a in answers], [ood_ref[i] for i in rest]),
        "mamabear_calls_avoided": 1.0 - stats[circuit.mamabear]["texts"] / max(len(rest), 1),
        "enabled": [n for n in circuit.topology.order if circuit.slot(n).enabled],
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    train, test = bbc_sentences()
    if args.fit_only:
        return {"fit": {"train_sentences": args.train, "seconds": fit_or_load(args.folder, train[: args.train], args.seed)[1]}}
    texts = [t for t in test if t.strip()][: args.test]
    ood = [t for t in wnut_sentences()[0] if t.strip()][: args.ood]
    tokens = sum(n_tokens(t) for t in texts)
    circuit, fit_seconds = fit_or_load(args.folder, train[: args.train], args.seed)
    mama = circuit.mamabear
    node = circuit.node(mama)
    say("warming up every model (untimed)")
    circuit.warm_up()
    naive = naive_path(node)
    fp32 = HFTokenClassifier(**{**node.params.model_dump(), "dtype": "float32"})
    alone = Circuit("mamabear-alone").add(mama, node)
    alone32 = Circuit("mamabear-alone-fp32").add(mama, fp32)
    for c in (alone, alone32, circuit):
        c.warm_up()
        with Scheduler(c, args.batch_size) as s:
            s.run(texts[:32])
    naive(texts[:32])
    say("every node's cost per token on 400 held-out warm-up texts, for the tuner")
    costs = node_costs(circuit, circuit.heldout_.texts[:400], args.batch_size)
    say("  " + ", ".join(f"{n} {c / costs[mama]:.3f}" for n, c in costs.items()) + " of the mamabear")
    modes: dict[str, Any] = {}

    say("[1/5] (a) the mamabear through transformers.pipeline")
    modes["naive"], naive_spans = measure("naive", lambda: naive(texts), texts, tokens, args.price_per_hour, args.repeats)
    say("[2/5] (b) the mamabear alone through the scheduler, bf16 (auto) and float32")
    with Scheduler(alone, args.batch_size) as s:
        modes["scheduler"], (ref_answers, alone_stats) = measure("scheduler", lambda: s.run(texts), texts, tokens, args.price_per_hour, args.repeats)
    with Scheduler(alone32, args.batch_size) as s:
        modes["scheduler_fp32"], (fp32_answers, _) = measure("scheduler_fp32", lambda: s.run(texts), texts, tokens, args.price_per_hour, args.repeats)
    reference = [a.spans for a in ref_answers]
    units = alone_stats[mama]["texts"]
    modes["naive"]["entity_f1_vs_mamabear"] = entity_f1(naive_spans, reference)
    modes["scheduler_fp32"]["entity_f1_vs_mamabear"] = entity_f1([a.spans for a in fp32_answers], reference)
    modes["scheduler_fp32"]["same_spans"] = float(np.mean([a.spans == r for a, r in zip(fp32_answers, reference)]))
    modes["scheduler"]["entity_f1_vs_mamabear"] = 1.0
    base = modes["scheduler"]["wall_seconds"]

    say("[3/5] every node's answers on the test texts, for the simulator and the decision rules")
    test_cache = cached_run(circuit, texts, reference, args.batch_size, costs)
    test_cache.save(args.folder.parent / f"{args.folder.name}-test-cache.json")
    say(f"[4/5] the mamabear alone on {len(ood)} WNUT-16 tweets (out of domain)")
    with Scheduler(alone, args.batch_size) as s:
        ood_alone, ood_alone_stats = s.run(ood)
    ood_ref, ood_units = [a.spans for a in ood_alone], ood_alone_stats[mama]["texts"]

    say("[5/5] (c) the circuit, per shape and budget")
    circuits: dict[str, Any] = {}
    for shape, off in SHAPES.items():
        for budget in args.budgets:
            key = f"{shape}@{budget}"
            circuit.tune(budget, off=off, costs=costs)
            with Scheduler(circuit, args.batch_size) as s:
                timed, (answers, stats) = measure(key, lambda: s.run(texts), texts, tokens, args.price_per_hour, args.repeats)
                ood_answers, ood_stats = s.run(ood)
            sim = test_cache.run.with_topology(circuit.topology).evaluate(circuit.thresholds)
            live = figures(circuit, texts, answers, reference, units, stats)
            circuits[key] = {
                **timed, **live,
                "wall_time_ratio_vs_scheduler": timed["wall_seconds"] / base,
                "enabled": [n for n in circuit.topology.order if circuit.slot(n).enabled],
                "thresholds": {f"{s}->{t}": v for (s, t), v in circuit.thresholds.items()},
                "tuning": {k: v for k, v in circuit.report_["tuning"].items() if k in ("f1", "mamabear_calls_avoided", "mamabear_tokens_avoided", "cost_per_token")},
                "f1_lower_bound": circuit.report_["optimizer"].get("f1_lower_bound"),
                "simulated": {"entity_f1_vs_mamabear": sim["f1"], "mamabear_calls_avoided": sim["mamabear_calls_avoided"], "answered": sim["answered"]},
                "out_of_domain": figures(circuit, ood, ood_answers, ood_ref, ood_units, ood_stats),
            }
            audit = Audit(circuit, fraction=args.audit_fraction, batch_size=args.batch_size, seed=args.seed)
            audit(ood)
            audit.flush()
            circuits[key]["out_of_domain"]["audit"] = audit.report()
            circuits[key]["out_of_domain"]["retuned_on_audit"] = retuned_on_audit(circuit, audit, budget, off, costs, ood, ood_ref, args.batch_size)
            c = circuits[key]
            say(f"  {key}: F1 {c['entity_f1_vs_mamabear']:.4f}, calls avoided {c['mamabear_calls_avoided']:.1%}, tokens avoided "
                f"{c['mamabear_tokens_avoided']:.1%}, layer-tokens avoided {c['mamabear_layer_tokens_avoided']:.1%}, wall {c['wall_time_ratio_vs_scheduler']:.2f} "
                f"of (b); WNUT F1 {c['out_of_domain']['entity_f1_vs_mamabear']:.4f}, audit alarm {c['out_of_domain']['audit']['alarm']}, "
                f"re-tuned on the audit: {c['out_of_domain']['retuned_on_audit']}")
    rules = decision_rules(circuit, test_cache, args.budgets, costs)
    return {
        "command": " ".join(["python", "benchmarks/transformer.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(), "torch_threads": _threads()},
        "mamabear": f"HFTokenClassifier(model={node.params.model!r}, dtype={node.params.dtype!r})",
        "fit": {
            "train_sentences": args.train, "seconds": fit_seconds, "folder": str(args.folder), "warm_up": circuit.report_.get("warm_up"),
            "babybear_f1_alone_on_tuning_rows": circuit.report_.get("babybear_f1_alone"),
            "costs_measured_in_fit": circuit.heldout_.run.costs,
        },
        "costs_tuned_on": {"seconds_per_token": costs, "fraction_of_mamabear": {n: c / costs[mama] for n, c in costs.items()}},
        "test": {"corpus": "BBC test (articles no fit saw)", "texts": len(texts), "tokens": tokens, "token_unit": "whitespace-separated words"},
        "out_of_domain": {"corpus": "WNUT-16 tweets", "texts": len(ood)},
        "modes": modes,
        "speedups": {
            "scheduler_vs_naive": modes["naive"]["wall_seconds"] / base,
            "scheduler_fp32_vs_naive": modes["naive"]["wall_seconds"] / modes["scheduler_fp32"]["wall_seconds"],
            "bf16_vs_fp32": modes["scheduler_fp32"]["wall_seconds"] / base,
        },
        "circuits": circuits,
        "decision_rules": rules,
        "goals": goals(modes, circuits),
    }


def goals(modes: dict[str, Any], circuits: dict[str, Any]) -> dict[str, Any]:
    """The issues' figures: (b) >= 3x (a); at 0.99 F1 >= 0.99 and wall <= 0.5 (cascade) / 0.35 (exits, both); at 0.95
    <= 0.3 / 0.2; out of domain F1 >= the budget."""
    out: dict[str, Any] = {"scheduler_at_least_3x_naive": modes["naive"]["wall_seconds"] / modes["scheduler"]["wall_seconds"] >= 3}
    for key, c in circuits.items():
        shape, budget = key.split("@")
        b = float(budget)
        wall = {("cascade", 0.99): 0.5, ("cascade", 0.95): 0.3}.get((shape, b), 0.35 if b >= 0.99 else 0.2)
        out[key] = {
            "f1_meets_budget": c["entity_f1_vs_mamabear"] >= b,
            "wall_goal": wall,
            "wall_met": c["wall_time_ratio_vs_scheduler"] <= wall,
            "out_of_domain_f1_meets_budget": c["out_of_domain"]["entity_f1_vs_mamabear"] >= b,
        }
    return out


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    circuits = report["circuits"]
    keys = list(circuits)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(keys))
    for offset, field, label in ((-0.25, "mamabear_calls_avoided", "calls"), (0, "mamabear_tokens_avoided", "tokens"), (0.25, "mamabear_layer_tokens_avoided", "layer-tokens")):
        axes[0].bar(x + offset, [circuits[k][field] for k in keys], width=0.25, label=label)
    axes[0].set_xticks(x, keys, rotation=30, fontsize=8)
    axes[0].set_title("mamabear work avoided (BBC test)", fontsize=10)
    axes[0].legend(fontsize=8)
    walls = [circuits[k]["wall_time_ratio_vs_scheduler"] for k in keys]
    bars = axes[1].bar(keys, walls, color="#55a868")
    axes[1].bar_label(bars, fmt="%.2f", fontsize=8)
    axes[1].axhline(1.0, color="#999999", lw=1)
    axes[1].set_xticks(x, keys, rotation=30, fontsize=8)
    axes[1].set_title("wall time / mamabear alone (lower is better)", fontsize=10)
    fig.suptitle(f"{report['mamabear']}: (b) is {report['speedups']['scheduler_vs_naive']:.2f}x transformers.pipeline", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=12_000, help="BBC train sentences to fit on")
    parser.add_argument("--test", type=int, default=2_000, help="BBC test sentences to time and score")
    parser.add_argument("--ood", type=int, default=1_000, help="WNUT-16 tweets (out of domain)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.99, 0.95])
    parser.add_argument("--folder", type=Path, default=Path("trained/news-early-exit"), help="the fitted circuit (reused when there)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--price-per-hour", type=float, default=0.085)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--audit-fraction", type=float, default=0.1, help="share of the out-of-domain texts the babybears answer that an audit checks")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/transformer.json"))
    parser.add_argument("--fit-only", action="store_true", help="fit (or find) the circuit in --folder and stop: fit on a busy machine, time on a quiet one")
    args = parser.parse_args(argv)
    report = bench(args)
    if args.fit_only:
        say(f"fitted: {report['fit']}")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot(report, args.out.with_suffix(".png"))
    say(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
