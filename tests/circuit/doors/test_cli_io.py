"""The CLI's input and output (fake nodes): how lines and rows are read, what is written, errors of use."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pytest

from babybear import Circuit
from babybear.doors.cli import main
from babybear.records import record, text_lines
from tests.conftest import FIXTURES, synthetic_texts


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy circuit fitted through the CLI (copy it before a command that writes to it)."""
    tmp = tmp_path_factory.mktemp("cli_io")
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(synthetic_texts(400)), encoding="utf-8")
    assert main(["fit", str(FIXTURES / "valid.yaml"), "--corpus", str(corpus), "--out", str(tmp / "fitted"), "--quiet"]) == 0
    return tmp / "fitted"


def run_file(folder: Path, tmp_path: Path, data: bytes) -> list[dict]:
    """``babybear run`` on ``data`` as an input file; the output rows (the output must be valid UTF-8)."""
    (tmp_path / "in.txt").write_bytes(data)
    assert main(["run", str(folder), "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out.jsonl")]) == 0
    return [json.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().decode("utf-8").split("\n")[:-1]]


def test_lone_surrogates_become_replacement_characters_one_for_one():
    assert record("\udc80", "a\ud800b\U0001f600") == {"id": "\ufffd", "text": "a\ufffdb\U0001f600", "error": None}


def test_a_row_with_a_lone_surrogate_is_answered_and_so_are_the_rows_after_it(folder, tmp_path):
    rows = run_file(folder, tmp_path, b'{"id": "s", "text": "x \\ud800 met Alice"}\n{"id": "e", "text": "\\ud83d\\ude00 Bob"}\nyesterday Alice met Bob\n')
    assert [r["id"] for r in rows] == ["s", "e", "3"]
    assert rows[0]["text"] == "x \ufffd met Alice" and [(e["start"], e["end"]) for e in rows[0]["entities"]] == [(8, 13)]
    assert rows[1]["text"] == "\U0001f600 Bob"  # a pair of escapes is one character, not two lone halves


def test_a_numeric_id_keeps_its_json_type(folder, tmp_path):
    rows = run_file(folder, tmp_path, b'{"id": 7, "text": "yesterday Alice met Bob"}\n{"id": 2.5, "text": "Bob"}\n{"id": "7", "text": "Carol"}\n')
    assert [r["id"] for r in rows] == [7, 2.5, "7"] and rows[0]["entities"]


def test_a_row_that_is_not_json_gets_only_its_error(folder, tmp_path):
    good, bad = run_file(folder, tmp_path, b'{"id": "a", "text": "yesterday Alice met Bob"}\n{"id": "b", "text": "yesterday Alice met Bob"\n')
    assert good["entities"] and "error" not in good
    assert bad == {"id": "2", "text": "", "entities": [], "node": None, "error": bad["error"]}
    assert bad["error"].startswith("line 2: not valid JSON")


# every line break but "\n" (and one "\r" before it) stays inside its line; a lone "\r" too
BREAKS = "one\x0btwo\x0cthree\x1cfour\x1d\x1efive\x85six\u2028seven\rhalf\r\nnext\n"


def test_lines_split_at_newlines_only_with_a_bom_dropped_and_bad_bytes_replaced():
    data = b"\xef\xbb\xbf" + BREAKS.encode() + b"bad \xff\xfe end\r\n\nlast\r"
    lines = ["one\x0btwo\x0cthree\x1cfour\x1d\x1efive\x85six\u2028seven\rhalf", "next", "bad \ufffd\ufffd end", "", "last"]
    assert list(text_lines(io.BytesIO(data))) == lines


