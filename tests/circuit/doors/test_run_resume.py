"""`babybear run` survives a kill: answers are written as they come, `--resume` finishes the file; progress."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from babybear import Circuit, register_node
from babybear.doors.cli import main
from tests.conftest import CapsMamabear, Memorizer, synthetic_texts

ROOT = Path(__file__).resolve().parents[3]


def test_a_stream_answers_its_first_texts_before_reading_far_ahead(toy_circuit):
    circuit = toy_circuit.fit(synthetic_texts(300), progress=False)
    read = 0

    def texts():
        nonlocal read
        for text in synthetic_texts(5000, seed=1):
            read += 1
            yield text

    answers = circuit.stream(texts())
    next(answers)
    assert read <= 200  # two small first chunks, not two of 10,000
    assert sum(1 for _ in answers) == 4999


@register_node("test.SlowCapsMamabear.v1")
class SlowCapsMamabear(CapsMamabear):
    """A CapsMamabear at 2 ms a text: slow enough to kill a run halfway."""

    def predict_batch(self, texts):
        time.sleep(2e-3 * len(texts))
        return super().predict_batch(texts)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    circuit = Circuit("slow", {"min_entity_f1": 0.99}).add("memo", Memorizer()).add("mama", SlowCapsMamabear()).connect("memo", "mama")
    return circuit.fit(synthetic_texts(400), progress=False).save(tmp_path_factory.mktemp("resume") / "fitted")


def corpus(n: int) -> str:
    """``n`` lines: plain texts, JSONL rows with string and numeric ids, a row that is not JSON, a blank line."""
    lines = synthetic_texts(n, seed=7)
    for k in range(0, n, 7):
        lines[k] = json.dumps({"id": k if k % 2 else f"s{k}", "text": lines[k]})
    lines[n // 3] = '{"id": "broken", "text": "Alice met Bob"'
    lines[n // 2] = ""
    return "\n".join(lines) + "\n"


def run(folder: Path, source: Path, output: Path, *flags: str) -> int:
    return main(["run", str(folder), "--input", str(source), "--output", str(output), "--quiet", *flags])


def test_a_killed_run_leaves_whole_lines_and_resume_finishes_it_as_one_run_would(folder, tmp_path):
    source, killed, whole = tmp_path / "in.jsonl", tmp_path / "killed.jsonl", tmp_path / "whole.jsonl"
    source.write_text(corpus(2000), encoding="utf-8")
    code = f"import sys, tests.circuit.doors.test_run_resume; from babybear.doors.cli import main; sys.exit(main(['run', {str(folder)!r}, '--input', {str(source)!r}, '--output', {str(killed)!r}, '--quiet']))"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and not (killed.exists() and killed.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.01)  # until the first answers are out
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, proc.stderr.read().decode()
    head = killed.read_bytes()
    assert 0 < head.count(b"\n") < 2000  # killed halfway, with answers written
    assert run(folder, source, whole) == 0
    assert whole.read_bytes().startswith(head[: head.rindex(b"\n") + 1])
    assert run(folder, source, killed, "--resume") == 0
    assert killed.read_bytes() == whole.read_bytes()


@pytest.fixture(scope="module")
def answered(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A small input and its answers from an uninterrupted run."""
    tmp = tmp_path_factory.mktemp("answered")
    (tmp / "in.jsonl").write_text(corpus(60), encoding="utf-8")
    assert run(folder, tmp / "in.jsonl", tmp / "out.jsonl") == 0
    return tmp / "in.jsonl", (tmp / "out.jsonl").read_bytes()


@pytest.mark.parametrize("kept", [0, 1, 25, 59, 60])
def test_resume_drops_a_partial_last_line_and_appends_the_rest(folder, answered, tmp_path, kept):
    source, whole = answered
    lines = whole.splitlines(keepends=True)
    output = tmp_path / "out.jsonl"
    output.write_bytes(b"".join(lines[:kept]) + (lines[kept][:20] if kept < len(lines) else b""))
    assert run(folder, source, output, "--resume") == 0
    assert output.read_bytes() == whole


def test_resume_without_an_earlier_output_is_a_whole_run(folder, answered, tmp_path):
    source, whole = answered
    assert run(folder, source, tmp_path / "new.jsonl", "--resume") == 0
    assert (tmp_path / "new.jsonl").read_bytes() == whole


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda rows: rows[:3] + [{**rows[3], "id": "other"}], "line 4 does not answer input record 4 (id 'other', the input's 'x3')"),
        (lambda rows: rows[:2] + [{**rows[2], "text": "another text"}], "line 3 does not answer input record 3 (the text differs from the input's)"),
        (lambda rows: rows + rows[:1], "has more lines than the input has records (6 or more)"),
    ],
)
def test_resume_refuses_the_output_of_another_input_and_leaves_it(folder, tmp_path, capsys, change, message):
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps({"id": f"x{k}", "text": t}) + "\n" for k, t in enumerate(synthetic_texts(5))), encoding="utf-8")
    assert run(folder, source, output) == 0
    output.write_text("".join(json.dumps(r) + "\n" for r in change([json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()])), encoding="utf-8")
    before = output.read_bytes()
    assert run(folder, source, output, "--resume") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"babybear: error: --resume: {output}") and message in err and err.count("\n") == 1
    assert output.read_bytes() == before


@pytest.mark.parametrize(("flags", "message"), [([], "--resume appends to an --output file"), (["--engine", "ray", "--output", "o.jsonl"], "--resume works with --engine local only")])
def test_resume_needs_an_output_file_and_the_local_engine(folder, tmp_path, capsys, flags, message):
    (tmp_path / "in.txt").write_text("yesterday Alice met Bob\n", encoding="utf-8")
    assert main(["run", str(folder), "--input", str(tmp_path / "in.txt"), "--resume", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"babybear: error: {message}") and err.count("\n") == 1


@pytest.mark.parametrize("quiet", [False, True])
@pytest.mark.parametrize("stdin", [False, True])
def test_progress_on_stderr_unless_quiet(folder, tmp_path, capsys, monkeypatch, quiet, stdin):
    data = "\n".join(synthetic_texts(50)) + "\n"
    (tmp_path / "in.txt").write_text(data, encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data.encode())))
    source = [] if stdin else ["--input", str(tmp_path / "in.txt")]
    assert main(["run", str(folder), *source, "--output", str(tmp_path / "out.jsonl"), *["--quiet"] * quiet]) == 0
    err = capsys.readouterr().err
    # a bar with a count of a known total from a file; a count from stdin
    assert err == "" if quiet else ("answered" in err and ("50 texts" if stdin else "50/50") in err and "texts/s" in err)
