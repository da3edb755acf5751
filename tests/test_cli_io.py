"""The CLI's input and output (fake nodes): how lines and rows are read, what is written, errors of use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from circuit.cli import main
from circuit.records import record
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
