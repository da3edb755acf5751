"""The Ray door: answer a JSONL or Parquet dataset with Ray Data ``map_batches``, on one machine or a cluster.

Two actor pools share the work, as the circuit does:

* **babybears** (CPU actors): each text is cut into units as :class:`~babybear.circuit.Circuit` does, and the units
  are routed through every babybear; the mamabear is stood in for by a placeholder, so a unit that would reach
  it is only marked.
* **mamabear** (one GPU per actor when the cluster has GPUs, CPU otherwise): answers the marked units, then every
  text's answer is assembled from its units exactly as ``Circuit.__call__`` does.

So the answers (entities and ``node``) equal the single-process run. Rows come back in input order
(``preserve_order``) and the driver writes them to one JSONL or Parquet file. A row whose text is missing or not
a string gets no entities and an ``error``; the job goes on. The circuit's files travel in Ray's object store,
so workers need babybear installed but not the circuit folder.
"""

from __future__ import annotations

import inspect
import io
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BabybearError, NodeError
from ..artifacts import folder_files, write_folder_files
from ..circuit import Circuit
from ..node import Node
from ..records import parse_line, record, text_lines
from ..scheduler import Scheduler, text_answer
from ..text import split_text
from ..types import Answer, Prediction, Span

if TYPE_CHECKING:
    import pyarrow as pa
    import ray
    import ray.data

RESERVED_CPUS = 1.0  # left to Ray Data's read tasks when the cluster has it: actors holding every CPU stall it
_SHARES = tuple(k for k in range(1, 10_001) if 10_000 % k == 0)  # 1/k CPU is exact in Ray's units of 1/10,000
_CACHE_FILE = "heldout.json"  # the warm-up cache, for tuning only: not shipped to workers


def _require_ray() -> None:
    try:
        import pyarrow  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError as err:
        raise BabybearError(f"the ray engine needs Ray Data ({err.name} is missing): pip install 'babybear[ray]'") from err


# -- input rows ----------------------------------------------------------------------------------------------
def _file_lines(file: dict[str, Any]) -> list[dict[str, str]]:
    """The lines of one file (a ``read_binary_files`` row), split as ``babybear run`` splits its input."""
    return [{"text": line} for line in text_lines(io.BytesIO(file["bytes"]))]


def _rows_from_batch(batch: pa.Table, lines: bool) -> list[dict[str, Any]]:
    if lines:
        return [parse_line(line) for line in batch.column("text").to_pylist()]
    cols = batch.column_names
    ids = batch.column("id").to_pylist() if "id" in cols else [None] * batch.num_rows
    texts = batch.column("text").to_pylist() if "text" in cols else [None] * batch.num_rows
    return [record(i, t) for i, t in zip(ids, texts)]


def _table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    import pyarrow as pa

    return pa.table({"row": pa.array([json.dumps(r, ensure_ascii=False) for r in rows], pa.string())})


# -- the circuit's files, shipped to workers ---------------------------------------------------------------------
def _pack(folder: Path) -> dict[str, bytes | None]:
    """The folder's files by relative path (folders, some of which may be empty, map to None)."""
    if not (folder / "circuit.yaml").is_file():
        raise BabybearError(f"{folder}: not a fitted circuit folder (no circuit.yaml)")
    return folder_files(folder, skip=frozenset({_CACHE_FILE}))


def _unpack(files: ray.ObjectRef) -> tuple[Circuit, tempfile.TemporaryDirectory]:
    """The circuit, loaded from a copy of its folder in a temporary one that goes when the caller drops it."""
    import ray

    tmp = tempfile.TemporaryDirectory(prefix="babybear-")
    write_folder_files(ray.get(files), Path(tmp.name))
    return Circuit.load(tmp.name), tmp


class _Deferred(Node):
    """Stands in for the mamabear on the babybear workers: answers nothing, so reaching it only marks a unit."""

    role = "mamabear"

    def predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
        return [Prediction() for _ in texts]


# -- the two stages -------------------------------------------------------------------------------------------------
class BabybearStage:
    """Parses rows and routes their units through the babybears; marks the units that go on to the mamabear."""

    def __init__(self, files: ray.ObjectRef, lines: bool, batch_size: int) -> None:
        self.circuit, self._folder = _unpack(files)
        self.mamabear = self.circuit.mamabear
        for name in self.circuit.graph:
            if name != self.mamabear:
                self.circuit.node(name).warm_up()
        self.circuit.slot(self.mamabear).node = _Deferred()
        self.lines = lines
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = _rows_from_batch(batch, self.lines)
        units, owner = [], []
        for k, row in enumerate(rows):
            for s, e, _, _ in split_text(row["text"]):
                units.append(row["text"][s:e])
                owner.append(k)
            row["units"] = []
        with Scheduler(self.circuit, self.batch_size) as scheduler:  # a babybear failing on a unit passes it on
            routed = scheduler.route(units, [str(rows[k]["id"]) for k in owner])
        for u, k in enumerate(owner):
            # only the mamabear's failures are errors, and here it is a placeholder: the next stage runs it
            unit = {"spans": [list(s) for s in routed.spans[u]], "node": routed.exits[u], "confidence": routed.confidences[u]}
            rows[k]["units"].append(unit)
        return _table(rows)


