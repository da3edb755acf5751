"""Texts and units: a long text is cut into overlapping units and their spans stitched back, losing none.

One name per thing, across the engine:

* **text**: what a user passes (``circuit(texts)``, ``stream``, ``fit``): any length, answered whole.
* **unit**: what the circuit routes, gates score and nodes predict on: a whole text, or one of the overlapping
  cuts of a text longer than ``MAX_CHARS`` (:func:`units_of`). Warm-up, the held-out cache, the optimizer and the
  scheduler count units. (The design's "text unit".)
* **bounds**: where each unit lies in its text, ``(start, end, core_start, core_end)`` (:func:`split_text`);
  :func:`stitch_spans` maps the units' spans back through them.
* **chunk**: a batch of texts of a stream (``Circuit.stream(chunk=...)``, ``babybear run``), never part of a text.
* **part**: a share of the warm-up's units (training, calibration, tuning).
* **window**: a node's own cut of a unit to fit its model (token windows in ``nodes/_align.py``, the spaCy
  mamabear's character windows), invisible to the engine.
"""

from __future__ import annotations

from collections.abc import Sequence

from .types import Span

MAX_CHARS, OVERLAP = 2000, 200  # a longer text is routed as overlapping units of at most this size
_SPACES = (" ", "\n", "\t", "\r")


def split_text(text: str, max_chars: int = MAX_CHARS, overlap: int = OVERLAP) -> list[tuple[int, int, int, int]]:
    """The bounds of the overlapping cuts of ``text``: at most ``max_chars`` each, overlapping by about ``overlap``
    characters (for a circuit, its units).

    Returns ``(start, end, core_start, core_end)`` per cut. Cores tile the text exactly; a span is kept from the
    cut whose core holds its start, so an entity shorter than ``overlap // 2`` that crosses a cut is seen whole
    by that one. Cuts prefer whitespace.
    """
    n = len(text)
    if not text.strip():  # nothing to find: blank texts are answered without running a model
        return []
    if n <= max_chars:
        return [(0, n, 0, n)]
    if not 0 < 2 * overlap < max_chars:
        raise ValueError(f"need 0 < 2*overlap < max_chars, got overlap={overlap} max_chars={max_chars}")
    cuts: list[tuple[int, int]] = []
    start = 0
    while True:
        end = min(start + max_chars, n)
        if end < n:
            cut = max(text.rfind(c, start + max_chars - overlap // 2, end) for c in _SPACES)
            end = cut if cut > start else end
        cuts.append((start, end))
        if end >= n:
            break
        nxt = end - overlap  # the next cut starts at least ``overlap`` back, after whitespace where there is some
        space = max(text.rfind(c, nxt - overlap // 2, nxt) for c in _SPACES)
        start = space + 1 if space != -1 else nxt
    out = []
    for i, (s, e) in enumerate(cuts):
        core_s = 0 if i == 0 else (cuts[i - 1][1] + s) // 2
        core_e = n if i == len(cuts) - 1 else (e + cuts[i + 1][0]) // 2
        out.append((s, e, core_s, core_e))
    return out


def units_of(text: str) -> list[str]:
    """The units of ``text`` that a circuit routes (none for a blank text)."""
    return [text[s:e] for s, e, _, _ in split_text(text)]


def stitch_spans(bounds: Sequence[tuple[int, int, int, int]], spans: Sequence[Sequence[Span]]) -> tuple[Span, ...]:
    """Spans of every cut (offsets relative to the cut; ``bounds`` from :func:`split_text`) → spans on the whole
    text, each kept once."""
    out: list[Span] = []
    for (s, _e, core_s, core_e), cut_spans in zip(bounds, spans, strict=True):
        out += [Span(s + a.start, s + a.end, a.label) for a in cut_spans if core_s <= s + a.start < core_e]
    return tuple(sorted(set(out)))


def n_tokens(text: str) -> int:
    """A cheap token count (whitespace words), the unit node costs are measured in."""
    return len(text.split())
