"""The Ray door on a local Ray instance: same answers as the single process, bad rows reported per row."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from circuit import BabybearError, Circuit
from circuit.cli import main
from circuit.corpus import bbc_sentences

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from circuit.ray_engine import run_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def register_toy_nodes() -> None:
    """Ray worker setup hook: the toy node types live in the tests, not in an installed package."""
    import tests.conftest  # noqa: F401


@pytest.fixture(scope="module")
def circuit_dir(tmp_path_factory):
    from tests.conftest import CapsMamabear, Memorizer

    train, _ = bbc_sentences()
    circuit = Circuit("toy", {"min_entity_f1": 0.99}).add("memo", Memorizer()).add("mama", CapsMamabear()).connect("memo", "mama")
    return circuit.fit(train[:600], progress=False).save(tmp_path_factory.mktemp("toy") / "circuit")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}, "worker_process_setup_hook": "tests.test_ray.register_toy_nodes"},
    )
    yield
    ray.shutdown()


@pytest.mark.slow
def test_same_answers_as_the_single_process_and_bad_rows_reported(circuit_dir, local_ray, tmp_path):
    _, test = bbc_sentences()
    lines = [json.dumps({"id": f"bbc{i}", "text": t}) for i, t in enumerate(test[:200])]
    lines[10:10] = [
        json.dumps({"id": "num", "text": 42}),  # not a string
        json.dumps({"id": "none"}),  # no text field
        "{broken json",
        "",
        "a plain line about Tony Blair in London",
        json.dumps({"id": "long", "text": " ".join(test[200:260])}),  # cut into several units
        json.dumps({"id": None, "text": "an id of null is named by its line"}),
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["run", str(circuit_dir), "--input", str(source), "--output", str(tmp_path / "local.jsonl")]) == 0

    summary = run_dataset(circuit_dir, source, tmp_path / "ray.jsonl", num_cpu_workers=2, batch_size=64)

    local = (tmp_path / "local.jsonl").read_text(encoding="utf-8").splitlines()
    distributed = (tmp_path / "ray.jsonl").read_text(encoding="utf-8").splitlines()
    assert distributed == local  # same entities, nodes, ids, errors, in input order
    rows = [json.loads(r) for r in distributed]
    assert summary["rows"] == len(lines) and summary["errors"] == 3
    assert rows[10]["error"] == "line 11: field 'text' is missing or not a string" and rows[10]["id"] == "num"
    assert rows[11]["error"].startswith("line 12:") and rows[12]["error"].startswith("line 13: not valid JSON")
    assert rows[13] == {"id": "14", "text": "", "entities": [], "node": None}
    assert {r["node"] for r in rows} >= {"memo", "mama"}  # both nodes answered some texts
    assert len(rows[15]["text"]) > 2000
    assert rows[16]["id"] == "17"


@pytest.mark.slow
def test_node_failures_are_handled_as_in_one_process(local_ray, tmp_path):
    from tests.conftest import FragileMamabear, FragileMemorizer

    train, test = bbc_sentences()
    circuit = Circuit("fragile").add("memo", FragileMemorizer()).add("mama", FragileMamabear()).connect("memo", "mama")
    folder = circuit.fit(train[:600], progress=False).save(tmp_path / "fragile")
    lines = test[:60]
    lines[5:5] = ["BREAK-BABY in a sentence about Tony Blair", "BREAK-MAMA with Gordon Brown in London", "{BREAK-MAMA"]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["run", str(folder), "--input", str(source), "--output", str(tmp_path / "local.jsonl")]) == 0
    run_dataset(folder, source, tmp_path / "ray.jsonl", num_cpu_workers=1, batch_size=16)
    local = (tmp_path / "local.jsonl").read_text(encoding="utf-8").splitlines()
    assert (tmp_path / "ray.jsonl").read_text(encoding="utf-8").splitlines() == local
    rows = [json.loads(r) for r in local]
    assert len(rows) == len(lines)
    # the babybear failed: the mamabear answered; the mamabear failed: no entities, and the error
    assert rows[5]["node"] == "mama" and rows[5].get("error") is None and rows[5]["entities"]
    assert "node 'mama' failed" in rows[6]["error"] and rows[6]["entities"] == []
    assert rows[7]["error"].startswith("line 8: not valid JSON")  # its own error comes first, in both
    assert sum("error" in r for r in rows) == 2


@pytest.mark.slow
def test_parquet_in_and_out_with_null_texts(circuit_dir, local_ray, tmp_path):
    _, test = bbc_sentences()
    texts = test[300:320] + [None]
    pq.write_table(pa.table({"text": pa.array(texts, pa.string())}), tmp_path / "in.parquet")

    run_dataset(circuit_dir, tmp_path / "in.parquet", tmp_path / "out.parquet")

    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    expected = Circuit.load(circuit_dir)(texts[:-1])
    assert [r["id"] for r in rows] == [str(i) for i in range(1, 22)]
    for row, answer in zip(rows, expected):
        assert row["node"] == answer.node and row["error"] is None
        assert [(e["start"], e["end"], e["label"]) for e in row["entities"]] == [tuple(s) for s in answer.spans]
    assert rows[-1]["error"] == "row 21: field 'text' is missing or not a string" and rows[-1]["entities"] == []


def test_without_ray_installed_the_error_says_how_to_install_it(circuit_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(BabybearError, match=r"pip install 'babybear\[ray\]'"):
        run_dataset(circuit_dir, tmp_path / "in.jsonl", tmp_path / "out.jsonl")


def test_cli_ray_engine_needs_files(circuit_dir, capsys):
    assert main(["run", str(circuit_dir), "--engine", "ray"]) == 2
    assert "give --input and --output" in capsys.readouterr().err
