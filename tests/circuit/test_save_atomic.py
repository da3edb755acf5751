"""Saves are atomic and exclusive: a load during a save sees the old circuit or the new one, two saves or tunes on
one folder at once both succeed without interleaving, and a save killed part-way leaves a loadable circuit."""

from __future__ import annotations

import multiprocessing
import os
import traceback
from pathlib import Path

import pytest
from filelock import FileLock

from babybear import artifacts
from babybear.heldout import Heldout
from babybear import BabybearError, Circuit
from babybear.doors.cli import main
from tests.saved_folder import folder, saved  # noqa: F401 - fixtures

fork = multiprocessing.get_context("fork")  # the children keep the test node types registered here


def save_as(folder: Path, name: str, budget: float) -> None:
    """Re-tune and save under a new name, which circuit.yaml and report.json both record."""
    c = Circuit.load(folder).tune(budget)
    c.name, c.report_["saved_as"] = name, name
    c.save(folder)


def whole(folder: Path) -> str:
    """Load the folder and check that its files come from one save; returns that save's name."""
    c = Circuit.load(folder)
    assert c.name == c.report_.get("saved_as", c.name), f"circuit.yaml of save {c.name}, report.json of {c.report_.get('saved_as')}"
    assert c.heldout_ is not None and c.heldout_.run.n == len(c.heldout_.texts)
    return c.name


def worker(kind: str, folder: str, rounds: int, errors) -> None:
    try:
        for i in range(rounds):
            if kind == "reader":
                whole(Path(folder))
            elif kind == "cli":
                assert main(["tune", folder, "--budget", "0.9" if i % 2 else "0.99"]) == 0
            else:
                save_as(Path(folder), f"{kind}-{i}", 0.95 if i % 2 else 0.999)
    except BaseException:  # noqa: BLE001 - reported to the parent whatever it is
        errors.put(f"{kind}: {traceback.format_exc()}")


def test_two_tunes_and_a_reader_at_once_never_interleave_and_always_see_a_whole_circuit(folder):
    errors = fork.Queue()
    jobs = [fork.Process(target=worker, args=(kind, str(folder), rounds, errors)) for kind, rounds in (("api", 12), ("cli", 12), ("reader", 30))]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=300)
    found = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
    assert not found, "\n".join(found)
    assert [job.exitcode for job in jobs] == [0, 0, 0]
    whole(folder)
    assert sorted(p.name for p in folder.iterdir()) == [".babybear.lock", "circuit.yaml", "gates", "heldout.json", "nodes", "report.json"]


def test_a_held_lock_is_a_clear_error_naming_the_folder(folder, monkeypatch):
    monkeypatch.setattr(artifacts, "LOCK_TIMEOUT_S", 0.2)
    with FileLock(folder / ".babybear.lock"):
        for attempt in (lambda: Circuit.load(folder), lambda: save_as(folder, "late", 0.9)):
            with pytest.raises(BabybearError, match=f"^{folder}: another process has been saving or loading this circuit folder for over 0 s"):
                attempt()
    assert whole(folder) == "toy"


def killed_while(stage: str, folder: str) -> None:
    """Save as 'new', dying (as a kill would: no clean-up) while writing heldout.json or moving the pieces in."""
    if stage == "writing":
        def die(self, file):
            file.write_text('{"n_calibration": 3, "texts": ["a', encoding="utf-8")
            os._exit(9)

        Heldout.save = die
    else:
        real, moves = os.replace, []

        def die(*args):
            moves.append(args)
            if len(moves) == 5:  # nodes and gates are in; heldout.json, report.json and circuit.yaml are not
                os._exit(9)
            real(*args)

        os.replace = die
    save_as(Path(folder), "new", 0.9)


@pytest.mark.parametrize(("stage", "survivor"), [("writing", "toy"), ("moving", "new")])
def test_a_save_killed_part_way_leaves_a_whole_circuit(folder, stage, survivor):
    job = fork.Process(target=killed_while, args=(stage, str(folder)))
    job.start()
    job.join(timeout=120)
    assert job.exitcode == 9
    assert whole(folder) == survivor  # before the commit the old circuit, after it the new one, finished by this load
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == [".babybear.lock"]


def test_packed_folder_files_leave_out_the_lock_and_refuse_a_link_out(folder, tmp_path):
    from babybear.artifacts import folder_files, write_folder_files

    files = folder_files(folder)
    assert ".babybear.lock" not in files and "circuit.yaml" in files
    write_folder_files(files, tmp_path / "copy")
    assert whole(tmp_path / "copy") == "toy"
    (tmp_path / "secret").write_text("not the circuit's")
    (folder / "nodes" / "memo" / "extra").symlink_to(tmp_path / "secret")
    with pytest.raises(BabybearError, match="a link to .*secret, outside the circuit folder"):
        folder_files(folder)
