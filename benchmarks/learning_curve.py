"""Learning curves: how much warm-up the CRF babybear needs before its savings level off.

    python benchmarks/learning_curve.py --out benchmarks/results/learning_curve.json

The mamabear (spaCy en_core_web_md) labels the BBC train sentences once. Each warm-up size then trains a CRF on
the first N labelled sentences; a gate is fitted on a fixed calibration set and the joint optimizer tunes the
crf -> mamabear threshold on a fixed tuning set, both taken from other BBC articles (blocks of consecutive
sentences, as ``Circuit.fit`` splits). Reported per size: the CRF's entity-F1 against the mamabear when it
answers everything, its exact-sentence agreement, the gate's AUC and ECE, and the mamabear calls avoided at each
budget with the F1 reached on the tuning set. Writes JSON and a PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from babybear import Budget
from babybear.corpus import bbc_sentences
from babybear.metrics import entity_f1
from babybear.tuning.optimizer import optimize
from babybear.progress import track
from babybear.routing import CachedRun, Topology
from babybear.text import n_tokens
from babybear.nodes.crf import CRFTagger
from babybear.nodes.gates import CalibratedGate
from babybear.nodes.mamabear_spacy import SpacyNER


def blocks_shuffled(texts: list[str], block: int, seed: int) -> list[str]:
    parts = [texts[i : i + block] for i in range(0, len(texts), block)]
    random.Random(seed).shuffle(parts)
    return [t for p in parts for t in p]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 5000, 10000, 18000])
    parser.add_argument("--held-out", type=int, default=3000, help="sentences each for calibration and tuning")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.99, 0.95])
    parser.add_argument("--out", default="benchmarks/results/learning_curve.json")
    args = parser.parse_args()

    train, _ = bbc_sentences()
    texts = blocks_shuffled(train, 64, seed=0)
    calib, tune = texts[: args.held_out], texts[args.held_out : 2 * args.held_out]
    pool = texts[2 * args.held_out : 2 * args.held_out + max(args.sizes)]
    mama = SpacyNER(model="en_core_web_md")
    mama.warm_up()
    everything = calib + tune + pool
    labels = []
    for i in track(range(0, len(everything), 512), (len(everything) + 511) // 512, "mamabear labels"):
        labels += mama.predict_batch(everything[i : i + 512])
    ref_held, ref_pool = labels[: 2 * args.held_out], labels[2 * args.held_out :]
    held = calib + tune
    tokens = np.array([n_tokens(t) for t in held], dtype=float)
    topo = Topology(["crf", "mamabear"], [("crf", "mamabear")], {"crf": None, "mamabear": None}, "mamabear")
    n_cal = len(calib)

    rows = []
    for size in sorted(args.sizes):
        start = time.perf_counter()
        crf = CRFTagger(c1=0.05, c2=0.05).fit(pool[:size], ref_pool[:size])
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        preds = crf.predict_batch(held)
        crf_cost = (time.perf_counter() - start) / tokens.sum()
        agrees = np.array([p.spans == r.spans for p, r in zip(preds, ref_held)])
        gate = CalibratedGate().fit([p.evidence for p in preds[:n_cal]], agrees[:n_cal])
        scores = gate.score([p.evidence for p in preds])
        run = CachedRun(topo, {"crf": preds, "mamabear": ref_held}, {("crf", "mamabear"): scores}, {"crf": crf_cost, "mamabear": 0.0005}, tokens)
        tuning = run.subset(np.arange(n_cal, len(held)))
        row = {
            "warm_up_sentences": size,
            "crf_train_seconds": train_seconds,
            "crf_f1_alone": entity_f1([p.spans for p in preds[n_cal:]], [r.spans for r in ref_held[n_cal:]]),
            "crf_exact_agreement": float(agrees[n_cal:].mean()),
            "gate_auc": float(roc_auc_score(agrees[n_cal:], scores[n_cal:])),
            "gate_ece_calibration": gate.report["ece"],
            "budgets": {},
        }
        for b in args.budgets:
            chosen = optimize(tuning, Budget(min_entity_f1=b), switch_off=False).chosen
            row["budgets"][str(b)] = {"mamabear_calls_avoided": chosen.mamabear_calls_avoided, "f1": chosen.f1}
        rows.append(row)
        print(
            f"{size:>6} sentences: CRF F1 {row['crf_f1_alone']:.3f}, agreement {row['crf_exact_agreement']:.3f}, gate AUC {row['gate_auc']:.3f}, "
            + ", ".join(f"avoided@{b} {v['mamabear_calls_avoided']:.1%}" for b, v in row["budgets"].items())
        )

    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()}, python {platform.python_version()}",
        "mamabear": "en_core_web_md",
        "held_out": {"calibration": n_cal, "tuning": len(tune)},
        "note": "the mamabear's cost is fixed at 5e-4 s/token (as measured by the news fit) so sizes compare on savings alone",
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["warm_up_sentences"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(sizes, [r["crf_f1_alone"] for r in rows], "o-", label="CRF entity-F1 vs mamabear (answers all)")
    ax.plot(sizes, [r["crf_exact_agreement"] for r in rows], "s-", label="CRF exact-sentence agreement")
    for b in rows[0]["budgets"]:
        ax.plot(sizes, [r["budgets"][b]["mamabear_calls_avoided"] for r in rows], "^--", label=f"mamabear calls avoided, budget {b}")
    ax.set_xscale("log")
    ax.set_xlabel("warm-up sentences the CRF learns from")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Learning curve: news circuit (CRF -> en_core_web_md), BBC")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
