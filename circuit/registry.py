"""Versioned type names (``babybear.CRFTagger.v1``) for nodes and gates.

Built-in types and third-party ones are found the same way: through the entry-point groups
``babybear.nodes`` and ``babybear.gates`` (see pyproject.toml). A renamed type keeps its old name in the group
``<group>.renamed`` (old name = new name), so that YAMLs and saved circuits written under the old name still load;
a circuit is written under the new one. Code can also register a class at run time
with :func:`register_node` / :func:`register_gate`. Entry points are loaded lazily, so naming a type does not
import torch until that type is used.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from .errors import BabybearError
from .node import Gate, Node

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → class, backed by an entry-point group plus run-time registrations."""

    def __init__(self, group: str) -> None:
        self.group = group
        self._classes: dict[str, type[T]] = {}

    def _entry_points(self) -> dict:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def renamed(self) -> dict[str, str]:
        """Old name -> the name it has now, for types renamed since (entry-point group ``<group>.renamed``)."""
        return {ep.name: ep.value for ep in entry_points(group=f"{self.group}.renamed")}

    def names(self) -> list[str]:
        """The current names (old names of renamed types still load, but are not listed)."""
        return sorted(set(self._classes) | set(self._entry_points()))

    def __contains__(self, name: str) -> bool:
        name = self.renamed().get(name, name)
        return name in self._classes or name in self._entry_points()

    def get(self, name: str) -> type[T]:
        name = self.renamed().get(name, name)
        if name in self._classes:
            return self._classes[name]
        eps = self._entry_points()
        if name not in eps:
            raise BabybearError(f"unknown type '{name}' in {self.group}; known: {', '.join(self.names())}")
        cls = eps[name].load()
        self._classes[name] = cls
        return cls

    def name_of(self, cls: type) -> str:
        """The registered name of ``cls``, found without importing any other plug-in."""
        for name, known in self._classes.items():
            if known is cls:
                return name
        target = f"{cls.__module__}:{cls.__qualname__}"
        for name, ep in self._entry_points().items():
            if ep.value == target:
                return name
        raise BabybearError(f"{cls.__qualname__} is not registered in {self.group}; register it first")

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            self._classes[name] = cls
            return cls

        return deco


nodes: Registry[Node] = Registry("babybear.nodes")
gates: Registry[Gate] = Registry("babybear.gates")
register_node = nodes.register
register_gate = gates.register
