"""Which CRF levers make the news circuit's CRF babybear learn spaCy en_core_web_md better (issue 17)?

On BBC News sentences of the TRAIN split only (the test split is never looked at), labelled once by md and
cached: the sentences are cut into blocks of 64 (sentences of one article stay together), the blocks shuffled,
and taken in turn as the CRF's training texts, the gates' calibration texts, the thresholds' tuning texts and
held-out evaluation texts. For each lever (a CRF configuration) it fits the rules and the CRF, fits the circuit's
gates and tunes its thresholds with the circuit's own optimizer (circuits/news.yaml, measured costs) at budgets
0.99 and 0.95, then measures on the held-out texts: the CRF's exact-sentence agreement and entity-F1 with md,
the crf->mamabear gate's ROC AUC, and the mamabear calls and tokens avoided and F1 at each budget.

    python benchmarks/crf_levers.py                        # about 15 minutes on 2 busy cores
    python benchmarks/crf_levers.py --train 2000 --levers base,clusters --out /tmp/levers.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from babybear import Circuit
from babybear.corpus import bbc_sentences
from babybear.heldout import Heldout
from babybear.metrics import entity_f1, f1, span_counts
from babybear.routing import CachedRun
from babybear.text import n_tokens
from babybear.types import Prediction, Span

ROOT = Path(__file__).resolve().parents[1]
BASE = {"c1": 0.05, "c2": 0.05, "max_iterations": 100}
MD = "en_core_web_md"
LEVERS: dict[str, dict] = {
    "base": {"split_units": False},  # the CRF before issue 17
    "clusters": {"split_units": False, "vectors": MD},
    "gazetteer": {"split_units": False, "gazetteer": True},
    "clusters+gazetteer": {"split_units": False, "vectors": MD, "gazetteer": True},
    "split": {"split_units": True},
    "split+clusters": {"split_units": True, "vectors": MD},
    "split+clusters+gazetteer": {"split_units": True, "vectors": MD, "gazetteer": True},
}


def labelled_train(cache: Path) -> tuple[list[str], list[Prediction]]:
    """The BBC train split with md's answers, labelled once and cached as JSON lines."""
    if not cache.exists():
        from babybear.nodes.mamabear_spacy import SpacyNER

        train, _ = bbc_sentences()
        preds = SpacyNER(model="en_core_web_md").predict_batch(train)
        with cache.open("w") as f:
            for t, p in zip(train, preds):
                f.write(json.dumps({"text": t, "spans": [list(s) for s in p.spans]}) + "\n")
    rows = [json.loads(line) for line in cache.open()]
    return [r["text"] for r in rows], [Prediction(tuple(Span(*s) for s in r["spans"])) for r in rows]


def roc_auc(scores: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores)) if 0 < y.sum() < len(y) else float("nan")


def best_threshold(
    crf: list[Prediction],
    ref: list[Prediction],
    scores: np.ndarray,
    budgets: list[float],
) -> dict[str, float]:
    """The most calls the crf -> mamabear gate could avoid on these rows at each budget with its best threshold,
    chosen on the rows themselves: the gate and CRF's quality, without the tuner's quantile grid and confidence
    bound (which make the tuned figure move in steps)."""
    tp = fp = fn = 0
    n_ref = sum(len(r.spans) for r in ref)
    counts = []
    for i in np.argsort(-scores, kind="stable"):  # the surest first: these stop at the CRF
        a, b, c = span_counts(crf[i].spans, ref[i].spans)
        tp, fp, fn = (
            tp + a - len(ref[i].spans),
            fp + b,
            fn + c,
        )  # before: md's own spans, all right
        counts.append((tp + n_ref, fp, fn))
    out = {}
    for budget in budgets:
        ok = [k + 1 for k, (a, b, c) in enumerate(counts) if f1(a, b, c) >= budget]
        out[str(budget)] = max(ok, default=0) / len(crf)
    return out


def timed_predict(node, texts: list[str]) -> tuple[list[Prediction], float]:
    """``node``'s answers to ``texts`` and the seconds they took, after a few untimed texts (first calls pay one-off costs)."""
    node.predict_batch(texts[:8])
    start = time.perf_counter()
    preds = node.predict_batch(texts)
    return preds, time.perf_counter() - start


