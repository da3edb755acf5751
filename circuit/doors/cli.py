"""The ``babybear`` command: fit, run, eval, plus helpers to install the offline models and write corpora.

Errors are one line (``babybear: error: ...``) with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from ..errors import BabybearError, CircuitValidationError
from ..circuit import Circuit
from ..progress import console
from ..records import parse_line, text_lines
from ..schema import budget_problems
from ..types import Span

STREAM_CHUNK = 10_000  # `run` holds at most two chunks of this many records (smaller ones while answers are slow)


def _read_lines(path: str) -> list[str]:
    """The file's lines, read as ``run`` reads its input (:func:`babybear.records.text_lines`)."""
    file = Path(path)
    if not file.is_file():
        raise BabybearError(f"corpus file not found: {path}")
    with file.open("rb") as data:
        return list(text_lines(data))


def _read_texts(path: str) -> list[str]:
    """The texts of a corpus file, read row by row as ``run`` reads them (plain lines or JSONL ``{"id", "text"}``)."""
    texts = []
    for row in _records(_read_lines(path)):
        if "error" in row:
            raise BabybearError(f"{path}, {row['error']}")
        texts.append(row["text"])
    return texts


def _records(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Rows of JSONL (``{"id", "text"}``) or plain lines, read as the Ray engine reads them; a row without an id
    is named by its line number (from 1), and a bad row carries an error naming the line."""
    for n, line in enumerate(lines, 1):
        row = parse_line(line)
        record: dict[str, Any] = {"id": str(n) if row["id"] is None else row["id"], "text": row["text"]}
        if row["error"]:
            record["error"] = f"line {n}: {row['error']}"
        yield record


def positive_int(value: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return n


def cmd_fit(args: argparse.Namespace) -> None:
    circuit = Circuit.from_yaml(args.circuit)
    if args.budget is not None:
        circuit.budget = circuit.budget.model_copy(update={"min_entity_f1": args.budget})
        problems = budget_problems(circuit.budget)
        if problems:
            raise BabybearError(f"--budget {args.budget}: {problems[0].message}")
    texts = _read_texts(args.corpus)
    if args.limit:
        texts = texts[: args.limit]
    circuit.fit(texts, seed=args.seed, progress=not args.quiet)
    circuit.save(args.out)
    tuning = circuit.report_["tuning"]
    print(f"fitted {circuit.name} on {len(texts)} texts -> {args.out}")
    print(f"on the tuning split: entity-F1 vs mamabear {tuning['f1']:.4f}, mamabear calls avoided {tuning['mamabear_calls_avoided']:.1%}")


def cmd_run(args: argparse.Namespace) -> None:
    if args.input and args.output and Path(args.input).exists() and Path(args.output).exists() and os.path.samefile(args.input, args.output):
        raise BabybearError(f"--output {args.output} is the --input file: writing the answers would empty it before it is read")
    if args.resume and not args.output:
        raise BabybearError("--resume appends to an --output file: give --output (answers on stdout cannot be resumed)")
    if args.engine == "ray":
        if args.resume:
            raise BabybearError("--resume works with --engine local only: the ray engine writes its output file anew")
        _run_on_ray(args)
        return
    circuit = Circuit.load(args.dir)
    with contextlib.ExitStack() as files:
        # bytes both ways: UTF-8 whatever the locale, the same from a file as from stdin
        source = files.enter_context(open(args.input, "rb")) if args.input else sys.stdin.buffer
        records = _records(text_lines(source))
        done = 0
        if args.resume and Path(args.output).exists():
            sink = files.enter_context(open(args.output, "r+b"))
            done = _skip_answered(sink, args.output, records)
        else:
            sink = files.enter_context(open(args.output, "wb")) if args.output else sys.stdout.buffer
        total = _count_lines(args.input) if args.input and not args.quiet and Path(args.input).is_file() else None
        advance = files.enter_context(_progress(total, done, enabled=not args.quiet))
        # three readers of one stream: tee keeps only the records between the slowest and the fastest (a few chunks)
        for_texts, for_ids, for_output = itertools.tee(records, 3)
        texts, ids = (r["text"] for r in for_texts), (str(r["id"]) for r in for_ids)
        for answer, record in zip(circuit.stream(texts, ids, chunk=STREAM_CHUNK), for_output):
            out = {**answer.to_dict(), "id": record["id"]}  # the id as read: a JSON number stays a number
            if "error" in record:
                out["error"] = record["error"]
            sink.write(f"{json.dumps(out, ensure_ascii=False)}\n".encode())
            sink.flush()  # each answer as soon as it and all before it are known: a killed run leaves whole lines
            advance()


def _skip_answered(output: BinaryIO, name: str, records: Iterator[dict[str, Any]]) -> int:
    """For ``--resume``: check the complete lines of ``output`` (open for reading and writing) against the next
    ``records`` (which they consume), cut a partial last line and leave the file positioned to append after them.
    Returns how many records were answered already."""
    n = kept = 0
    for line in output:
        if not line.endswith(b"\n"):
            break  # the run was killed while writing this line
        n += 1
        try:
            row = json.loads(line)
            answered = (row["id"], row["text"])
        except (ValueError, KeyError, TypeError):
            raise BabybearError(f"--resume: {name}, line {n} is not an answer of `babybear run` (expected JSON with \"id\" and \"text\")") from None
        expected = next(records, None)
        if expected is None:
            raise BabybearError(f"--resume: {name} has more lines than the input has records ({n} or more): is it the output of this input?")
        if answered != (expected["id"], expected["text"]):
            what = f"id {answered[0]!r}, the input's {expected['id']!r}" if answered[0] != expected["id"] else "the text differs from the input's"
            raise BabybearError(f"--resume: {name}, line {n} does not answer input record {n} ({what}): is it the output of this input?")
        kept += len(line)
    output.seek(kept)
    output.truncate()
    return n


def _count_lines(path: str) -> int:
    """How many lines ``run`` reads from the file at ``path`` (a last line without ``\\n`` counts)."""
    n, last = 0, b"\n"
    with open(path, "rb") as data:
        while block := data.read(1 << 20):
            n, last = n + block.count(b"\n"), block[-1:]
    return n + (last != b"\n")


class _Rate(ProgressColumn):
    """Texts answered per second since the start, and the time left at that rate when the total is known (rich's
    own speed reads only the last 1,000 steps: one burst of answers)."""

    def render(self, task: Task) -> Text:
        rate = (task.completed - task.fields["done"]) / max(task.elapsed or 0, 1e-3)
        left = f", {timedelta(seconds=round((task.total - task.completed) / rate))} left" if task.total is not None and rate else ""
        return Text(f"{rate:,.0f} texts/s{left}")


@contextlib.contextmanager
def _progress(total: int | None, done: int, enabled: bool) -> Iterator[Callable[[], None]]:
    """Progress on stderr: texts answered and texts/s, with a bar when ``total`` is known (``done`` of them
    already); yields the function to call once per text answered."""
    if not enabled:
        yield lambda: None
        return
    count = [BarColumn(bar_width=20), MofNCompleteColumn()] if total is not None else [TextColumn("{task.completed:,} texts")]
    with Progress(TextColumn("answered"), *count, _Rate(), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("run", total=total, completed=done, done=done)
        yield lambda: bar.advance(task)


def _run_on_ray(args: argparse.Namespace) -> None:
    from .ray_engine import run_dataset

    if not (args.input and args.output):
        raise BabybearError("--engine ray reads and writes files: give --input and --output")
    summary = run_dataset(args.dir, args.input, args.output, num_cpu_workers=args.workers)
    print(f"answered {summary['rows']} rows ({summary['errors']} with errors) in {summary['seconds']:.1f} s -> {args.output}", file=sys.stderr)


def _read_gold(path: str) -> tuple[list[str], list[list[Span]]]:
    """JSONL of ``{"text", "entities": [{"start", "end", "label"}]}`` (as ``babybear corpus wnut`` writes it); every
    entity must lie inside its text."""
    texts, gold = [], []
    for n, line in enumerate(_read_lines(path), 1):
        try:
            row = json.loads(line)
            text, spans = row["text"], [Span(e["start"], e["end"], e["label"]) for e in row["entities"]]
            if not isinstance(text, str):
                raise TypeError("text is not a string")
        except (ValueError, KeyError, TypeError) as err:
            raise BabybearError(f"{path}, line {n}: expected {{\"text\", \"entities\": [{{\"start\", \"end\", \"label\"}}]}} ({err})") from err
        for s in spans:
            if not (type(s.start) is int and type(s.end) is int and 0 <= s.start < s.end <= len(text)):
                raise BabybearError(f"{path}, line {n}: entity {s.start!r}..{s.end!r} {s.label!r} is not inside the text (need whole numbers 0 <= start < end <= {len(text)})")
        texts.append(text)
        gold.append(spans)
    return texts, gold


def _warn_if_no_gold_label_is_the_circuits(circuit: Circuit, gold: list[list[Span]]) -> None:
    """Scoring against gold counts exact labels: warn when no gold label is among those of the mamabear's answers
    on the held-out texts (e.g. WNUT's person, geo-loc, ... against OntoNotes' PERSON, GPE, ...)."""
    if circuit.heldout_ is None:
        return
    ours = {s.label for p in circuit.heldout_.run.reference for s in p.spans}
    theirs = {s.label for spans in gold for s in spans}
    if ours and theirs and not ours & theirs:
        print(
            f"babybear: warning: none of the gold labels ({', '.join(sorted(theirs))}) is among the circuit's ({', '.join(sorted(ours))}; "
            "its mamabear's answers at warm-up), so entity-F1 vs gold is 0: map the gold labels to the circuit's first",
            file=sys.stderr,
        )


def cmd_eval(args: argparse.Namespace) -> None:
    if bool(args.corpus) == bool(args.gold):
        raise BabybearError("eval needs either --corpus (plain texts) or --gold (texts with gold entities)")
    circuit = Circuit.load(args.dir)
    texts, gold = _read_gold(args.gold) if args.gold else (_read_texts(args.corpus), None)
    if gold is not None:
        _warn_if_no_gold_label_is_the_circuits(circuit, gold)
    if args.limit:
        texts, gold = texts[: args.limit], gold[: args.limit] if gold else None
    report = circuit.evaluate(texts, gold, progress=not args.json)
    if args.json:
        print(json.dumps(report))
        return
    print(f"texts: {report['texts']}")
    print(f"mamabear calls avoided: {report['mamabear_calls_avoided']:.1%} (tokens avoided: {report['mamabear_tokens_avoided']:.1%})")
    print(f"entity-F1 vs mamabear: {report['entity_f1_vs_mamabear']:.4f} (budget {circuit.budget.min_entity_f1})")
    print(f"wall time, circuit / mamabear alone: {report['wall_time_ratio']:.2f}")
    if "entity_f1_vs_gold" in report:
        vs_gold = report["entity_f1_vs_gold"]
        print(f"entity-F1 vs gold: circuit {vs_gold['circuit']:.4f}, mamabear alone {vs_gold['mamabear']:.4f}")
    for name, n in report["texts_per_node"].items():
        if not circuit.slot(name).enabled:
            print(f"  {name:>12}: switched off by tuning (it did not earn back its cost)")
            continue
        cost = report["node_cost_seconds_per_text"][name]
        print(f"  {name:>12}: answered {n:>7} texts; {1000 * cost:7.2f} ms per text it saw ({report['node_texts_reached'][name]} texts)")


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import main as bench

    code = bench([args.dir, *args.options])
    if code:
        raise BabybearError(f"the benchmark exited with status {code}")


def cmd_models(args: argparse.Namespace) -> None:
    from babybear.nodes import models

    if args.action == "list":
        for pkg in models.MODEL_PACKAGES:
            reqs = pkg.requirements
            req = reqs[0] if len(reqs) == 1 else f"{reqs[0]} ... ({len(reqs)} parts)"
            print(f"{pkg.alias:<16} {pkg.kind:<8} {req:<40} {pkg.licence}{'' if pkg.default else ' (on demand)'}")
        for name, command in models.BUILT_MODELS.items():
            state = "built" if models.built_model(name) else "not built"
            print(f"{name:<16} {'hf':<8} {'`' + command + '`':<40} {state}")
    elif args.action == "build":
        from babybear.nodes.build_ner import RECIPES, build_model

        for name in args.names or list(RECIPES):
            build_model(name, force=args.force, corpus=args.corpus)
    else:
        models.install_models(args.names or None)


def cmd_corpus(args: argparse.Namespace) -> None:
    from .. import corpus

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.name == "bbc":
        train, test = corpus.bbc_sentences()
        (out / "bbc.train.txt").write_text("\n".join(train) + "\n", encoding="utf-8")
        (out / "bbc.test.txt").write_text("\n".join(test) + "\n", encoding="utf-8")
        print(f"wrote {len(train)} train and {len(test)} test sentences to {out}/bbc.{{train,test}}.txt")
    else:
        texts, gold = corpus.wnut_sentences()
        (out / "wnut.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
        with open(out / "wnut.gold.jsonl", "w", encoding="utf-8") as f:
            for t, g in zip(texts, gold):
                f.write(json.dumps({"text": t, "entities": [s._asdict() for s in g]}) + "\n")
        print(f"wrote {len(texts)} tweets to {out}/wnut.txt (gold spans in wnut.gold.jsonl)")


def parse_costs(pairs: list[str]) -> dict[str, float]:
    """``["mamabear=1", "crf=0.01"]`` as a dict of node costs; a malformed pair is an error naming it."""
    costs = {}
    for pair in pairs:
        name, _, value = (part.strip() for part in pair.partition("="))
        try:
            if not name:
                raise ValueError
            costs[name] = float(value)
        except ValueError:
            raise BabybearError(f"--cost {pair!r}: expected NODE=NUMBER, e.g. --cost mamabear=1") from None
    return costs


def cmd_tune(args: argparse.Namespace) -> None:
    from ..tuning.audit import load_run

    circuit = Circuit.load(args.dir)
    run = load_run(args.audit, circuit) if args.audit else None
    try:  # a bad new budget is refused before anything changes
        circuit.tune(args.budget, method=args.method, run=run, costs=parse_costs(args.cost), bound=args.bound, confidence=args.confidence, off=args.off)
    except CircuitValidationError as err:
        flags = {"budget.min_entity_f1": "--budget", "budget.confidence": "--confidence"}
        raise BabybearError("; ".join(f"{flags[p.location]}: {p.location} {p.message}" if p.location in flags else str(p) for p in err.problems)) from None
    circuit.save(args.dir)
    tuning = circuit.report_["tuning"]
    source = f"audit {args.audit}" if args.audit else "the held-out tuning split"
    print(f"re-tuned {args.dir} ({args.method}) on {source}: entity-F1 vs mamabear {tuning['f1']:.4f}, mamabear calls avoided {tuning['mamabear_calls_avoided']:.1%}")
    for edge, value in circuit.report_["thresholds"].items():
        print(f"  {edge}: {value:.6f}")


def cmd_report(args: argparse.Namespace) -> None:
    from ..report import held_out_report, write_plots

    circuit = Circuit.load(args.dir)
    try:
        report = held_out_report(circuit, args.price_per_hour, args.watts)
    except BabybearError as err:
        raise BabybearError(f"{args.dir}: {err}") from None
    now, result, unit = report["now"], report["optimizer"], report["unit"]
    print(f"{circuit.name}: budget entity-F1 >= {circuit.budget.min_entity_f1} at confidence {circuit.budget.confidence}")
    print("thresholds:")
    for (s, t), v in report["thresholds"].items():
        print(f"  {s}->{t}: {v:.6f}")
    if report["tuned_elsewhere"] is not None:
        print(f"the thresholds were tuned on another run ({report['tuned_elsewhere']} texts, e.g. tune --audit); below, the held-out tuning split")
    print(f"on the tuning split ({report['texts']} texts): entity-F1 {now['f1']:.4f}, mamabear calls avoided {now['mamabear_calls_avoided']:.1%}, "
          f"mamabear tokens avoided {now['mamabear_tokens_avoided']:.1%}")
    print("answered: " + ", ".join(f"{n} {v:.1%}" for n, v in now["answered"].items()))
    near = [p for p in result["frontier"] if p["f1"] >= circuit.budget.min_entity_f1 - 0.05]
    shown = near[:: max(1, -(-len(near) // 20))]
    print(f"Pareto frontier near the budget, {len(shown)} of {len(result['frontier'])} points ({unit}, entity-F1, mamabear calls avoided):")
    for p in shown:
        print(f"  {p['cost_per_token']:.3e}  {p['f1']:.4f}  {p['mamabear_calls_avoided']:.1%}")
    for node, alt in result.get("switch_off", {}).items():
        print(f"without {node} (enabled: false): {alt['cost_per_token']:.3e} {unit}, entity-F1 {alt['f1']:.4f}, saving {alt['saving']:.1%}")
    print(f"per 1M tokens at ${args.price_per_hour}/hour and {args.watts} W:")
    for name, v in report["price_tag"].items():
        print(f"  {name:>15}: {v['mamabear_calls']:,.0f} mamabear calls, {v['compute_seconds']:,.0f} s, ${v['dollars']:.4f}, {v['kwh']:.4f} kWh")
    files = write_plots(report, circuit.budget.min_entity_f1, Path(args.out or Path(args.dir) / "report"))
    print("wrote " + ", ".join(str(f) for f in files))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="babybear", description="Cheap NER models in front of an expensive one.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="warm up a circuit on unlabeled text and save it")
    p.add_argument("circuit", help="circuit YAML file")
    p.add_argument("--corpus", required=True, help="UTF-8 text, one text per line, or JSONL {\"id\", \"text\"} rows (as run reads them)")
    p.add_argument("--out", required=True, help="folder for the fitted circuit")
    p.add_argument("--budget", type=float, help="override budget.min_entity_f1")
    p.add_argument("--limit", type=positive_int, help="use only the first N lines")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("run", help="answer texts with a fitted circuit (JSONL out, in input order)")
    p.add_argument("dir", help="fitted circuit folder")
    p.add_argument("--input", help="JSONL ({id, text}) or plain lines; stdin by default")
    p.add_argument("--output", help="JSONL file; stdout by default")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="ray: Ray Data actor pools (pip install 'babybear[ray]'); JSONL or Parquet in and out")
    p.add_argument("--workers", type=int, default=1, help="with --engine ray: babybear (CPU) actors")
    p.add_argument("--resume", action="store_true", help="keep the answers already in --output (a partial last line dropped) and answer the rest")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("eval", help="compare a fitted circuit with its mamabear alone on the same texts")
    p.add_argument("dir")
    p.add_argument("--corpus", help="UTF-8 text, one text per line, or JSONL {\"id\", \"text\"} rows (as run reads them)")
    p.add_argument("--gold", help="JSONL {text, entities}: also score both against gold")
    p.add_argument("--limit", type=positive_int, help="use only the first N texts")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("tune", help="re-tune a fitted circuit's thresholds from its cached outputs, without refitting")
    p.add_argument("dir", help="fitted circuit folder (rewritten in place)")
    p.add_argument("--budget", type=float, help="new budget.min_entity_f1")
    p.add_argument("--confidence", type=float, help="new budget.confidence")
    p.add_argument("--method", choices=["joint", "per_edge", "nearest"], default="joint")
    p.add_argument("--bound", choices=["ltt", "bootstrap"], default="ltt", help="the joint method's lower confidence bound")
    p.add_argument("--audit", help="tune on an audit file (Audit.save) instead of the held-out split: recalibrate after drift")
    p.add_argument(
        "--cost",
        action="append",
        default=[],
        metavar="NODE=PRICE",
        help="price a node per token instead of its cost measured in fit (repeatable); e.g. --cost mamabear=1 "
        "--cost crf=0 minimises mamabear calls, as on a machine where the mamabear's GPU is the bill",
    )
    p.add_argument("--off", action="append", default=[], metavar="NODE",
                   help="keep a babybear switched off (repeatable): what the circuit saves without it")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("report", help="print thresholds and the (cost, F1) frontier; write PNG plots")
    p.add_argument("dir", help="fitted circuit folder")
    p.add_argument("--out", help="folder for the PNGs (DIR/report by default)")
    p.add_argument("--price-per-hour", type=float, default=4.0, help="instance price in $ per hour")
    p.add_argument("--watts", type=float, default=700.0, help="power draw in watts")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="time the naive mamabear, the mamabear through the scheduler and the circuit, side by side")
    p.add_argument("dir", help="fitted circuit folder")
    p.add_argument("options", nargs=argparse.REMAINDER, help="options of babybear.doors.bench (--corpus, --limit, --price-per-hour, ...)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("models", help="list, install or build the offline models and corpora")
    p.add_argument("action", choices=["list", "install", "build"])
    p.add_argument("names", nargs="*", help="aliases from `babybear models list` (install: the default set; build: all)")
    p.add_argument("--force", action="store_true", help="build: rebuild a model that is already built")
    p.add_argument("--corpus", help="build: sentences to train on, one a line (default: the BBC training split)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("corpus", help="write a ready corpus as one text per line")
    p.add_argument("name", choices=["bbc", "wnut"])
    p.add_argument("--out", default="data")
    p.set_defaults(func=cmd_corpus)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except BabybearError as err:
        print(f"babybear: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`babybear report DIR | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that flushing at exit cannot fail again
        return 141
    except OSError as err:  # a file the command was pointed at cannot be read or written
        where = f"{err.filename}: " if err.filename else ""
        print(f"babybear: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("babybear: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
