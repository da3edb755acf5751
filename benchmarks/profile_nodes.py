"""Where the student and the HF mamabear spend predict_batch on a CPU, single thread (issue 14, item 3).

A 2-layer MiniLM student (``TransformerTagger``, fitted on BBC train sentences labelled by spaCy en_core_web_md,
saved once under ``--student-dir`` and reused) and the ``mpnet-news-ner`` HF mamabear (``HFTokenClassifier``) each
answer the same BBC test sentences. Per node: the plain wall time of ``predict_batch`` (best of ``--repeats``),
its split by cProfile (tokenizer, the node's own token bookkeeping, building padded batches, the torch forward,
window stitching, softmax, Viterbi, span decoding, the rest) and the forward's split by torch.profiler (matrix
products and attention kernels against every other op).

With ``--before REV`` the same measurement also runs on the code of git revision REV (its ``circuit/`` and
``nodes/`` extracted to a temporary folder), alternating with the working tree's code round by round in one run so
that both see the same load; the spans and evidence of both must be identical, and the JSON gives after/before
ratios. Each side runs in its own subprocess (one Python can import only one ``babybear``).

    OMP_NUM_THREADS=1 python benchmarks/profile_nodes.py --before HEAD~1 --out benchmarks/results/profile_nodes.json
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.abc
import importlib.util
import json
import os
import platform
import pstats
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# cProfile entries, matched by function name (and file where names are generic), per stage.
_MATMUL_OPS = {
    "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
    "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
    "aten::scaled_dot_product_attention",
}


# -- worker: runs inside a subprocess, on one version of the code ------------------------------------------------
def _use_code(root: str | None) -> None:
    """Import ``babybear`` from ``root`` (a checkout's top folder) instead of the installed editable one."""
    if root is None:
        return
    folders = {"babybear": Path(root) / "circuit", "babybear.nodes": Path(root) / "nodes",
               "babybear.circuits": Path(root) / "circuits"}

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
            if name in folders:
                init = folders[name] / "__init__.py"
                return importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(folders[name])])
            return None

    sys.meta_path.insert(0, Finder())


