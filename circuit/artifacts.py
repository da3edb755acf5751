"""A fitted circuit as a folder, and back: what a save writes, how it stays whole, and what a load refuses.

A saved circuit folder holds ``circuit.yaml``, ``nodes/<name>/`` (each node's own files: crfsuite models,
safetensors, JSON), ``gates/<source>--<target>.json``, ``report.json`` and ``heldout.json`` (see
:mod:`babybear.heldout`). It is untrusted input: loading reads YAML, JSON and each node's data files inside the
folder, never unpickles or imports anything named in it, and refuses links that lead outside it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from filelock import FileLock, Timeout

from .errors import ArtifactError, BabybearError
from .heldout import Heldout
from .schema import load_spec, name_problem

if TYPE_CHECKING:
    from .circuit import Circuit

C = TypeVar("C", bound="Circuit")

LOCK_FILE = ".babybear.lock"
LOCK_TIMEOUT_S = 60.0  # how long a save or load waits for another one on the same folder before giving up
PIECES = ("nodes", "gates", "heldout.json", "report.json", "circuit.yaml")  # what a save writes and replaces
_STAGING = ".saving"  # prefix of the folder a save writes its pieces into
_COMMIT = ".commit"  # a save's complete pieces, being moved into place
_MANIFEST = "pieces.json"  # in _COMMIT: the pieces it holds; the others are removed from the folder


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold a circuit folder's lock (the file ``.babybear.lock`` in it, via ``filelock``) while saving or reading
    it, after finishing any save a crash cut short. Raises :class:`BabybearError` naming the folder when another
    process holds the lock for more than ``LOCK_TIMEOUT_S`` seconds. A folder this process cannot write is read
    without it (nor could it hold a lock file)."""
    if not os.access(folder, os.W_OK):
        if (folder / _COMMIT).exists():
            raise ArtifactError(f"{folder}: a save was cut short ({_COMMIT} is there) and the folder is read-only here; load it once where it can be written")
        yield
        return
    lock = FileLock(folder / LOCK_FILE, timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise BabybearError(
            f"{folder}: another process has been saving or loading this circuit folder for over {LOCK_TIMEOUT_S:.0f} s "
            f"(it holds {folder / LOCK_FILE}); try again when it is done"
        ) from None
    try:
        _finish_commit(folder)
        yield
    finally:
        lock.release()


def _finish_commit(folder: Path) -> None:
    """Move a complete save's pieces from ``.commit`` into place (each step can be repeated after a crash), and
    remove what saves cut short before they were complete left behind. Runs under the folder's lock."""
    commit = folder / _COMMIT
    if commit.is_dir():
        try:
            pieces = json.loads((commit / _MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ArtifactError(f"{commit / _MANIFEST}: cannot read the pieces of a save that was cut short: {err}") from err
        replaced = commit / "replaced"
        replaced.mkdir(exist_ok=True)
        for piece in PIECES:
            new, old = commit / piece, folder / piece
            if piece in pieces and not new.exists():
                continue  # moved in before a crash
            if old.is_symlink() or old.exists():
                os.replace(old, replaced / piece)
            if piece in pieces:
                os.replace(new, old)
        shutil.rmtree(commit)
    for stale in folder.glob(f"{_STAGING}*"):
        shutil.rmtree(stale, ignore_errors=True)


def _refuse_links_out(folder: Path) -> None:
    """Raise :class:`ArtifactError` for a link anywhere in ``folder`` that leads outside it."""
    root = folder.resolve()
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            entry = Path(parent) / name
            if entry.is_symlink() and not entry.resolve().is_relative_to(root):
                raise ArtifactError(f"{entry}: a link to {entry.resolve()}, outside the circuit folder; a saved circuit holds only its own files")


def folder_files(folder: Path, skip: frozenset[str] = frozenset()) -> dict[str, bytes | None]:
    """A circuit folder's contents by relative path, read under its lock: each file's bytes, None for a folder
    (so empty ones travel too); entries named in ``skip`` and the lock file are left out, and a link out of the
    folder is refused. :func:`write_folder_files` writes them back."""
    skip = skip | {LOCK_FILE}
    with folder_lock(folder):
        _refuse_links_out(folder)
        return {f.relative_to(folder).as_posix(): f.read_bytes() if f.is_file() else None for f in sorted(folder.rglob("*")) if f.name not in skip}


def write_folder_files(files: Mapping[str, bytes | None], folder: Path) -> None:
    """Recreate :func:`folder_files`' contents inside ``folder``; a path that would land outside it is refused."""
    root = folder.resolve()
    for rel, data in files.items():
        target = (root / rel).resolve()
        if not target.is_relative_to(root):
            raise ArtifactError(f"{rel!r} points outside the circuit folder {folder}")
        if data is None:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)



def save(circuit: Circuit, path: str | Path) -> Path:
    """Write the fitted circuit to a folder: circuit.yaml, nodes/<name>/, gates/<source>--<target>.json, report.json
    (and heldout.json after a fit); other files in the folder (report plots, say) stay.

    Atomic and exclusive: under the folder's lock (see :func:`folder_lock`) the whole new circuit is written to
    a fresh folder inside it, renamed to ``.commit`` once complete, and its pieces then replace the old ones
    whole, so no file of an earlier save survives. A load (which takes the lock too) sees the old circuit or
    the new one, never a mix; a save cut short before ``.commit`` leaves the old circuit, one cut short after
    it is finished by the next load or save."""
    path = Path(path)
    for name in circuit.graph:
        problem = name_problem(name)
        if problem:
            raise BabybearError(f"cannot save node {name!r} into {path}: {problem}")
    path.mkdir(parents=True, exist_ok=True)
    with folder_lock(path):
        staging = path / f"{_STAGING}{uuid.uuid4().hex}"
        try:
            _write_pieces(circuit, staging)
            (staging / _MANIFEST).write_text(json.dumps([p for p in PIECES if (staging / p).exists()]), encoding="utf-8")
            staging.rename(path / _COMMIT)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _finish_commit(path)
    return path


def _write_pieces(circuit: Circuit, folder: Path) -> None:
    """Write every piece of the saved circuit into the new folder ``folder``."""
    (folder / "gates").mkdir(parents=True)
    for name in circuit.graph:
        (folder / "nodes" / name).mkdir(parents=True)
        circuit.node(name).to_disk(folder / "nodes" / name)
    for s, t in circuit.graph.edges:
        (folder / "gates" / f"{s}--{t}.json").write_text(json.dumps(circuit.edge(s, t).gate.to_dict()), encoding="utf-8")
    circuit.to_yaml(folder / "circuit.yaml")
    if circuit.heldout_ is not None:
        circuit.heldout_.save(folder / "heldout.json")
    costs = {n: circuit.node(n).cost_ for n in circuit.graph}
    (folder / "report.json").write_text(json.dumps({**circuit.report_, "costs_seconds_per_token": costs}, indent=2), encoding="utf-8")


def load(cls: type[C], path: str | Path) -> C:
    """Load a folder written by :func:`save` as a ``cls``, under its lock. Reads YAML, JSON, and each node's own files, all
    inside the folder (a link out of it is refused); runs no code from it."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: not a fitted circuit folder (no circuit.yaml)")
    with folder_lock(path):
        return _read(cls, path)


def _read(cls: type[C], path: Path) -> C:
    """The circuit in ``path`` (already locked): spec, nodes, gates, report, held-out cache."""
    if not (path / "circuit.yaml").is_file():
        raise ArtifactError(f"{path}: not a fitted circuit folder (no circuit.yaml)")
    _refuse_links_out(path)
    circuit = cls.from_spec(load_spec(path / "circuit.yaml"))
    for name in circuit.graph:
        folder = path / "nodes" / name
        if not folder.is_dir():
            raise ArtifactError(f"{folder}: missing node folder for '{name}'")
        try:
            circuit.node(name).from_disk(folder)
        except ArtifactError:
            raise
        except BabybearError as err:  # a param the folder's YAML set is wrong: say where it is
            raise ArtifactError(f"{path / 'circuit.yaml'}: nodes.{name}: {err}") from None
    for s, t in circuit.graph.edges:
        file = path / "gates" / f"{s}--{t}.json"
        try:
            circuit.edge(s, t).gate.load_dict(json.loads(file.read_text(encoding="utf-8")))
        except (OSError, ValueError) as err:
            raise ArtifactError(f"{file}: cannot read gate {s} -> {t}: {err}") from err
    report_file = path / "report.json"
    if report_file.is_file():
        try:
            circuit.report_ = json.loads(report_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ArtifactError(f"{report_file}: cannot read the fit report: {err}") from err
        if not isinstance(circuit.report_, dict):
            raise ArtifactError(f"{report_file}: the fit report is not a JSON object")
        for name, cost in circuit.report_.get("costs_seconds_per_token", {}).items():
            if name in circuit.graph:
                circuit.node(name).cost_ = cost
    if (path / "heldout.json").is_file():
        circuit.heldout_ = Heldout.load(path / "heldout.json", circuit)
    return circuit


