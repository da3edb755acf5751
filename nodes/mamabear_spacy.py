"""A spaCy pipeline's named entity recognizer as the mamabear (``en_core_web_md`` by default).

Only the ``ner`` component and the components it listens to run. Texts longer than ``max_chars`` are cut into
overlapping windows and stitched back with the engine's own :func:`babybear.text.split_text` /
:func:`babybear.text.stitch_spans`, so an entity near a cut is taken from the window that sees it whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from babybear.errors import BabybearError
from babybear.node import Node
from babybear.node import Params as NodeParams
from babybear.records import clean_text
from babybear.text import split_text, stitch_spans
from babybear.types import Prediction, Span

from .models import resolve, spacy_pipeline

_OVERLAP_CHARS = 1_000  # context shared by neighbouring windows of a long text (at most a quarter of a window)


class SpacyNER(Node):
    """Entity spans from a spaCy pipeline's ``ner`` component. Evidence: ``n_spans``."""

    class Params(NodeParams):
        model: str = Field("en_core_web_md", description="an offline alias, an installed spaCy pipeline package, or a pipeline folder")
        batch_size: int = Field(256, ge=1, description="texts per nlp.pipe batch")
        labels: list[str] | None = Field(None, description="keep only these labels (default: all)")
        max_chars: int = Field(100_000, ge=100, description="longer texts are processed in overlapping windows")

    role: ClassVar[Literal["babybear", "mamabear"]] = "mamabear"
    params: SpacyNER.Params

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._nlp: Any = None

    def warm_up(self) -> None:
        if self._nlp is not None:
            return
        import spacy

        try:
            folder = resolve(self.params.model, "spacy")
        except BabybearError as err:
            raise BabybearError(f"params.model: {err}") from None
        try:  # a folder, never a name: spaCy imports a module it is given by name
            nlp = spacy.load(folder)
        except (OSError, ValueError, KeyError, TypeError) as err:  # confection's and catalogue's errors are ValueErrors
            raise BabybearError(f"params.model: spaCy cannot load the pipeline '{self.params.model}' from {folder}: {type(err).__name__}: {err}") from err
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

    def from_disk(self, path: Path) -> SpacyNER:
        """Nothing is learned; checks that ``model`` names a spaCy pipeline, so that a loaded folder naming some
        other module or folder is refused at load (one not installed here is left to :meth:`warm_up`)."""
        try:
            spacy_pipeline(self.params.model)
        except BabybearError as err:
            raise BabybearError(f"params.model: {err}") from None
        return self

    @property
    def pipe_names(self) -> list[str]:
        """The components that run (after :meth:`warm_up`)."""
        return list(self._nlp.pipe_names) if self._nlp is not None else []

    def predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
        self.warm_up()
        size = min(self.params.max_chars, self._nlp.max_length)
        overlap = min(_OVERLAP_CHARS, size // 4)
        windows = [split_text(text, size, overlap) for text in texts]
        docs = self._nlp.pipe(  # a lone surrogate, which spaCy cannot hash, becomes U+FFFD (offsets keep)
            (clean_text(text[s:e]) for text, ws in zip(texts, windows) for s, e, _, _ in ws),
            batch_size=self.params.batch_size,
        )
        labels = set(self.params.labels) if self.params.labels is not None else None
        out = []
        for ws in windows:
            found = [[Span(e.start_char, e.end_char, e.label_) for e in next(docs).ents] for _ in ws]
            spans = [span for span in stitch_spans(ws, found) if labels is None or span.label in labels]
            out.append(Prediction(spans=tuple(spans), evidence={"n_spans": float(len(spans))}))
        return out
