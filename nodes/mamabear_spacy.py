"""A spaCy pipeline's named entity recognizer as the mamabear (``en_core_web_md`` by default).

Only the ``ner`` component and the components it listens to run. Texts longer than ``max_chars`` are cut at
whitespace into overlapping pieces; each piece keeps the entities that start in its middle part, so an entity
near a cut is taken from the piece that sees it whole.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from circuit.errors import BabybearError
from circuit.node import Node, Params
from circuit.types import Prediction, Span

from ._models import resolve

_OVERLAP_CHARS = 1_000  # context shared by neighbouring pieces of a long text (at most a quarter of a piece)
_SPACE = re.compile(r"\s")


def _last_space(text: str, lo: int, hi: int) -> int | None:
    """The index of the last whitespace character in ``text[lo:hi]``, or None."""
    last = None
    for match in _SPACE.finditer(text, lo, hi):
        last = match.start()
    return last


def pieces(text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """Character ranges of at most ``size`` covering ``text``, neighbours sharing about ``overlap`` characters.

    Cuts fall on whitespace where there is some in reach, else mid-word.
    """
    out: list[tuple[int, int]] = []
    start = 0
    while len(text) - start > size:
        cut = _last_space(text, start + size // 2, start + size)
        end = cut if cut is not None else start + size
        out.append((start, end))
        back = _last_space(text, max(start + 1, end - 2 * overlap), end - overlap)
        start = back + 1 if back is not None else end - overlap
    out.append((start, len(text)))
    return out


def _merge(ranges: list[tuple[int, int]], found: list[list[Span]]) -> list[Span]:
    """Spans of the whole text from the spans of each piece: a piece owns the entities that start between the
    middles of its overlaps with its neighbours; one that would overlap a kept entity is dropped."""
    kept: list[Span] = []
    for k, spans in enumerate(found):
        lo = (ranges[k - 1][1] + ranges[k][0]) // 2 if k else 0
        hi = (ranges[k][1] + ranges[k + 1][0]) // 2 if k + 1 < len(ranges) else ranges[k][1]
        for span in spans:
            if lo <= span.start < hi and (not kept or span.start >= kept[-1].end):
                kept.append(span)
    return kept


class SpacyNER(Node):
    """Entity spans from a spaCy pipeline's ``ner`` component. Evidence: ``n_spans``."""

    class Params(Params):
        model: str = Field("en_core_web_md", description="a spaCy package name, a folder, or an offline alias")
        batch_size: int = Field(256, ge=1, description="texts per nlp.pipe batch")
        labels: list[str] | None = Field(None, description="keep only these labels (default: all)")
        max_chars: int = Field(100_000, ge=100, description="longer texts are processed in overlapping pieces")

    role: ClassVar[Literal["babybear", "mamabear"]] = "mamabear"
    params: SpacyNER.Params

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._nlp: Any = None

    def warm_up(self) -> None:
        if self._nlp is not None:
            return
        import spacy

        nlp = spacy.load(resolve(self.params.model, "spacy"))
        if "ner" not in nlp.pipe_names:
            raise BabybearError(f"spaCy model '{self.params.model}' has no 'ner' component: {nlp.pipe_names}")
        needed = {"ner"} | {
            name for name, pipe in nlp.pipeline if "ner" in getattr(pipe, "listening_components", ())
        }
        nlp.select_pipes(enable=[name for name in nlp.pipe_names if name in needed])
        unknown = set(self.params.labels or ()) - set(nlp.get_pipe("ner").labels)
        if unknown:
            raise BabybearError(
                f"labels {sorted(unknown)} are not predicted by '{self.params.model}'; "
                f"known: {', '.join(nlp.get_pipe('ner').labels)}"
            )
        self._nlp = nlp

    @property
    def pipe_names(self) -> list[str]:
        """The components that run (after :meth:`warm_up`)."""
        return list(self._nlp.pipe_names) if self._nlp is not None else []

    def predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
        self.warm_up()
        size = min(self.params.max_chars, self._nlp.max_length)
        overlap = min(_OVERLAP_CHARS, size // 4)
        ranges = [pieces(text, size, overlap) for text in texts]
        docs = self._nlp.pipe(
            (text[s:e] for text, rs in zip(texts, ranges) for s, e in rs), batch_size=self.params.batch_size
        )
        labels = set(self.params.labels) if self.params.labels is not None else None
        out = []
        for rs in ranges:
            found = [[Span(s + e.start_char, s + e.end_char, e.label_) for e in next(docs).ents] for s, _ in rs]
            spans = [span for span in _merge(rs, found) if labels is None or span.label in labels]
            out.append(Prediction(spans=tuple(spans), evidence={"n_spans": float(len(spans))}))
        return out
