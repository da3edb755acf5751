"""Side by side, on the same texts in one run: the mamabear as a user runs it today, the mamabear alone through
the scheduler, and the whole fitted circuit.

(a) naive: spaCy ``nlp.pipe`` with the full pipeline (spaCy mamabear), or ``transformers.pipeline(
    "token-classification")`` (HF mamabear), texts as a list, default batching;
(b) scheduler: the circuit's mamabear alone through :class:`babybear.scheduler.Scheduler`;
(c) circuit: the whole fitted circuit through the scheduler.

For each: texts/s, tokens/s (whitespace tokens), wall and CPU seconds, $ per 1M tokens at ``--price-per-hour``
(instance time = wall time), peak RSS (sampled every 10 ms; torch.cuda.max_memory_allocated on GPU), mamabear
calls avoided, and entity F1 against (b) (exact spans, micro). Writes JSON and a bar plot.

    babybear bench trained/news --corpus data/bbc.test.txt --limit 3000
    babybear bench trained/news --mamabear hf-random-large --limit 64    # BERT-large shape, random weights
    python benchmarks/bench.py trained/news ...                          # the same, from a source checkout

It ships in the package (``babybear.doors.bench``), so ``babybear bench`` works from an installed wheel.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from babybear import Circuit
from babybear.metrics import entity_f1
from babybear.scheduler import Scheduler
from babybear.text import n_tokens
from babybear.types import Span

RESULTS = Path("benchmarks") / "results"  # relative to the working directory, as the other benchmarks write
CONLL_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the lifetime peak is the best available
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """Samples this process's RSS every 10 ms while in use; ``peak`` is the highest seen."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def cuda() -> Any:
    """The torch.cuda module when a CUDA device is usable, else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda if torch.cuda.is_available() else None


# -- the mamabears as users run them today -----------------------------------------------------------------
def naive_spacy(model: str) -> Callable[[Sequence[str]], list[tuple[Span, ...]]]:
    import spacy

    from babybear.nodes.models import resolve

    nlp = spacy.load(resolve(model, "spacy"))  # the full pipeline: tagger, parser, lemmatizer, ... and ner
    say(f"  naive path: spacy.load({model!r}) with {nlp.pipe_names}, nlp.pipe(texts)")

    def run(texts: Sequence[str]) -> list[tuple[Span, ...]]:
        return [tuple(sorted(Span(e.start_char, e.end_char, e.label_) for e in doc.ents)) for doc in nlp.pipe(texts)]

    return run


def naive_hf(folder: str, device: str) -> Callable[[Sequence[str]], list[tuple[Span, ...]]]:
    from transformers import pipeline

    # "first": a word takes its first subword's label, as babybear's HF nodes decode and as token classifiers are
    # usually trained ("simple" labels every subword alone: 0.94 entity-F1 against the same model's word labels
    # on mpnet-news-ner, "first" 0.997)
    pipe = pipeline("token-classification", model=folder, aggregation_strategy="first", device=0 if device == "cuda" else -1)
    say(f"  naive path: transformers.pipeline('token-classification', aggregation_strategy='first', device={device})")

    def run(texts: Sequence[str]) -> list[tuple[Span, ...]]:
        out = pipe(list(texts))
        return [tuple(sorted(Span(int(e["start"]), int(e["end"]), e["entity_group"]) for e in ents)) for ents in out]

    return run


def naive_path(node: Any) -> Callable[[Sequence[str]], list[tuple[Span, ...]]]:
    """How a user runs the circuit's own mamabear without babybear: spaCy ``nlp.pipe``, or ``transformers.pipeline``
    for a PyTorch HF token classifier (on the device the node runs on)."""
    from babybear.nodes.mamabear_hf import HFTokenClassifier

    if isinstance(node, HFTokenClassifier):
        from babybear.nodes.models import resolve

        node.warm_up()
        return naive_hf(str(resolve(node.params.model, "hf")), "cuda" if node.device == "gpu" else "cpu")
    return naive_spacy(node.params.model)


def random_bert_large(folder: Path, layers: int) -> None:
    """A BERT-large-shaped token classifier with random weights (seed 0) and the MiniLM package's uncased
    WordPiece tokenizer, saved to ``folder``. For timing only: its entities are meaningless."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

    from babybear.nodes.models import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("minilm-l6", "encoder"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=1024, num_hidden_layers=layers, num_attention_heads=16,
        intermediate_size=4096, id2label=dict(enumerate(CONLL_LABELS)), label2id={l: i for i, l in enumerate(CONLL_LABELS)},
    )
    torch.manual_seed(0)
    BertForTokenClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# -- measuring ---------------------------------------------------------------------------------------------
