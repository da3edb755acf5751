"""The error tree. Every message says what is wrong, where, and what would be valid."""

from __future__ import annotations

from dataclasses import dataclass


class BabybearError(Exception):
    """Base of every error babybear raises on purpose. The CLI prints these as one line, never a traceback."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a circuit description: where (a dotted path, optionally a line) and what."""

    location: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.location} (line {self.line})" if self.line else self.location
        return f"{where}: {self.message}"


class CircuitValidationError(BabybearError):
    """A circuit description has one or more problems; all of them are listed at once."""

    def __init__(self, problems: list[Problem], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        n = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{head}{n} problem{'s' if n != 1 else ''} in the circuit:\n{lines}")


class NotFittedError(BabybearError):
    """A circuit, node or gate was used before it was fitted."""


class ArtifactError(BabybearError):
    """A saved circuit folder is missing a file or holds one that cannot be read."""


class NodeError(BabybearError):
    """A node failed on a text; names the node and the text's id."""

    def __init__(self, node: str, text_id: str | None, cause: BaseException) -> None:
        self.node, self.text_id, self.cause = node, text_id, cause
        super().__init__(self.describe(node, text_id, self.cause_text))

    @property
    def cause_text(self) -> str:
        return f"{type(self.cause).__name__}: {self.cause}"

    @staticmethod
    def describe(node: str, text_id: str | None, cause_text: str) -> str:
        """The message, also for a failure that crossed a process boundary as plain data."""
        return f"node '{node}' failed on text {text_id!r}: {cause_text}"
