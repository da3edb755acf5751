"""Where a CRF babybear's time goes, for each lever of benchmarks/crf_levers.py, side by side in one process.

Loads the CRFs that ``crf_levers.py --reuse DIR`` saved and times, on the same held-out BBC train-split
sentences, in alternating rounds (the fastest round counts, so a shared machine's load slows them alike):
tokenizing, features (warm cache; with the gazetteer's matches), crfsuite's set (the feature strings looked up in
the model), + Viterbi, + the marginals and the sequence probability, and ``predict_batch`` end to end (the rest is Python: evidence, spans).

    python benchmarks/crf_lever_speed.py --reuse /tmp/levers --out benchmarks/results/crf_lever_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from babybear.nodes.crf import CRFTagger, crf_tokens


def stages(crf: CRFTagger, texts: list[str]) -> dict:
    """One callable per stage, each doing that stage (and what it needs already done) for every text."""
    split = crf.params.split_units
    tokens = [crf_tokens(t, split) for t in texts]
    words = [[t.text for t in ts] for ts in tokens]
    gz = crf.gazetteer_
    matches = [gz.match(w) if gz is not None else None for w in words]
    feats = [crf._featurize(ts, gz, m) for ts, m in zip(tokens, matches)]
    tagger = crf._tagger()

    def load() -> None:
        for f in feats:
            if f:
                tagger.set(f)

    def tag() -> None:
        for f in feats:
            if f:
                tagger.set(f)
                tagger.tag()

    def marginals() -> None:
        for f in feats:
            if f:
                tagger.set(f)
                tags = tagger.tag()
                [tagger.marginal(t, i) for i, t in enumerate(tags)]
                tagger.probability(tags)

    return {
        "tokenize": lambda: [crf_tokens(t, split) for t in texts],
        "features": lambda: [
            crf._featurize(ts, gz, gz.match(w) if gz is not None else None) for ts, w in zip(tokens, words)
        ],
        "crfsuite_set": load,
        "crfsuite_set_and_viterbi": tag,
        "crfsuite_set_viterbi_marginals_probability": marginals,
        "predict_batch": lambda: crf.predict_batch(texts),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reuse", required=True, help="the folder crf_levers.py --reuse saved its fitted nodes in")
    ap.add_argument("--levers", default="base,split,clusters,gazetteer,split+clusters+gazetteer")
    ap.add_argument("--cache", default="/tmp/bbc_train_md.jsonl", help="md's answers on the BBC train split")
    ap.add_argument("--sentences", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/crf_lever_speed.json")
    args = ap.parse_args(argv)
    lines = Path(args.cache).read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines][-args.sentences :]  # the last article blocks
    names = args.levers.split(",")
    crfs = {n: CRFTagger().from_disk(Path(args.reuse) / n / "crf") for n in names}
    work = {n: stages(crf, texts) for n, crf in crfs.items()}
    for crf in crfs.values():
        crf.predict_batch(texts)  # warms the feature caches
    best = {n: dict.fromkeys(w, float("inf")) for n, w in work.items()}
    for _ in range(args.rounds):
        for n, w in work.items():
            for stage, job in w.items():
                start = time.perf_counter()
                job()
                best[n][stage] = min(best[n][stage], time.perf_counter() - start)
    ms = {n: {s: round(1000 * v / len(texts), 4) for s, v in b.items()} for n, b in best.items()}
    result = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "sentences": len(texts),
        "rounds": args.rounds,
        "load_average_at_start": os.getloadavg(),
        "ms_per_sentence": ms,
        "features_per_token": {
            n: round(
                sum(
                    len(f)
                    for t in texts[:500]
                    for f in crf._featurize(crf_tokens(t, crf.params.split_units), crf.gazetteer_)
                )
                / max(sum(len(crf_tokens(t, crf.params.split_units)) for t in texts[:500]), 1),
                1,
            )
            for n, crf in crfs.items()
        },
    }
    # feature strings the model has no weight for: crfsuite looks them up for nothing
    result["features_missing_from_model"] = {}
    for n, crf in crfs.items():
        attrs = {a for a, _ in crf._tagger().info().state_features}
        feats = [
            f
            for t in texts[:500]
            for fs in crf._featurize(crf_tokens(t, crf.params.split_units), crf.gazetteer_)
            for f in fs
        ]
        result["features_missing_from_model"][n] = round(sum(f not in attrs for f in feats) / max(len(feats), 1), 4)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