def measure(name: str, fn: Callable[[], Any], texts: Sequence[str], tokens: int, price: float, repeats: int) -> tuple[dict, Any]:
    """Run ``fn`` ``repeats`` times; the median run's figures and the last run's output."""
    gpu = cuda()
    runs = []
    for k in range(repeats):
        if gpu is not None:
            gpu.synchronize()
            gpu.reset_peak_memory_stats()
        cpu0, t0 = time.process_time(), time.perf_counter()
        with PeakRSS() as mem:
            out = fn()
            if gpu is not None:
                gpu.synchronize()
        wall, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
        runs.append({
            "wall_seconds": wall, "cpu_seconds": cpu_s, "peak_rss_mb": mem.peak / 2**20, "rss_growth_mb": (mem.peak - mem.start) / 2**20,
            "gpu_max_memory_allocated_mb": gpu.max_memory_allocated() / 2**20 if gpu is not None else None,
        })
        say(f"  {name}: run {k + 1}/{repeats}: {len(texts)} texts in {wall:.2f}s ({len(texts) / wall:,.0f} texts/s)")
    median = sorted(runs, key=lambda r: r["wall_seconds"])[len(runs) // 2]
    wall = median["wall_seconds"]
    figures = {
        **median,
        "wall_seconds_all_runs": [round(r["wall_seconds"], 3) for r in runs],
        "texts_per_second": len(texts) / wall,
        "tokens_per_second": tokens / wall,
        "dollars_per_million_tokens": price * wall / 3600 / tokens * 1e6,
    }
    return figures, out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    texts = [t for t in Path(args.corpus).read_text(encoding="utf-8").splitlines() if t.strip()][: args.limit]
    tokens = sum(n_tokens(t) for t in texts)
    say(f"benchmark: {len(texts)} texts, {tokens} tokens from {args.corpus}; circuit {args.circuit}")
    circuit = Circuit.load(args.circuit)
    mama = circuit.mamabear
    notes = []
    if args.mamabear == "hf-random-large":
        folder = Path(tempfile.mkdtemp(prefix="bench-bert-large-"))
        say(f"  building a BERT-large-shaped token classifier ({args.layers} layers) with random weights in {folder}")
        random_bert_large(folder, args.layers)
        from babybear.nodes.mamabear_hf import HFTokenClassifier

        node = HFTokenClassifier(model=str(folder), device=args.device, keep_token_probs=False)
        node.warm_up()
        circuit.slot(mama).node = node
        naive = naive_hf(str(folder), "cuda" if node.device == "gpu" else "cpu")
        mamabear = f"BERT-large-shaped token classifier, {args.layers} layers, RANDOM weights (timing only), HFTokenClassifier"
        notes.append("The mamabear has random weights: its entities are meaningless, so entity F1 figures measure only agreement "
                     "with it; the circuit's routing (gates read the babybears' evidence) is the fitted one.")
    else:
        node = circuit.node(mama)
        model = node.params.model
        naive = naive_path(node)
        mamabear = f"{type(node).__name__}(model={model!r})"
    say("warming up every model (untimed)")
    circuit.warm_up()
    alone = Circuit("mamabear-alone").add(mama, circuit.node(mama))
    warm = texts[:32]
    naive(warm)
    with Scheduler(circuit, args.batch_size) as s:
        s.run(warm)
    device = circuit.node(mama).device
    results: dict[str, Any] = {}

    say("[1/3] (a) the mamabear through the naive path")
    results["naive"], naive_spans = measure("naive", lambda: naive(texts), texts, tokens, args.price_per_hour, args.repeats)

    say("[2/3] (b) the mamabear alone through the scheduler")
    with Scheduler(alone, args.batch_size) as s:
        results["scheduler"], (ref_answers, alone_stats) = measure("scheduler", lambda: s.run(texts), texts, tokens, args.price_per_hour, args.repeats)
    reference = [a.spans for a in ref_answers]

    say("[3/3] (c) the whole circuit through the scheduler")
    with Scheduler(circuit, args.batch_size) as s:
        results["circuit"], (answers, stats) = measure("circuit", lambda: s.run(texts), texts, tokens, args.price_per_hour, args.repeats)

    units = alone_stats[mama]["texts"]  # every unit (a whole text, or a cut of a long one) reaches the mamabear alone
    results["naive"].update(mamabear_calls_avoided=0.0, mamabear_tokens_avoided=0.0, entity_f1_vs_mamabear=entity_f1(naive_spans, reference))
    results["scheduler"].update(mamabear_calls_avoided=0.0, mamabear_tokens_avoided=0.0, entity_f1_vs_mamabear=1.0)
    to_mama = [a.node == mama for a in answers]  # a long text counts whole when the mamabear answered any of its units
    results["circuit"].update(
        mamabear_calls_avoided=1.0 - stats[mama]["texts"] / max(units, 1),
        mamabear_tokens_avoided=1.0 - sum(n_tokens(t) for t, m in zip(texts, to_mama) if m) / max(tokens, 1),
        entity_f1_vs_mamabear=entity_f1([a.spans for a in answers], reference),
        texts_answered_per_node={n: sum(a.node == n for a in answers) for n in circuit.topology.order},
        node_seconds={n: round(st["seconds"], 3) for n, st in stats.items()},
        node_texts_reached={n: st["texts"] for n, st in stats.items()},
        errors=sum(a.error is not None for a in answers),
    )
    for r in results.values():
        r["compute_seconds"] = r["cpu_seconds"] if device == "cpu" else r["wall_seconds"]
    gpu = cuda()
    speedups = {
        "scheduler_vs_naive": results["naive"]["wall_seconds"] / results["scheduler"]["wall_seconds"],
        "circuit_vs_scheduler": results["scheduler"]["wall_seconds"] / results["circuit"]["wall_seconds"],
        "circuit_vs_naive": results["naive"]["wall_seconds"] / results["circuit"]["wall_seconds"],
    }
    if device == "cpu":
        notes.append("GPU figures are not measured in this run: no CUDA device (the CUDA paths ran on CPU).")
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {
            "platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "gpu": gpu.get_device_name() if gpu is not None else None, "mamabear_device": device,
        },
        "corpus": args.corpus, "texts": len(texts), "tokens": tokens, "token_unit": "whitespace-separated words",
        "circuit": str(args.circuit), "mamabear": mamabear, "batch_size": args.batch_size, "repeats": args.repeats,
        "price_per_hour": args.price_per_hour,
        "compute_seconds_means": "CPU seconds of this process on a CPU mamabear; instance wall seconds on a GPU one",
        "modes": results,
        "speedups": speedups,
        "goal": {
            "target": "whole circuit >= 3x the mamabear alone (CPU) / >= 4x (GPU), entity F1 vs mamabear >= 0.99",
            "circuit_vs_mamabear_alone": speedups["circuit_vs_scheduler"],
            "entity_f1_vs_mamabear": results["circuit"]["entity_f1_vs_mamabear"],
            "met": speedups["circuit_vs_scheduler"] >= (3 if device == "cpu" else 4) and results["circuit"]["entity_f1_vs_mamabear"] >= 0.99,
        },
        "notes": notes,
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = ["naive", "scheduler", "circuit"]
    labels = ["(a) naive", "(b) mamabear\n+ scheduler", "(c) circuit"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in ((axes[0], "texts_per_second", "texts / s (higher is better)"), (axes[1], "dollars_per_million_tokens", "$ per 1M tokens (lower is better)")):
        values = [report["modes"][m][key] for m in modes]
        bars = ax.bar(labels, values, color=["#999999", "#4c72b0", "#55a868"])
        ax.bar_label(bars, fmt="%.3g")
        ax.set_title(title, fontsize=10)
    c = report["modes"]["circuit"]
    fig.suptitle(f"{report['mamabear']} on {report['machine']['mamabear_device']}; circuit: F1 {c['entity_f1_vs_mamabear']:.3f} "
                 f"vs mamabear, {c['mamabear_calls_avoided']:.0%} calls avoided", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("circuit", help="a fitted circuit folder (babybear fit ... --out DIR)")
    parser.add_argument("--corpus", default="data/bbc.test.txt", help="one text per line")
    parser.add_argument("--limit", type=int, default=3000, help="first N non-blank texts")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1, help="runs per mode; the median is reported")
    parser.add_argument("--price-per-hour", type=float, default=0.085, help="instance $ per hour (default: a 2-vCPU cloud VM)")
    parser.add_argument("--mamabear", choices=["circuit", "hf-random-large"], default="circuit",
                        help="circuit: the circuit's own mamabear; hf-random-large: swap in a BERT-large-shaped HF model with random weights")
    parser.add_argument("--layers", type=int, default=24, help="hf-random-large: encoder layers (24 = BERT-large)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="hf-random-large: where it runs")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/bench-<device>-<mamabear>.json)")
    args = parser.parse_args(argv)
    report = bench(args)
    out = args.out or RESULTS / f"bench-{report['machine']['mamabear_device']}-{args.mamabear}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot(report, out.with_suffix(".png"))
    for mode, r in report["modes"].items():
        say(f"{mode:>10}: {r['texts_per_second']:8,.0f} texts/s  {r['tokens_per_second']:9,.0f} tokens/s  "
            f"${r['dollars_per_million_tokens']:.4f}/1M tokens  peak RSS {r['peak_rss_mb']:,.0f} MB  "
            f"F1 vs mamabear {r['entity_f1_vs_mamabear']:.4f}  calls avoided {r['mamabear_calls_avoided']:.1%}  "
            f"tokens avoided {r['mamabear_tokens_avoided']:.1%}")
    say(f"circuit vs mamabear alone: {report['speedups']['circuit_vs_scheduler']:.2f}x; goal met: {report['goal']['met']}")
    say(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