def run_stdin(monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture, folder: Path, data: bytes) -> bytes:
    """``babybear run`` with ``data`` on stdin (as Python opens it: locale encoding, surrogateescape); its stdout."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="surrogateescape"))
    assert main(["run", str(folder)]) == 0
    return capsysbinary.readouterr().out


def test_stdin_is_read_as_utf_8_with_replacement_like_an_input_file(folder, tmp_path, monkeypatch, capsysbinary):
    data = b'\xef\xbb\xbf{"id": "a", "text": "yesterday Alice met Bob"}\nbad \xff\xfe met Alice\r\n' + BREAKS.encode()
    out = run_stdin(monkeypatch, capsysbinary, folder, data)
    rows = [json.loads(line) for line in out.decode("utf-8").split("\n")[:-1]]
    assert [(r["id"], r["text"]) for r in rows[:2]] == [("a", "yesterday Alice met Bob"), ("2", "bad \ufffd\ufffd met Alice")]
    assert len(rows) == 4 and not any("error" in r for r in rows)
    assert run_file(folder, tmp_path, data) == rows
    assert (tmp_path / "out.jsonl").read_bytes() == out


def register_toy_nodes() -> None:
    """Ray worker setup hook: the toy node types live in the tests, not in an installed package."""
    import tests.conftest  # noqa: F401


@pytest.mark.slow
def test_the_ray_engine_reads_lines_as_run_does(folder, tmp_path):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from babybear.doors.ray_engine import run_dataset

    data = b'\xef\xbb\xbf{"id": "a", "text": "x \\ud800 met Alice"}\n' + BREAKS.encode() + b"bad \xff met Bob\r\n\nlast"
    assert len(run_file(folder, tmp_path, data)) == 6
    env = {"env_vars": {"PYTHONPATH": str(Path(__file__).parents[3])}, "worker_process_setup_hook": f"{__name__}.register_toy_nodes"}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env=env)
    try:
        summary = run_dataset(folder, tmp_path / "in.txt", tmp_path / "ray.jsonl")
    finally:
        ray.shutdown()
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "out.jsonl").read_bytes()
    assert summary["rows"] == 6 and summary["errors"] == 0


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_run_refuses_to_write_over_its_input(folder, tmp_path, capsys, engine):
    (tmp_path / "in.txt").write_text("yesterday Alice met Bob\n", encoding="utf-8")
    assert main(["run", str(folder), "--engine", engine, "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "." / "in.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("babybear: error: --output") and "is the --input file" in err and err.count("\n") == 1
    assert (tmp_path / "in.txt").read_text(encoding="utf-8") == "yesterday Alice met Bob\n"


@pytest.mark.parametrize("command", [["fit", "x.yaml", "--corpus", "c.txt", "--out", "y"], ["eval", "x", "--corpus", "c.txt"]])
@pytest.mark.parametrize("limit", ["0", "-3", "two"])
def test_limit_must_be_a_whole_number_of_at_least_one(capsys, command, limit):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--limit", limit])
    assert exit_.value.code == 2
    assert f"argument --limit: expected a whole number >= 1, got {limit!r}" in capsys.readouterr().err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


@pytest.mark.parametrize(("flag", "value", "field"), [("--confidence", "0", "budget.confidence"), ("--budget", "1.5", "budget.min_entity_f1")])
def test_tune_with_a_bad_budget_is_a_one_line_error_naming_the_flag_and_leaves_the_folder(folder, tmp_path, capsys, flag, value, field):
    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    before = snapshot(copy)
    assert main(["tune", str(copy), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"babybear: error: {flag}: {field} must be") and err.count("\n") == 1
    assert snapshot(copy) == before
    assert main(["tune", str(copy), "--confidence", "0.8"]) == 0
    assert Circuit.load(copy).budget.confidence == 0.8


@pytest.mark.parametrize(("entity", "shown"), [((3, 40), "3..40"), ((4, 4), "4..4"), ((-1, 2), "-1..2"), (("0", 2), "'0'..2")])
def test_a_gold_entity_outside_its_text_is_an_error_naming_the_line(folder, tmp_path, capsys, entity, shown):
    gold = tmp_path / "g.jsonl"
    rows = [{"text": "yesterday Alice met Bob", "entities": []}, {"text": "Short.", "entities": [{"start": entity[0], "end": entity[1], "label": "ORG"}]}]
    gold.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert main(["eval", str(folder), "--gold", str(gold)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"babybear: error: {gold}, line 2: entity {shown} 'ORG' is not inside the text") and err.count("\n") == 1


@pytest.mark.parametrize(("label", "warned"), [("person", True), ("ENT", False)])
def test_eval_warns_when_no_gold_label_is_one_of_the_circuits(folder, tmp_path, capsys, label, warned):
    gold = tmp_path / "g.jsonl"
    gold.write_text(json.dumps({"text": "yesterday Alice met Bob", "entities": [{"start": 10, "end": 15, "label": label}]}) + "\n", encoding="utf-8")
    assert main(["eval", str(folder), "--gold", str(gold), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["texts"] == 1
    warning = "babybear: warning: none of the gold labels (person) is among the circuit's (ENT, NUM"
    assert (warning in err) == warned


@pytest.mark.parametrize(("content", "message"), [(None, "not found"), ("{}", "cannot read it: lacks n_calibration, texts, costs, preds")])
def test_a_missing_or_damaged_audit_file_is_named_as_an_audit(folder, tmp_path, capsys, content, message):
    audit = tmp_path / "audit.json"
    if content is not None:
        audit.write_text(content, encoding="utf-8")
    assert main(["tune", str(folder), "--audit", str(audit)]) == 2
    assert capsys.readouterr().err.startswith(f"babybear: error: audit file {audit}: {message}")


def test_report_after_tuning_on_an_audit_shows_the_held_out_frontier_and_says_where_it_was_tuned(folder, tmp_path, capsys, monkeypatch):
    from babybear import report
    from babybear.tuning.audit import Audit

    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    audit = Audit(Circuit.load(copy), fraction=1.0)
    audit(synthetic_texts(150, seed=3))
    audit.flush()
    audit.save(tmp_path / "audit.json")
    optimized = []
    optimize = report.optimize  # what report runs when the stored frontier is not of the held-out rows
    monkeypatch.setattr(report, "optimize", lambda run, *a, **k: optimized.append(run.n) or optimize(run, *a, **k))

    assert main(["report", str(copy), "--out", str(tmp_path / "plots")]) == 0
    assert optimized == [] and "tuned on another run" not in capsys.readouterr().out  # fit stored the held-out frontier
    assert main(["tune", str(copy), "--audit", str(tmp_path / "audit.json")]) == 0
    capsys.readouterr()
    assert main(["report", str(copy), "--out", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    loaded = Circuit.load(copy)
    held_out = loaded.heldout_.tuning.n
    assert optimized == [held_out] != [len(audit.texts)] and f"on the tuning split ({held_out} texts)" in out
    assert f"the thresholds were tuned on another run ({len(audit.texts)} texts" in out


def test_a_reader_that_goes_away_ends_run_quietly(folder, tmp_path):
    import subprocess

    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(synthetic_texts(3000)), encoding="utf-8")
    code = f"import sys, tests.conftest; from babybear.doors.cli import main; sys.exit(main(['run', {str(folder)!r}, '--input', {str(inp)!r}]))"
    cmd = [sys.executable, "-c", code]  # tests.conftest registers the fake nodes in that process
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[3])
    proc.stdout.close()  # as `| head` does once it has what it wants
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "Broken pipe" not in err
