"""The Ray door on a local Ray instance: same answers as the single process, bad rows reported per row."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from babybear import BabybearError, Circuit
from babybear.doors.cli import main
from babybear.corpus import bbc_sentences

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from babybear.doors.ray_engine import _cpu_plan, run_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
RUNTIME_ENV = {"env_vars": {"PYTHONPATH": str(ROOT)}, "worker_process_setup_hook": "tests.circuit.doors.test_ray.register_toy_nodes"}
TWO_NODES_SECONDS = 240  # the job's time limit on the two-node cluster: a stalled job fails instead of hanging


def register_toy_nodes() -> None:
    """Ray worker setup hook: the toy node types live in the tests, not in an installed package."""
    import tests.conftest  # noqa: F401


@pytest.fixture(scope="module")
def circuit_dir(tmp_path_factory):
    from tests.conftest import CapsMamabear, Memorizer

    train, _ = bbc_sentences()
    circuit = Circuit("toy", {"min_entity_f1": 0.99}).add("memo", Memorizer()).add("mama", CapsMamabear()).connect("memo", "mama")
    # priced, not timed: on a loaded machine the memorizer's measured cost could switch it off, and then it answers nothing
    circuit.fit(train[:600], progress=False).tune(costs={"memo": 0.0, "mama": 1.0})
    return circuit.save(tmp_path_factory.mktemp("toy") / "circuit")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env=RUNTIME_ENV,
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


def run_on_two_nodes(folder: str, source: str, output: str, seconds: float) -> None:
    """In a child process: a cluster of two one-CPU nodes runs the job; prints its summary or what went wrong.

    The job runs in a thread given ``seconds``: if it is still running then, the cluster is shut down anyway.
    """
    from ray.cluster_utils import Cluster

    register_toy_nodes()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    result: dict = {}
    outcome = {"error": "the cluster did not start"}
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, runtime_env=RUNTIME_ENV)

        def job() -> None:
            try:
                result["summary"] = run_dataset(folder, source, output, num_cpu_workers=2)
            except Exception as err:  # noqa: BLE001  (reported to the test)
                result["error"] = repr(err)

        thread = threading.Thread(target=job, daemon=True)
        thread.start()
        thread.join(seconds)
        outcome = {"error": f"no answer after {seconds} s"} if thread.is_alive() else dict(result)
    finally:
        ray.shutdown()
        cluster.shutdown()
    print("RESULT " + json.dumps(outcome), flush=True)
    os._exit(0)  # the stalled job's thread, if any, is not waited for


@pytest.mark.slow
def test_a_cluster_whose_cpus_the_actors_fill_still_reads_its_input(circuit_dir, tmp_path):
    # two nodes of one CPU, three actors (two babybear, one mamabear): 1/3 CPU each left 1/3 and 2/3 free, and the
    # one-CPU read task fit on neither node, so the job waited forever
    _, test = bbc_sentences()
    source = tmp_path / "in.txt"
    source.write_text("\n".join(test[:500]) + "\n", encoding="utf-8")
    assert main(["run", str(circuit_dir), "--input", str(source), "--output", str(tmp_path / "local.jsonl")]) == 0
    call = "import sys; from tests.circuit.doors.test_ray import run_on_two_nodes; run_on_two_nodes(*sys.argv[1:4], float(sys.argv[4]))"
    args = [sys.executable, "-c", call, str(circuit_dir), str(source), str(tmp_path / "ray.jsonl"), str(TWO_NODES_SECONDS)]
    env = {**os.environ, "RAY_ENABLE_AUTO_CONNECT": "0"}  # a stalled job's executor must not start Ray again
    child = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        log, _ = child.communicate(timeout=TWO_NODES_SECONDS + 120)  # + starting and stopping the cluster
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        log, _ = child.communicate()
    results = [json.loads(line[len("RESULT "):]) for line in log.splitlines() if line.startswith("RESULT ")]
    assert results and "summary" in results[0], results or log[-3000:]
    assert results[0]["summary"]["rows"] == 500
    local = (tmp_path / "local.jsonl").read_text(encoding="utf-8")
    assert (tmp_path / "ray.jsonl").read_text(encoding="utf-8") == local


@pytest.mark.parametrize(
    ("nodes", "actors", "per_actor"),
    [([1, 1], 3, None), ([2], 3, None), ([1, 1, 1], 4, None), ([0, 2, 1], 5, None), ([4, 4], 3, None), ([1, 1], 3, 0.2)],
)
def test_the_cpu_plan_leaves_a_read_task_room_wherever_the_actors_go(nodes, actors, per_actor):
    actor, read = _cpu_plan(nodes, actors, per_actor)
    assert 0 < actor <= 1 and 0 < read <= 1

    def placements(left: int, free: tuple[float, ...]):  # every way Ray could place the actors, one by one
        if left == 0:
            yield free
            return
        for i, f in enumerate(free):
            if f >= actor - 1e-9:
                yield from placements(left - 1, free[:i] + (f - actor,) + free[i + 1 :])

    ends = list(placements(actors, tuple(float(n) for n in nodes)))
    assert ends and all(max(free) >= read - 1e-9 for free in ends)


def test_the_cpu_plan_gives_whole_cpus_where_they_fit_and_shares_where_they_do_not():
    assert _cpu_plan([1, 1], 3) == (0.25, 0.25)  # not 1/3 each with a whole-CPU read task, which stalled
    assert _cpu_plan([16], 3) == (1.0, 1.0)  # a roomy cluster: whole CPUs, as before
    assert _cpu_plan([1, 1], 2, 1.0) is None  # two whole-CPU actors leave nothing to read with
