"""A fast regex word tokenizer with character offsets, and BIO tags ↔ character spans.

Tokens are words (letters/digits, with their combining marks), numbers with thousands and decimal separators
(``1,000.50``), and every other visible character on its own (punctuation, symbols, emoji). Whitespace and
control characters separate tokens and are never part of one, so ``text[t.start:t.end] == t.text`` always.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import NamedTuple

from babybear.records import clean_text
from babybear.types import Span


def _mark_ranges() -> str:
    """A regex character-class body of the combining marks (Unicode category M) in planes 0-1 and the
    variation-selector supplement, so that "e\u0301" or a Devanagari vowel sign stays inside its word."""
    codes = [c for c in (*range(0x20000), *range(0xE0100, 0xE01F0)) if unicodedata.category(chr(c))[0] == "M"]
    ranges: list[list[int]] = []
    for c in codes:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


MARKS = _mark_ranges()
_CONTROL = "\x00-\x1f\x7f-\x9f"
TOKEN_RE = re.compile(
    rf"\d+(?:[.,]\d+)+[\w{MARKS}]*"  # numbers with separators and a unit: 1,000.50, 1.13bn
    rf"|\w[\w{MARKS}]*"  # words and plain numbers
    rf"|[^\s{_CONTROL}][{MARKS}]*",  # any other visible character (with its marks, e.g. an emoji's selector)
)


class Token(NamedTuple):
    """One token: ``text`` is exactly ``original[start:end]``."""

    text: str
    start: int
    end: int


_new_tuple = tuple.__new__  # builds a Token without NamedTuple's Python-level __new__


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens with character offsets on ``text`` itself; a lone surrogate (which crfsuite and
    the hasher cannot encode) reads as U+FFFD, one for one."""
    text = clean_text(text)
    # findall + str.find is about twice as fast as finditer's match objects. Only whitespace and control
    # characters lie between tokens, so the next occurrence of a token's text is the token itself.
    tokens = []
    end = 0
    find = text.find
    for word in TOKEN_RE.findall(text):
        start = find(word, end)
        end = start + len(word)
        tokens.append(_new_tuple(Token, (word, start, end)))
    return tokens


def spans_to_bio(tokens: Sequence[Token], spans: Sequence[Span]) -> list[str]:
    """BIO tags, one per token: a token that overlaps a span takes ``B-label`` (the span's first such token) or
    ``I-label``. Where spans overlap each other, the earlier one wins."""
    tags = ["O"] * len(tokens)
    ordered = sorted(spans)
    j = 0  # first span that may still overlap the current token
    inside: Span | None = None  # the span the previous token belonged to
    for i, tok in enumerate(tokens):
        while j < len(ordered) and ordered[j].end <= tok.start:
            j += 1
        if j < len(ordered) and ordered[j].start < tok.end:
            span = ordered[j]
            tags[i] = ("I-" if span is inside else "B-") + span.label
            inside = span
        else:
            inside = None
    return tags


def bio_to_spans(tokens: Sequence[Token], tags: Sequence[str]) -> list[Span]:
    """Character spans from BIO tags. An ``I-`` tag that does not continue a span of its label starts one."""
    spans: list[Span] = []
    cur: list | None = None  # [start, end, label] of the open span
    for tok, tag in zip(tokens, tags):
        prefix, _, label = tag.partition("-")
        if prefix == "I" and cur is not None and cur[2] == label:
            cur[1] = tok.end
            continue
        if cur is not None:
            spans.append(Span(*cur))
        cur = [tok.start, tok.end, label] if label and prefix in ("B", "I") else None
    if cur is not None:
        spans.append(Span(*cur))
    return spans
