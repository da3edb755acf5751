"""The ready circuits that ship with babybear (the project's circuits/ folder, installed as ``babybear.circuits``),
found by name: ``babybear fit news`` and ``Circuit.from_yaml("news")`` read circuits/news.yaml."""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path


def names() -> list[str]:
    """The ready circuits' names."""
    return sorted(p.name.removesuffix(".yaml") for p in files("babybear.circuits").iterdir() if p.name.endswith(".yaml"))


def find(name: str) -> Path | None:
    """The file of the ready circuit ``name`` (with or without ``.yaml``), or None if there is none."""
    stem = name.removesuffix(".yaml")
    if stem not in names():
        return None
    with as_file(files("babybear.circuits") / f"{stem}.yaml") as path:  # a real file for an installed package
        return Path(path)
