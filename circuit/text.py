"""Text units: long texts are cut into overlapping chunks and their spans stitched back, losing none."""

from __future__ import annotations

from collections.abc import Sequence

from .types import Span

MAX_CHARS, OVERLAP = 2000, 200  # long texts are routed as overlapping chunks of this size
_SPACES = (" ", "\n", "\t", "\r")


def split_text(text: str, max_chars: int = MAX_CHARS, overlap: int = OVERLAP) -> list[tuple[int, int, int, int]]:
    """Cut ``text`` into chunks of at most ``max_chars`` that overlap by about ``overlap`` characters.

    Returns ``(chunk_start, chunk_end, core_start, core_end)`` per chunk. Cores tile the text exactly; a span is
    kept from the chunk whose core holds its start, so an entity shorter than ``overlap // 2`` that crosses a
    cut is seen whole by that chunk. Cuts prefer whitespace.
    """
    n = len(text)
    if not text.strip():  # nothing to find: blank texts are answered without running a model
        return []
    if n <= max_chars:
        return [(0, n, 0, n)]
    if not 0 < 2 * overlap < max_chars:
        raise ValueError(f"need 0 < 2*overlap < max_chars, got overlap={overlap} max_chars={max_chars}")
    chunks: list[tuple[int, int]] = []
    start = 0
    while True:
        end = min(start + max_chars, n)
        if end < n:
            cut = max(text.rfind(c, start + max_chars - overlap // 2, end) for c in _SPACES)
            end = cut if cut > start else end
        chunks.append((start, end))
        if end >= n:
            break
        nxt = end - overlap  # the next chunk starts at least ``overlap`` back, after whitespace where there is some
        space = max(text.rfind(c, nxt - overlap // 2, nxt) for c in _SPACES)
        start = space + 1 if space != -1 else nxt
    out = []
    for i, (s, e) in enumerate(chunks):
        core_s = 0 if i == 0 else (chunks[i - 1][1] + s) // 2
        core_e = n if i == len(chunks) - 1 else (e + chunks[i + 1][0]) // 2
        out.append((s, e, core_s, core_e))
    return out


def pieces(text: str) -> list[str]:
    """The chunks of ``text`` that a circuit routes (none for a blank text)."""
    return [text[s:e] for s, e, _, _ in split_text(text)]


def stitch_spans(chunks: Sequence[tuple[int, int, int, int]], spans: Sequence[Sequence[Span]]) -> tuple[Span, ...]:
    """Spans of every chunk (offsets relative to the chunk) → spans on the whole text, each kept once."""
    out: list[Span] = []
    for (s, _e, core_s, core_e), chunk_spans in zip(chunks, spans, strict=True):
        out += [Span(s + a.start, s + a.end, a.label) for a in chunk_spans if core_s <= s + a.start < core_e]
    return tuple(sorted(set(out)))


def n_tokens(text: str) -> int:
    """A cheap token count (whitespace words), the unit node costs are measured in."""
    return len(text.split())
