"""Viterbi against per-word argmax decoding of one trained student, on BBC News with spaCy en_core_web_md as
the mamabear.

Trains a 2-layer student as benchmarks/student.py's ablation does (8,000 warm-up sentences, 3 epochs), then
decodes the same test logits both ways. Decoding happens after the model, so the two differ only in it. Reports
entity-F1 and exact-sentence agreement against the mamabear, the decoding time per sentence, and each mistake
by kind: a wrong label on the right words, the right entity with wrong edges, a spurious entity, a missed one.
Writes benchmarks/results/decoding.json.

    python benchmarks/decoding.py          # about 5 minutes on 2 CPU cores

Options (defaults as above): --train 8000, --epochs 3, --test 1000, --out benchmarks/results/decoding.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from babybear.types import Prediction
from babybear.nodes.transformer import TransformerTagger
from student import entity_f1, load_spacy_mamabear, shuffled_bbc, spacy_predictions, write_json  # benchmarks/


def mistakes(preds: Sequence[Prediction], refs: Sequence[Prediction]) -> dict[str, int]:
    """Predicted spans sorted into right, wrong label, wrong edges and spurious; the mamabear's into missed."""
    out: Counter[str] = Counter()
    for pred, ref in zip(preds, refs):
        gold = {(s.start, s.end): s.label for s in ref.spans}
        for s in pred.spans:
            if (s.start, s.end) in gold:
                out["right" if gold[s.start, s.end] == s.label else "wrong_label"] += 1
            elif any(a < s.end and s.start < b for a, b in gold):
                out["wrong_edges"] += 1
            else:
                out["spurious"] += 1
        out["missed"] += sum(not any(s.start < b and a < s.end for s in pred.spans) for a, b in gold)
    return dict(out)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--train", type=int, default=8000, help="warm-up sentences the student learns from")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs")
    ap.add_argument("--test", type=int, default=1000, help="test sentences decoded both ways")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "decoding.json", help="JSON path")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(2)
    started = time.perf_counter()
    train, test = shuffled_bbc(args.train, args.test)
    refs = spacy_predictions(load_spacy_mamabear(), train + test)
    train_ref, test_ref = refs[: len(train)], refs[len(train) :]

    node = TransformerTagger(layers=2, epochs=args.epochs, batch_size=32, device="cpu").fit(train, train_ref)
    encs = node._encode(test)
    logits = node._logits(encs)
    results = {}
    for decoding in ("argmax", "viterbi"):
        node.params = node.params.model_copy(update={"decoding": decoding})
        node._decode(encs[:50], logits[:50])  # warm
        start = time.perf_counter()
        preds = node._decode(encs, logits)
        seconds = (time.perf_counter() - start) / len(encs)
        results[decoding] = {
            "test": entity_f1(preds, test_ref),
            "mistakes": mistakes(preds, test_ref),
            "decode_ms_per_sentence": seconds * 1e3,
        }
        print(decoding, json.dumps(results[decoding]), file=sys.stderr)

    out = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "data": {
            "corpus": "BBC News 2004-05 through circuit.corpus.bbc_sentences, split by article",
            "train_sentences": len(train),
            "test_sentences": len(test),
            "mamabear": "spaCy en_core_web_md 3.8 (NER only)",
        },
        "student": {"params": node.get_params(), "restart_rate": node.restart_rate_, "report": node.report_},
        "decodings": results,
        "wall_minutes": (time.perf_counter() - started) / 60,
    }
    write_json(args.out, out)


if __name__ == "__main__":
    main()