class MamabearStage:
    """Answers the marked units with the mamabear and assembles each text's answer as ``Circuit.__call__`` does."""

    def __init__(self, files: ray.ObjectRef, batch_size: int) -> None:
        circuit, self._folder = _unpack(files)
        self.name = circuit.mamabear
        self.circuit = circuit
        circuit.node(self.name).warm_up()
        self.labels = circuit.topology.labels[self.name]
        self.rank = {n: k for k, n in enumerate(circuit.topology.order)}
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [json.loads(r) for r in batch.column("row").to_pylist()]
        todo = []
        for row in rows:
            bounds = split_text(row["text"])
            todo += [(row["text"][s:e], str(row["id"]), unit) for (s, e, _, _), unit in zip(bounds, row["units"]) if unit["node"] == self.name]
        with Scheduler(self.circuit, self.batch_size) as scheduler:
            run = scheduler.predict(self.name, [t for t, _, _ in todo], [i for _, i, _ in todo])
        for k, ((_, _, unit), pred) in enumerate(zip(todo, run.preds, strict=True)):
            if k in run.errors:
                unit["failure"] = run.errors[k].cause_text
            # the placeholder covered the mamabear's labels, so the babybears' spans left are for other labels
            unit["spans"] = sorted(list(s) for s in [*unit["spans"], *pred.restricted(self.labels)])
        return _table([self._answer(row) for row in rows])

    def _answer(self, row: dict[str, Any]) -> dict[str, Any]:
        """One text's answer; as in a single process, a text the mamabear failed on gets no entities and the error."""
        units = row["units"]
        failed = next((u for u in units if "failure" in u), None)
        if failed:
            out = {**Answer(row["text"], (), failed["node"], row["id"]).to_dict(), "failure": failed["failure"]}
        else:
            answered = [([Span(*s) for s in u["spans"]], u["node"], u["confidence"]) for u in units]
            out = text_answer(row["text"], split_text(row["text"]), answered, self.rank, row["id"]).to_dict()
        if row["error"]:
            out["error"] = row["error"]
        return out