def _stat(stats: pstats.Stats, name: str, file_part: str = "") -> float:
    """Cumulative seconds of every profiled function called ``name`` (in a file containing ``file_part``)."""
    total = 0.0
    for (file, _, func), (_, _, _, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
        if (func == name or (name.startswith("<") and name in func)) and file_part in file:
            total += cum
    return total


def _split(stats: pstats.Stats, total: float, kind: str) -> dict[str, float]:
    """predict_batch's cProfile time by stage, in seconds (cProfile inflates Python-heavy stages somewhat)."""
    tokenizer = _stat(stats, "<method 'encode_batch'")
    run_windowed = _stat(stats, "run_windowed", "_align")
    student = kind.startswith("student")
    closure = _stat(stats, "run", "transformer.py" if student else "_align")
    forward = _stat(stats, "_run", "transformer.py") if student else _stat(stats, "_logits", "mamabear_hf")
    softmax = _stat(stats, "softmax", "_align")
    viterbi = _stat(stats, "viterbi", "_align")
    decode = _stat(stats, "decode", "_align") - viterbi
    if student:
        token_bookkeeping = _stat(stats, "_encode", "transformer.py") - tokenizer
    else:
        token_bookkeeping = _stat(stats, "special_tokens", "_align") + _stat(stats, "clean_text")
    parts = {
        "tokenizer": tokenizer,
        "token_bookkeeping": token_bookkeeping,
        "batches": closure - forward,
        "forward": forward,
        "windows_stitch": run_windowed - closure,
        "softmax": softmax,
        "viterbi": viterbi,
        "decode_spans": decode,
    }
    parts["other"] = total - sum(parts.values())
    return parts


def _forward_split(node: Any, kind: str, texts: list[str]) -> dict[str, Any]:
    """torch.profiler over predict_batch: self CPU time of matrix ops vs all other torch ops."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        node.predict_batch(texts)
    events = prof.key_averages()
    ops = {e.key: e.self_cpu_time_total / 1e6 for e in events if e.key.startswith("aten::")}
    matmul = sum(v for k, v in ops.items() if k in _MATMUL_OPS)
    rest = sum(v for k, v in ops.items() if k not in _MATMUL_OPS)
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:8]
    return {"matmul_s": matmul, "other_torch_ops_s": rest, "top_ops": [[k, round(v, 4)] for k, v in top],
            "note": "self CPU seconds of aten ops under torch.profiler (profiling inflates small ops)"}


def _load(kind: str, student_dir: str) -> Any:
    if kind.startswith("student"):
        from babybear.nodes.transformer import TransformerTagger

        dtype = "bfloat16" if kind == "student-bf16" else "auto"  # auto: float32 for the student on a CPU
        node = TransformerTagger(device="cpu", dtype=dtype).from_disk(Path(student_dir))
    else:
        from babybear.nodes.mamabear_hf import HFTokenClassifier

        node = HFTokenClassifier(model="mpnet-news-ner", device="cpu")  # dtype auto: bf16 autocast where native
    node.warm_up()
    return node


def _without_forward(node: Any, kind: str, texts: list[str], repeats: int = 5) -> float:
    """Seconds of predict_batch with the forward replaced by a replay of its recorded outputs (best of
    ``repeats``): everything that is not the model, measured without cProfile's overhead."""
    attr = "_run" if kind.startswith("student") else "_logits"
    real = getattr(node, attr)
    recorded: list[Any] = []

    def record(batch: Any) -> Any:
        out = real(batch)
        recorded.append(out)
        return out

    setattr(node, attr, record)  # the instance attribute shadows the method
    node.predict_batch(texts)
    best = float("inf")
    for _ in range(repeats):
        replay = iter(recorded)
        setattr(node, attr, lambda batch: next(replay))
        t = time.perf_counter()
        node.predict_batch(texts)
        best = min(best, time.perf_counter() - t)
    delattr(node, attr)
    return best


def worker(args: argparse.Namespace) -> None:
    _use_code(args.code)
    import torch

    torch.set_num_threads(1)
    texts = json.loads(Path(args.texts).read_text())
    node = _load(args.kind, args.student_dir)
    node.predict_batch(texts[:32])  # warm caches, lazy imports, kernels
    walls = []
    for _ in range(args.inner):
        t = time.perf_counter()
        preds = node.predict_batch(texts)
        walls.append(time.perf_counter() - t)
    amp = node._amp_dtype() if args.kind.startswith("student") else node._autocast
    out: dict[str, Any] = {"wall_s": min(walls), "walls_s": walls, "compute_dtype": str(amp or "float32"),
                           "batch_size": node.params.batch_size, "max_length": node.params.max_length,
                           "without_forward_s": _without_forward(node, args.kind, texts)}
    if args.detail:
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        node.predict_batch(texts)
        prof.disable()
        total = time.perf_counter() - t
        stats = pstats.Stats(prof)
        out["cprofile_total_s"] = total
        out["cprofile_split_s"] = _split(stats, total, args.kind)
        top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:12]  # type: ignore[attr-defined]
        out["cprofile_top_tottime"] = [[f"{Path(f).name}:{ln}:{fn}", round(v[2], 4), v[1]] for (f, ln, fn), v in top]
        out["torch_profiler"] = _forward_split(node, args.kind, texts[:100])
        out["torch_profiler"]["texts"] = 100
    out["predictions"] = [
        {"spans": [list(s) for s in p.spans], "evidence": p.evidence,
         "token_probs": None if p.token_probs is None else [[s, e, d] for s, e, d in p.token_probs]}
        for p in preds
    ]
    Path(args.result).write_text(json.dumps(out))


# -- parent ---------------------------------------------------------------------------------------------------
def _texts(n_train: int, n_test: int) -> tuple[list[str], list[str]]:
    import numpy as np

    from babybear.corpus import bbc_sentences

    train, test = bbc_sentences()
    rng = np.random.default_rng(0)
    train = [train[i] for i in rng.permutation(len(train))][:n_train]
    return train, [test[i] for i in rng.permutation(len(test))][:n_test]


def _student(student_dir: Path, train: list[str]) -> dict[str, Any]:
    """Fit (once) a 2-layer student on spaCy md's answers over ``train``; later runs reuse the folder."""
    if (student_dir / "student.json").exists():
        return {"reused": str(student_dir)}
    import torch

    from babybear.nodes.mamabear_spacy import SpacyNER
    from babybear.nodes.transformer import TransformerTagger

    torch.set_num_threads(1)
    t = time.perf_counter()
    reference = SpacyNER(model="en_core_web_md").predict_batch(train)
    student = TransformerTagger(layers=2, epochs=1, device="cpu").fit(train, reference)
    student_dir.mkdir(parents=True, exist_ok=True)
    student.to_disk(student_dir)
    return {"fitted_on": len(train), "labels_by": "en_core_web_md", "layers": 2, "epochs": 1,
            "seconds": time.perf_counter() - t}


