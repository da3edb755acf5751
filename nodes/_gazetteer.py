"""A warm-up gazetteer: the strings the mamabear labelled during warm-up, with their label counts.

Keys are a span's words (the CRF's tokens) joined by single spaces, so matching runs on token sequences:
:meth:`Gazetteer.match` finds the longest known string starting at each token, left to right. The CRF uses the
matches as features (the majority label, B/I) and the gate as evidence (does the CRF's answer hold a string
the mamabear labelled otherwise?). Saved as plain JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from babybear.errors import ArtifactError
from babybear.types import Span

from ._tokens import tokenize

GAZETTEER_FILE = "gazetteer.json"


class Gazetteer:
    """string → {label: count}, with the majority label of each string and a first-word index for matching."""

    def __init__(self, counts: dict[str, dict[str, int]], max_words: int = 8) -> None:
        self.max_words = max_words
        self.counts = {k: v for k, v in counts.items() if k and k.count(" ") < max_words}
        self.best = {k: max(sorted(v), key=v.__getitem__) for k, v in self.counts.items()}
        self._trie: dict = {}  # word -> {next word -> ..., "": the string that ends here} (words are never "")
        for k in self.counts:
            node = self._trie
            for w in k.split(" "):
                node = node.setdefault(w, {})
            node[""] = k

    @classmethod
    def build(cls, texts: Iterable[str], spans: Iterable[Sequence[Span]], max_words: int = 8) -> Gazetteer:
        counts: dict[str, dict[str, int]] = {}
        for text, ss in zip(texts, spans):
            for s in ss:
                key = cls.key(text[s.start : s.end])
                if key:
                    label_counts = counts.setdefault(key, {})
                    label_counts[s.label] = label_counts.get(s.label, 0) + 1
        return cls(counts, max_words)

    @staticmethod
    def key(text: str) -> str:
        return " ".join(t.text for t in tokenize(text))

    def __len__(self) -> int:
        return len(self.counts)

    def match(self, words: Sequence[str]) -> list[tuple[int, int, str]]:
        """Non-overlapping longest matches ``(first word, end word, string)``, left to right."""
        out = []
        trie = self._trie
        n = len(words)
        i = 0
        while i < n:
            node = trie.get(words[i])
            found = None
            j = i
            while node is not None:  # walk the trie as far as the words go, remembering the last string's end
                j += 1
                if "" in node:
                    found = (i, j, node[""])
                node = node.get(words[j]) if j < n else None
            if found:
                out.append(found)
                i = found[1]
            else:
                i += 1
        return out

    def features(
        self,
        words: Sequence[str],
        matches: Sequence[tuple[int, int, str]] | None = None,
    ) -> list[list[str]]:
        """Per word: ``gz=B-LABEL`` / ``gz=I-LABEL`` for the majority label of the longest match covering it, and
        ``gzmix`` where that string was labelled in more than one way (``matches``: :meth:`match`'s, if known)."""
        out: list[list[str]] = [[] for _ in words]
        for i, j, key in self.match(words) if matches is None else matches:
            label = self.best[key]
            mixed = len(self.counts[key]) > 1
            for k in range(i, j):
                out[k].append(("gz=B-" if k == i else "gz=I-") + label)
                if mixed:
                    out[k].append("gzmix")
        return out

    # -- persistence ---------------------------------------------------------------------------------------------
    def to_disk(self, path: Path) -> None:
        doc = {"format": 1, "max_words": self.max_words, "counts": self.counts}
        Path(path).write_text(
            json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":")),
            encoding="utf-8",
        )

    @classmethod
    def from_disk(cls, path: Path) -> Gazetteer:
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
            counts = {str(k): {str(label): int(c) for label, c in v.items()} for k, v in doc["counts"].items()}
            return cls(counts, int(doc["max_words"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ArtifactError(f"cannot load the gazetteer from {path}: {type(e).__name__}: {e}") from e
