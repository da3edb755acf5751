"""How much two babybears agreeing says: a measurement on a fitted circuit's cached held-out outputs.

For two babybears of a fitted circuit (default: the CRF and the student of ``circuits/news-student.yaml``), on
every held-out sentence (calibration + tuning parts, no model is run): how often they give the same spans, how
often the first is then exactly right, and the entity-F1 against the mamabear and the share of sentences kept
from it when the first babybear answers (a) where its own gate score clears a threshold, and (b) where it also
agrees with the second. Point estimates, no confidence bound: this sizes a possible gate feature, it does not
tune a circuit.

    python benchmarks/consensus.py trained/news-student --out benchmarks/results/consensus.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from babybear import Circuit
from babybear.metrics import entity_f1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fitted", help="a fitted circuit folder (benchmarks/news.py --circuit circuits/news-student.yaml)")
    parser.add_argument("--first", default="crf", help="the babybear that answers")
    parser.add_argument("--second", default="student", help="the babybear it must agree with in (b)")
    parser.add_argument("--out", default="benchmarks/results/consensus.json")
    args = parser.parse_args()

    circuit = Circuit.load(args.fitted)
    run = circuit.heldout_.run
    ref = [p.spans for p in run.reference]
    first = [p.spans for p in run.preds[args.first]]
    second = [p.spans for p in run.preds[args.second]]
    (edge,) = [e for e in run.scores if e[0] == args.first]
    score = run.scores[edge]
    agree = np.array([a == b for a, b in zip(first, second)])
    right = np.array([a == r for a, r in zip(first, ref)])

    def answered(take: np.ndarray) -> dict[str, float]:
        answers = [f if t else r for f, r, t in zip(first, ref, take)]
        return {"kept_from_mamabear": float(take.mean()), "entity_f1": entity_f1(answers, ref)}

    thresholds = [0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95]
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "fitted": args.fitted,
        "sentences": run.n,
        "first": args.first,
        "second": args.second,
        "agree": float(agree.mean()),
        "first_exact_when_agree": float(right[agree].mean()),
        "first_exact_when_disagree": float(right[~agree].mean()),
        "first_exact": float(right.mean()),
        "second_exact": float(np.mean([b == r for b, r in zip(second, ref)])),
        "gate_alone": {str(t): answered(score >= t) for t in thresholds},
        "gate_and_agreement": {str(t): answered(agree & (score >= t)) for t in thresholds},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{args.first} and {args.second} agree on {result['agree']:.1%} of {run.n} held-out sentences; "
          f"{args.first} is exactly right on {result['first_exact_when_agree']:.1%} of those, "
          f"{result['first_exact_when_disagree']:.1%} of the rest")
    print("gate threshold | gate alone: kept, F1 | gate and agreement: kept, F1")
    for t in thresholds:
        a, b = result["gate_alone"][str(t)], result["gate_and_agreement"][str(t)]
        print(f"{t:>14} | {a['kept_from_mamabear']:.1%}, {a['entity_f1']:.4f} | {b['kept_from_mamabear']:.1%}, {b['entity_f1']:.4f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
