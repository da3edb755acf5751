"""The values that flow through a circuit: spans and predictions on the original text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class Span(NamedTuple):
    """An entity as character offsets on the original text: ``text[start:end]`` has label ``label``."""

    start: int
    end: int
    label: str


@dataclass
class Prediction:
    """One node's answer for one text.

    ``spans`` are sorted by ``(start, end, label)``. ``evidence`` holds the numbers a gate reads to judge the
    answer (for example ``seq_prob`` and ``min_marginal`` from a CRF); every node of a type emits the same keys.
    ``token_probs`` is optional soft-label material for distillation: a list of ``(start, end, {label: p})``
    per model token, BIO labels included.
    """

    spans: tuple[Span, ...] = ()
    evidence: dict[str, float] = field(default_factory=dict)
    token_probs: list[tuple[int, int, dict[str, float]]] | None = None

    def __post_init__(self) -> None:
        self.spans = tuple(sorted(Span(*s) for s in self.spans))

    def restricted(self, labels: frozenset[str] | None) -> tuple[Span, ...]:
        """The spans whose label is in ``labels`` (all of them when ``labels`` is None)."""
        if labels is None:
            return self.spans
        return tuple(s for s in self.spans if s.label in labels)


@dataclass
class Answer:
    """The circuit's final answer for one input text: the entities and the node that produced them.

    ``confidence`` is the answering node's exit-gate score, P(this answer equals the mamabear's); None for the
    mamabear itself (the reference) and for blank texts. For a text cut into chunks, the lowest over the chunks
    the answering node answered. ``error`` is set when the mamabear failed on the text (``node`` names it);
    the answer is then empty. (A text a babybear fails on goes on to the next nodes.)
    """

    text: str
    spans: tuple[Span, ...]
    node: str | None  # None: a blank text, answered without running a model
    id: str | None = None
    confidence: float | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        out = {
            "id": self.id,
            "text": self.text,
            "entities": [{"start": s.start, "end": s.end, "label": s.label} for s in self.spans],
            "node": self.node,
        }
        if self.error is not None:
            out["error"] = self.error
        return out