# -- the job -----------------------------------------------------------------------------------------------------
def _cpu_plan(node_cpus: Sequence[float], actors: int, per_actor: float | None = None) -> tuple[float, float] | None:
    """CPUs for each actor and for each read task, such that all the actors fit and a read task always finds room.

    Both are multiples of one share, 1/k of a CPU, and so are the nodes' CPUs (rounded down to shares). Wherever
    Ray places the actors, each node's free CPUs are then whole shares, and as the actors leave at least one share
    free in all, some node has room for a read task of one share. Summing free CPUs over the cluster is not enough:
    three actors of 1/3 CPU on two one-CPU nodes leave 1/3 and 2/3, and a one-CPU read task fits on neither.
    A read task asks for the largest share that works (a whole CPU on a roomy cluster). An actor asks for
    ``per_actor`` CPUs, else 1, or less so that about ``RESERVED_CPUS`` stay free. None when no share works.
    """
    target = per_actor if per_actor is not None else min(1.0, max(sum(node_cpus) - RESERVED_CPUS, 0.1) / actors)
    for k in _SHARES:
        units = [math.floor(c * k + 1e-9) for c in node_cpus]  # each node's CPUs, in shares
        m = math.floor(target * k + 1e-9)  # an actor's CPUs, in shares
        if m < 1 or (per_actor is not None and abs(m - per_actor * k) > 1e-6):
            continue
        if actors * m <= sum(units) - 1 and sum(u // m for u in units) >= actors:
            return m / k, 1 / k
    return None


def run_dataset(
    circuit_dir: str | Path,
    source: str | Path | ray.data.Dataset,
    output: str | Path,
    *,
    num_cpu_workers: int = 1,
    num_gpu_workers: int = 1,
    cpus_per_worker: float | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Answer every row of ``source`` with the circuit in ``circuit_dir`` and write them, in order, to ``output``.

    ``source`` is a JSONL file (``{"id", "text"}`` per line, or plain text lines), a Parquet file or folder
    (columns ``text`` and optionally ``id``), or a Ray Dataset with those columns. ``output`` ending in
    ``.parquet`` is written as Parquet, anything else as JSONL; rows without an id get their 1-based row number,
    as ``babybear run`` does. Uses the running Ray instance, else ``ray.init()`` (which joins ``RAY_ADDRESS``
    when set, or starts a local one). Each actor asks for ``cpus_per_worker`` CPUs: by default 1, or less so
    that all actors fit on the cluster's nodes with about one CPU left to Ray Data's read tasks; those ask for
    a share of a CPU that some node always has free once the actors are placed, so the job cannot stall on a
    cluster the actors fill (see ``_cpu_plan``; a ``ray.data.Dataset`` passed in keeps its own read tasks).
    With GPUs in the cluster, each mamabear actor asks for one GPU instead. Returns a summary: rows, errors,
    texts per answering node, seconds.
    """
    _require_ray()
    import ray
    import ray.data

    if num_cpu_workers < 1 or num_gpu_workers < 1 or batch_size < 1:
        raise BabybearError(f"workers and batch_size must be >= 1, got {num_cpu_workers}, {num_gpu_workers}, {batch_size}")
    files = _pack(Path(circuit_dir))
    Circuit.load(circuit_dir).validate()  # fail here, not in every worker
    if not ray.is_initialized():
        ray.init(**({} if os.environ.get("RAY_ADDRESS") else {"include_dashboard": False}))
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    actors = num_cpu_workers + (0 if gpus else num_gpu_workers)
    node_cpus = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]]
    plan = _cpu_plan(node_cpus, actors, cpus_per_worker)
    if plan is None:
        if cpus_per_worker is None:
            raise BabybearError(f"{actors} actors do not fit on the Ray cluster's CPUs {node_cpus} with room left to read")
        plan = (cpus_per_worker, min(1.0, cpus_per_worker))  # as asked, with no promise that the reads find room
    cpus_per_worker, read_cpus = plan
    ds, lines = _dataset(source, read_cpus)
    files_ref = ray.put(files)
    start = time.perf_counter()
    ds = ds.map_batches(
        BabybearStage, fn_constructor_kwargs={"files": files_ref, "lines": lines, "batch_size": batch_size},
        batch_format="pyarrow", batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=num_cpu_workers), num_cpus=cpus_per_worker,
    )
    ds = ds.map_batches(
        MamabearStage, fn_constructor_kwargs={"files": files_ref, "batch_size": batch_size},
        batch_format="pyarrow", batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=num_gpu_workers), num_gpus=gpus, num_cpus=0 if gpus else cpus_per_worker,
    )
    ds.context.execution_options.preserve_order = True  # each Dataset runs with its own copy of the context
    summary = _write(ds, Path(output), "line" if lines else "row")
    summary["seconds"] = time.perf_counter() - start
    return summary


def _dataset(source: str | Path | ray.data.Dataset, read_cpus: float) -> tuple[ray.data.Dataset, bool]:
    """The input as a Ray Dataset, and whether its rows are raw JSONL lines (else ``id``/``text`` columns).

    Its read tasks ask for ``read_cpus`` each (Ray Data's default, a whole CPU, may fit on no node).
    """
    import ray.data

    if isinstance(source, ray.data.Dataset):
        return source, False
    uri = str(source)
    path = Path(uri)
    if "://" not in uri and not path.exists():  # URIs (s3://, gs://, ...) are for Ray's readers to find
        raise BabybearError(f"input not found: {path}")
    if uri.endswith(".parquet") or (path.is_dir() and any(path.glob("*.parquet"))):
        return ray.data.read_parquet(uri, **_read_cpus(ray.data.read_parquet, read_cpus)), False
    files = ray.data.read_binary_files(uri, **_read_cpus(ray.data.read_binary_files, read_cpus))
    return files.flat_map(_file_lines, num_cpus=read_cpus), True


def _read_cpus(reader: Any, cpus: float) -> dict[str, Any]:
    """The reader's arguments for ``cpus`` CPUs a task: ``num_cpus`` in recent Ray, ``ray_remote_args`` before."""
    named = "num_cpus" in inspect.signature(reader).parameters
    return {"num_cpus": cpus} if named else {"ray_remote_args": {"num_cpus": cpus}}


def _write(ds: ray.data.Dataset, output: Path, unit: str) -> dict[str, Any]:
    """Stream the answers to ``output`` in order; a missing id becomes the row number, errors say which row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    output.parent.mkdir(parents=True, exist_ok=True)
    n = errors = 0
    per_node: dict[str, int] = {}

    def batches() -> Iterator[list[dict[str, Any]]]:
        nonlocal n, errors
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            rows = []
            for raw in batch.column("row").to_pylist():
                n += 1
                row = json.loads(raw)
                row["id"] = str(n) if row["id"] is None else row["id"]
                failure = row.pop("failure", None)  # the mamabear failed on this text
                if "error" in row:  # the row's own error comes first, as in a single process
                    row["error"] = f"{unit} {n}: {row['error']}"
                    errors += 1
                elif failure is not None:
                    row["error"] = NodeError.describe(row["node"], str(row["id"]), failure)  # named as run names it
                    errors += 1
                per_node[str(row["node"])] = per_node.get(str(row["node"]), 0) + 1
                rows.append(row)
            yield rows

    if output.suffix == ".parquet":
        schema = _parquet_schema()
        with pq.ParquetWriter(output, schema) as writer:
            for rows in batches():
                writer.write_table(pa.Table.from_pylist([{**r, "id": str(r["id"])} for r in rows], schema=schema))  # ids: strings
    else:
        with open(output, "w", encoding="utf-8") as sink:
            for rows in batches():
                sink.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return {"rows": n, "errors": errors, "texts_per_node": per_node}


def _parquet_schema() -> pa.Schema:
    import pyarrow as pa

    entity = pa.struct([("start", pa.int64()), ("end", pa.int64()), ("label", pa.string())])
    return pa.schema([("id", pa.string()), ("text", pa.string()), ("entities", pa.list_(entity)), ("node", pa.string()), ("error", pa.string())])
