"""Fixtures for tests of saved circuit folders: a small fitted circuit saved once per module, and a fresh copy
of it per test. Import both names into a test module to use them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from babybear import Circuit
from tests.conftest import CapsMamabear, Memorizer, synthetic_texts


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    circuit = Circuit("toy", {"min_entity_f1": 0.95}).add("memo", Memorizer()).add("mama", CapsMamabear()).connect("memo", "mama")
    return circuit.fit(synthetic_texts(400), progress=False).save(tmp_path_factory.mktemp("saved") / "fitted")


@pytest.fixture
def folder(saved, tmp_path) -> Path:
    """A fresh copy of the saved circuit, deep enough that a node name '../../../x' (from nodes/ or gates/)
    lands in tmp_path/a/x."""
    return Path(shutil.copytree(saved, tmp_path / "a" / "b" / "fitted"))
