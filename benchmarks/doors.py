"""The spaCy and Ray doors against calling the circuit directly, on the same BBC test sentences.

    python benchmarks/doors.py [--circuit DIR] [--texts 1000] [--repeats 3] [--batch-size 256] [--ray-cpus 2]
                               [--skip-ray] [--out benchmarks/results/doors.json]

* spaCy: ``nlp.pipe`` through a blank English pipeline holding ``babybear_ner`` vs ``circuit(texts)``; the
  overhead is the ratio of the best of ``--repeats`` interleaved timings, minus one (goal: at most 10%).
* Ray: ``run_dataset`` on a local Ray instance with 1 and 2 babybear (CPU) workers: outputs compared line for
  line with the single process, and throughput end to end (actor start-up and model loading included).

The circuit is ``trained/news`` when it exists, else ``runs/doors-news`` (fit it with
``babybear fit circuits/news.yaml --corpus data/bbc.train.txt --out runs/doors-news --limit 5000``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = [ROOT / "trained" / "news", ROOT / "runs" / "doors-news"]


def spacy_overhead(circuit_dir: Path, texts: list[str], repeats: int, batch_size: int) -> dict:
    import spacy

    from babybear import Circuit

    circuit = Circuit.load(circuit_dir).warm_up()
    nlp = spacy.blank("en")
    nlp.add_pipe("babybear_ner", config={"circuit": str(circuit_dir), "batch_size": batch_size})
    circuit(texts[:50], batch_size=batch_size)  # warm caches on both paths
    list(nlp.pipe(texts[:50], batch_size=batch_size))
    direct, door = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        answers = circuit(texts, batch_size=batch_size)
        direct.append(time.perf_counter() - start)
        start = time.perf_counter()
        docs = list(nlp.pipe(texts, batch_size=batch_size))
        door.append(time.perf_counter() - start)
    same_nodes = all(d._.babybear["node"] == a.node for d, a in zip(docs, answers))
    exact = sum({(e.start_char, e.end_char, e.label_) for e in d.ents} == set(a.spans) for d, a in zip(docs, answers))
    return {
        "batch_size": batch_size,
        "circuit_seconds": direct,
        "spacy_pipe_seconds": door,
        "overhead": min(door) / min(direct) - 1.0,
        "goal": 0.10,
        "same_answering_node": same_nodes,
        "docs_with_exactly_the_circuits_spans": exact,
        "entities_dropped": sum(d._.babybear["dropped"] for d in docs),
        "texts_per_node": {n: sum(a.node == n for a in answers) for n in {a.node for a in answers}},
    }


def ray_runs(circuit_dir: Path, texts: list[str], workers: list[int], num_cpus: int) -> dict:
    import ray

    from babybear import Circuit
    from babybear.doors.ray_engine import run_dataset

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.jsonl"
        source.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
        start = time.perf_counter()
        local = [json.dumps(a.to_dict(), ensure_ascii=False) for a in Circuit.load(circuit_dir)(texts, ids=[str(i) for i in range(len(texts))])]
        local_seconds = time.perf_counter() - start
        ray.init(num_cpus=num_cpus, include_dashboard=False)
        out: dict = {"ray_num_cpus": num_cpus, "single_process_seconds": local_seconds, "single_process_texts_per_second": len(texts) / local_seconds}
        try:
            for n in workers:
                summary = run_dataset(circuit_dir, source, Path(tmp) / f"out{n}.jsonl", num_cpu_workers=n)
                lines = (Path(tmp) / f"out{n}.jsonl").read_text(encoding="utf-8").splitlines()
                out[f"workers_{n}"] = {
                    "seconds": summary["seconds"],
                    "texts_per_second": len(texts) / summary["seconds"],
                    "identical_to_single_process": lines == local,
                    "texts_per_node": summary["texts_per_node"],
                }
        finally:
            ray.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--circuit", type=Path, help="fitted circuit folder (default: trained/news, else runs/doors-news)")
    parser.add_argument("--texts", type=int, default=1000, help="BBC test sentences to answer")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--ray-cpus", type=int, default=2, help="logical CPUs of the local Ray instance")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "doors.json")
    args = parser.parse_args()
    circuit_dir = args.circuit or next((c for c in CANDIDATES if (c / "circuit.yaml").is_file()), None)
    if circuit_dir is None:
        sys.exit("no fitted news circuit: babybear fit circuits/news.yaml --corpus data/bbc.train.txt --out runs/doors-news --limit 5000")
    from babybear.corpus import bbc_sentences

    texts = bbc_sentences()[1][: args.texts]
    result = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "circuit": os.path.relpath(circuit_dir, ROOT),
        "texts": len(texts),
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()},
        "spacy": spacy_overhead(circuit_dir, texts, args.repeats, args.batch_size),
    }
    print(json.dumps(result["spacy"], indent=2), flush=True)
    if not args.skip_ray:
        result["ray"] = ray_runs(circuit_dir, texts, [1, 2], args.ray_cpus)
        print(json.dumps(result["ray"], indent=2))
    result["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