def md_seconds_per_token(md, texts: list[str]) -> float:
    """md's cost, timed next to the babybears' (on a shared machine the load changes from minute to minute)."""
    start = time.perf_counter()
    md.predict_batch(texts)
    return (time.perf_counter() - start) / sum(n_tokens(t) for t in texts)


def run_lever(
    name: str,
    params: dict,
    parts: dict,
    md,
    budgets: list[float],
    reuse: str | None = None,
) -> dict:
    circuit = Circuit.from_yaml(ROOT / "circuits" / "news.yaml")
    crf_params = {**BASE, **params}
    circuit.set_params(**{f"crf__{k}": v for k, v in crf_params.items()})
    topo = circuit.topology
    mama = topo.mamabear
    (tr, tr_ref), (ho, ho_ref) = parts["train"], parts["held"]
    out: dict = {"params": crf_params}
    for n in topo.order:
        if n == mama:
            continue
        saved = Path(reuse) / name / n if reuse else None
        if saved is not None and saved.is_dir():  # fitted by an earlier run of the same lever
            circuit.node(n).from_disk(saved)
            timed = saved / "fit_seconds.json"
            out[f"{n}_fit_seconds"] = json.loads(timed.read_text()) if timed.exists() else None
            continue
        start = time.perf_counter()
        circuit.node(n).fit(tr, tr_ref)
        out[f"{n}_fit_seconds"] = time.perf_counter() - start
        if saved is not None:
            saved.mkdir(parents=True)
            circuit.node(n).to_disk(saved)
            (saved / "fit_seconds.json").write_text(json.dumps(out[f"{n}_fit_seconds"]))
    preds: dict[str, list[Prediction]] = {mama: ho_ref}
    tokens = np.array([n_tokens(t) for t in ho])
    costs = {mama: md_seconds_per_token(md, ho[:500])}
    for n in topo.order:
        if n == mama:
            continue
        preds[n], seconds = timed_predict(circuit.node(n), ho)
        costs[n] = seconds / tokens.sum()
        out[f"{n}_ms_per_sentence"] = 1000 * seconds / len(ho)
    costs[mama] = (costs[mama] + md_seconds_per_token(md, ho[:500])) / 2  # before and after the babybears
    out["md_ms_per_sentence"] = 1000 * costs[mama] * tokens[:500].sum() / 500
    n_cal, n_tune = parts["n_cal"], parts["n_tune"]
    crf = preds["crf"]
    ev = slice(n_cal + n_tune, len(ho))
    out["crf_exact_agreement"] = float(np.mean([set(p.spans) == set(r.spans) for p, r in zip(crf[ev], ho_ref[ev])]))
    out["crf_entity_f1"] = entity_f1([p.spans for p in crf[ev]], [r.spans for r in ho_ref[ev]])
    n = n_cal + n_tune
    circuit.heldout_ = Heldout.build(ho[:n], {k: v[:n] for k, v in preds.items()}, costs, n_cal, circuit)
    circuit.fit_gates()
    # the same gates score the evaluation rows
    ev_run = CachedRun(topo, {k: v[ev] for k, v in preds.items()}, {}, costs, tokens[ev])
    ev_run.scores.update(circuit.score_gates(ev_run.preds))
    agrees = np.array([a == r.spans for a, r in zip(ev_run.exit_answers("crf"), ev_run.reference)])
    out["gate_auc"] = roc_auc(ev_run.scores[("crf", mama)], agrees)
    out["best_threshold_calls_avoided"] = best_threshold(
        ev_run.preds["crf"], ev_run.reference, ev_run.scores[("crf", mama)], budgets
    )
    for b in budgets:
        circuit.tune(min_entity_f1=b)
        res = ev_run.with_topology(circuit.topology).evaluate(circuit.thresholds)
        reach = ev_run.with_topology(circuit.topology).reach(circuit.thresholds)
        out[f"budget_{b}"] = {
            "mamabear_calls_avoided": res["mamabear_calls_avoided"],
            "mamabear_tokens_avoided": 1.0 - float(tokens[ev][reach[mama]].sum() / tokens[ev].sum()),
            "entity_f1_vs_mamabear": res["f1"],
            "answered": res["answered"],
            "disabled": sorted(circuit.topology.disabled),
            "tuning_calls_avoided": circuit.report_["tuning"]["mamabear_calls_avoided"],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=8000, help="CRF training sentences")
    ap.add_argument("--calibration", type=int, default=3000)
    ap.add_argument("--tuning", type=int, default=3000)
    ap.add_argument("--eval", type=int, default=5000, help="held-out evaluation sentences")
    ap.add_argument("--levers", default=",".join(LEVERS))
    ap.add_argument("--budgets", default="0.99,0.95")
    ap.add_argument(
        "--cache",
        default="/tmp/bbc_train_md.jsonl",
        help="md's answers on the BBC train split",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "crf_levers.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--reuse",
        default=None,
        help="a folder to save fitted nodes in and load them from on the next run",
    )
    args = ap.parse_args(argv)
    texts, refs = labelled_train(Path(args.cache))
    blocks = [list(range(i, min(i + 64, len(texts)))) for i in range(0, len(texts), 64)]
    random.Random(args.seed).shuffle(blocks)
    order = [i for b in blocks for i in b]
    n_held = args.calibration + args.tuning + args.eval
    tr_idx, ho_idx = order[: args.train], order[args.train : args.train + n_held]
    parts = {
        "train": ([texts[i] for i in tr_idx], [refs[i] for i in tr_idx]),
        "held": ([texts[i] for i in ho_idx], [refs[i] for i in ho_idx]),
        "n_cal": args.calibration,
        "n_tune": args.tuning,
    }
    from babybear.nodes.mamabear_spacy import SpacyNER

    md = SpacyNER(model="en_core_web_md")
    md.predict_batch(parts["held"][0][:50])
    budgets = [float(b) for b in args.budgets.split(",")]
    from babybear.nodes._clusters import WordClusters

    clusters: dict = {}
    from_spacy = WordClusters.from_spacy.__func__

    def cached(cls, name, sizes, seed=0):  # the levers share one clustering of the same vectors
        key = (name, tuple(sizes), seed)
        if key not in clusters:
            clusters[key] = from_spacy(cls, name, sizes, seed)
        return clusters[key]

    WordClusters.from_spacy = classmethod(cached)
    result = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "sentences": {
            "train": args.train,
            "calibration": args.calibration,
            "tuning": args.tuning,
            "eval": args.eval,
        },
        "levers": {},
    }
    for name in args.levers.split(","):
        params = LEVERS.get(name)
        if params is None:
            params = json.loads(name)  # a JSON object of CRF params
        result["levers"][name] = r = run_lever(name, params, parts, md, budgets, args.reuse)
        print(
            name,
            json.dumps({k: v for k, v in r.items() if k != "params"}, default=str),
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    plot(result, Path(args.out).with_suffix(".png"), budgets)
    return 0


def plot(result: dict, file: Path, budgets: list[float]) -> None:
    """One group of bars per lever: exact agreement, gate ROC AUC, calls avoided (tuned, and at the best threshold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["levers"])
    bars = {
        "CRF exact agreement": [result["levers"][n]["crf_exact_agreement"] for n in names],
        "gate ROC AUC": [result["levers"][n]["gate_auc"] for n in names],
    }
    for b in budgets:
        bars[f"calls avoided at {b}, tuned"] = [
            result["levers"][n][f"budget_{b}"]["mamabear_calls_avoided"] for n in names
        ]
        bars[f"calls avoided at {b}, best threshold"] = [
            result["levers"][n]["best_threshold_calls_avoided"][str(b)] for n in names
        ]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(bars)
    for k, (label, values) in enumerate(bars.items()):
        xs = [i + k * width for i in range(len(names))]
        ax.bar(xs, values, width, label=label)
        for x, v in zip(xs, values):
            ax.text(x, v + 0.01, f"{v:.2f}", ha="center", fontsize=6, rotation=90)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_title(f"CRF levers on held-out BBC train-split sentences (CRF trained on {result['sentences']['train']:,})")
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    fig.tight_layout()
    fig.savefig(file, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