def _checkout(rev: str, into: Path) -> Path:
    """``circuit/``, ``nodes/`` and ``circuits/`` of git revision ``rev``, extracted under ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "circuit", "nodes", "circuits"],
                             check=True, capture_output=True).stdout
    tar = into / "code.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as f:
        f.extractall(into / "code", filter="data")
    return into / "code"


def _run_worker(kind: str, code: Path | None, texts: Path, student_dir: Path, inner: int, detail: bool,
                tmp: Path) -> dict[str, Any]:
    result = tmp / f"{kind}-{'before' if code else 'after'}.json"
    cmd = [sys.executable, __file__, "--worker", "--kind", kind, "--texts", str(texts), "--student-dir",
           str(student_dir), "--inner", str(inner), "--result", str(result)]
    if code is not None:
        cmd += ["--code", str(code)]
    if detail:
        cmd.append("--detail")
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return json.loads(result.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--test", type=int, default=500, help="BBC test sentences to answer")
    ap.add_argument("--train", type=int, default=1000, help="BBC train sentences the student is fitted on")
    ap.add_argument("--student-dir", default=str(Path(tempfile.gettempdir()) / "babybear-profile-student"))
    ap.add_argument("--nodes", nargs="+", default=["student", "student-bf16", "mamabear"],
                    choices=["student", "student-bf16", "mamabear"],
                    help="student: dtype auto (float32 on a CPU); student-bf16: bfloat16 autocast; mamabear: "
                    "mpnet-news-ner, dtype auto (bfloat16 autocast on a CPU with native bf16)")
    ap.add_argument("--before", help="git revision whose code is measured beside the working tree's")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (a fresh process per side and round)")
    ap.add_argument("--inner", type=int, default=2, help="timed predict_batch calls per process (best is kept)")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/profile_nodes.json"))
    # worker mode (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    ap.add_argument("--texts", help=argparse.SUPPRESS)
    ap.add_argument("--code", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--detail", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    command = "OMP_NUM_THREADS=1 python " + " ".join([os.path.relpath(__file__, REPO), *sys.argv[1:]])
    train, test = _texts(args.train, args.test)
    student_dir = Path(args.student_dir)
    report: dict[str, Any] = {
        "command": command,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "threads": 1, "note": "shared machine: other jobs ran; min over rounds is reported"},
        "texts": {"corpus": "BBC test (babybear.corpus.bbc_sentences, shuffled with seed 0)", "n": len(test),
                  "whitespace_tokens": sum(len(t.split()) for t in test)},
        "before": None if not args.before else subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", args.before], check=True, capture_output=True, text=True
        ).stdout.strip(),
        "student": _student(student_dir, train) if any(n.startswith("student") for n in args.nodes) else None,
        "nodes": {},
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        texts = tmp / "texts.json"
        texts.write_text(json.dumps(test))
        before = _checkout(args.before, tmp) if args.before else None
        sides = {"after": None, "before": before} if before else {"after": None}
        for kind in args.nodes:
            runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
            for r in range(args.rounds):
                for side, code in (sides.items() if r % 2 == 0 else reversed(list(sides.items()))):
                    res = _run_worker(kind, code, texts, student_dir, args.inner, detail=(r == 0), tmp=tmp)
                    runs[side].append(res)
                    print(f"{kind} {side} round {r}: {res['wall_s']:.3f} s", file=sys.stderr, flush=True)
            entry: dict[str, Any] = {}
            for side, results in runs.items():
                first = results[0]
                entry[side] = {
                    "settings": {k: first[k] for k in ("compute_dtype", "batch_size", "max_length")},
                    "wall_s_best": min(x["wall_s"] for x in results),
                    "wall_s_all": [w for x in results for w in x["walls_s"]],
                    "ms_per_sentence": 1000 * min(x["wall_s"] for x in results) / len(test),
                    "without_forward_s_best": min(x["without_forward_s"] for x in results),
                    "without_forward_share": min(x["without_forward_s"] for x in results)
                    / min(x["wall_s"] for x in results),
                    "cprofile_total_s": first["cprofile_total_s"],
                    "cprofile_split_s": {k: round(v, 4) for k, v in first["cprofile_split_s"].items()},
                    "cprofile_split_share": {k: round(v / first["cprofile_total_s"], 3)
                                             for k, v in first["cprofile_split_s"].items()},
                    "cprofile_top_tottime": first["cprofile_top_tottime"],
                    "torch_profiler": first["torch_profiler"],
                }
            if before:
                a, b = runs["after"][0]["predictions"], runs["before"][0]["predictions"]
                entry["identical_predictions"] = a == b
                entry["n_differing_texts"] = sum(x != y for x, y in zip(a, b))
                entry["wall_ratio_after_over_before"] = entry["after"]["wall_s_best"] / entry["before"]["wall_s_best"]
                entry["speedup_before_over_after"] = 1 / entry["wall_ratio_after_over_before"]
                entry["without_forward_ratio_after_over_before"] = (
                    entry["after"]["without_forward_s_best"] / entry["before"]["without_forward_s_best"])
            report["nodes"][kind] = entry
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: {f"{s}_ms_per_sentence": v[s]["ms_per_sentence"] for s in ("before", "after") if s in v}
                      | {f"{s}_without_forward_s": v[s]["without_forward_s_best"] for s in ("before", "after") if s in v}
                      | {x: v[x] for x in ("identical_predictions", "n_differing_texts") if x in v}
                      for k, v in report["nodes"].items()}, indent=1))


if __name__ == "__main__":
    main()
