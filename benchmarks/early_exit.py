"""What an early exit costs inside the mamabear, and what resuming from it costs, per token, on CPU.

The mamabear is MiniLM-L6 (all-MiniLM-L6-v2, 6 layers, hidden 384, frozen) with a token-classification head fitted
quickly to en_core_web_md's entities (a linear probe on the last layer, ``--head-train`` BBC train sentences). For
each exit layer k an :class:`babybear.nodes.early_exit.EarlyExit` is trained on the mamabear's answers on other BBC train
sentences, all from one :func:`babybear.nodes.early_exit.collect` pass; then, on BBC test sentences, it times

- ``full``: the mamabear node alone (``HFTokenClassifier.predict_batch``, float32),
- ``exit``: the exit at k (embeddings, layers 1..k, the exit head, Viterbi decoding: ``predict_with_state``),
- ``resume``: the mamabear finishing from the exit's kept states (layers k+1..L, its head, decoding),

each the best of ``--repeats`` interleaved runs, as seconds per subword token and as a fraction of ``full`` (expected: exit about
k/L plus the head, resume about (L-k)/L), beside how often the exit's and the resumed answers equal the mamabear's.
Writes benchmarks/results/early_exit.json.

    python benchmarks/early_exit.py                      # about 6 minutes on 2 shared CPU cores
    python benchmarks/early_exit.py --texts 60 --head-train 100 --train 100 --layers 1 3 --repeats 1 \
        --out /tmp/early-exit-smoke.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from babybear.corpus import bbc_sentences
from babybear.nodes.models import resolve
from babybear.nodes.early_exit import EarlyExit, collect
from babybear.nodes.mamabear_hf import HFTokenClassifier


def minilm_mamabear(folder: Path, texts: list[str]) -> HFTokenClassifier:
    """MiniLM-L6 with a token-classification head fitted quickly (encoder frozen: a linear probe on its last layer)
    to en_core_web_md's entities on ``texts``, each word labelled on its first subword; saved to ``folder``."""
    import torch
    import transformers

    from babybear.nodes._tokens import Token, spans_to_bio
    from babybear.nodes.mamabear_spacy import SpacyNER

    reference = SpacyNER(model="en_core_web_md").predict_batch(texts)
    types = sorted({s.label for r in reference for s in r.spans})
    id2label = dict(enumerate(["O", *(f"{p}-{t}" for t in types for p in "BI")]))
    label2id = {v: k for k, v in id2label.items()}
    encoder = resolve("minilm-l6", "encoder")
    tokenizer = transformers.AutoTokenizer.from_pretrained(encoder)
    torch.manual_seed(0)
    model = transformers.AutoModelForTokenClassification.from_pretrained(
        encoder, num_labels=len(id2label), id2label=id2label, label2id=label2id
    ).eval()
    xs, ys = [], []
    for at in range(0, len(texts), 32):
        batch = texts[at : at + 32]
        enc = tokenizer(batch, return_offsets_mapping=True, padding=True, truncation=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping")
        with torch.inference_mode():
            hidden = model.base_model(**enc).last_hidden_state
        for row, (text, ref) in enumerate(zip(batch, reference[at : at + 32])):
            firsts: dict[int, list[int]] = {}  # word id -> [first token, start, end]
            for i, w in enumerate(enc.word_ids(row)):
                if w is not None:
                    s, e = offsets[row, i].tolist()
                    firsts.setdefault(w, [i, s, e])[2] = e
            words = list(firsts.values())
            tags = spans_to_bio([Token(text[s:e], s, e) for _, s, e in words], ref.spans)
            xs.append(hidden[row, [i for i, _, _ in words]])
            ys += [label2id[t] for t in tags]
    x, y = torch.cat(xs), torch.tensor(ys)
    head = model.classifier
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(200):
        loss = torch.nn.functional.cross_entropy(head(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    node = HFTokenClassifier(model=str(folder), device="cpu", dtype="float32", batch_size=32)
    node.warm_up()
    return node


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=200, help="BBC test sentences timed")
    parser.add_argument("--head-train", type=int, default=600, help="BBC train sentences the mamabear's head learns")
    parser.add_argument("--train", type=int, default=600, help="BBC train sentences the exit heads learn from")
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/early_exit.json"))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    train, test = bbc_sentences()
    rng = np.random.default_rng(0)
    train = [train[i] for i in rng.permutation(len(train))]
    texts = [test[i] for i in rng.permutation(len(test))[: args.texts]]

    with tempfile.TemporaryDirectory() as tmp:
        mamabear = minilm_mamabear(Path(tmp), train[: args.head_train])
        n_layers = mamabear._model.config.num_hidden_layers
        tokens = sum(len(e.ids) for e in mamabear._tokenizer.encode_batch(texts, add_special_tokens=False))
        mamabear.predict_batch(texts[:32])  # warm the kernels before any timing
        reference = mamabear.predict_batch(texts)
        full = float("inf")

        exit_train = train[args.head_train : args.head_train + args.train]  # not the sentences the head saw
        started = time.perf_counter()  # one mamabear pass keeps every exit's training states
        p = mamabear.params
        words = collect(
            mamabear._model, mamabear._tokenizer, exit_train, args.layers, max_length=p.max_length, stride=p.stride
        )
        collect_seconds = time.perf_counter() - started

        rows = []
        for k in args.layers:
            node = EarlyExit(mamabear="mamabear", layer=k).attach_node(mamabear).fit_states(words)
            exit_s = resume_s = full_k = float("inf")
            for _ in range(args.repeats):  # interleaved, so that other load on the machine falls on all three alike
                seconds, (preds, states) = timed(lambda node=node: node.predict_with_state(texts))
                exit_s = min(exit_s, seconds)
                seconds, resumed = timed(lambda node=node, states=states: node.resume(states))
                resume_s = min(resume_s, seconds)
                full_k = min(full_k, timed(lambda: mamabear.predict_batch(texts))[0])
            full = min(full, full_k)
            rows.append(
                {
                    "layer": k,
                    "exit_seconds_per_token": exit_s / tokens,
                    "resume_seconds_per_token": resume_s / tokens,
                    "full_seconds_per_token": full_k / tokens,
                    "exit_over_full": exit_s / full_k,
                    "resume_over_full": resume_s / full_k,
                    "exit_plus_resume_over_full": (exit_s + resume_s) / full_k,
                    "expected_exit_over_full": k / n_layers,
                    "expected_resume_over_full": (n_layers - k) / n_layers,
                    "resumed_equals_mamabear": sum(a.spans == b.spans for a, b in zip(resumed, reference)) / len(texts),
                    "heldout_word_agreement": node.report_["heldout_word_agreement"],
                    "heldout_text_agreement": node.report_["heldout_text_agreement"],
                    "exit_text_agreement_on_test": sum(a.spans == b.spans for a, b in zip(preds, reference))
                    / len(texts),
                    "train_seconds": node.report_["train_seconds"],
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr)

    result = {
        "command": "python " + " ".join(["benchmarks/early_exit.py", *(argv if argv is not None else sys.argv[1:])]),
        "mamabear": "MiniLM-L6 (all-MiniLM-L6-v2), frozen, + a linear head fitted to en_core_web_md on "
        f"{args.head_train} BBC train sentences; float32, CPU",
        "n_labels": len(mamabear._id2label),
        "machine": {"platform": platform.platform(), "torch_threads": args.threads, "torch": torch.__version__},
        "n_texts": len(texts),
        "n_tokens": tokens,
        "n_layers": n_layers,
        "full_seconds_per_token": full / tokens,
        "collect_seconds": collect_seconds,
        "n_exit_train_texts": len(exit_train),
        "exits": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
