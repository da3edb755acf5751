"""Word clusters from static word vectors, for CRF features (like Brown clusters in classic CRF NER).

The vectors' distinct rows are clustered once, with scikit-learn's MiniBatchKMeans on unit-length rows, at a few
granularities; every key of the table then gets the cluster ids of its row. spaCy's md vectors have 20,000
distinct rows for 685k keys (the keys of a pruned row point at its nearest kept row), so the clustering is on
20,000 points and takes seconds.

The table is saved as gzipped JSON (words grouped by their cluster ids), so a loaded circuit needs neither the
vectors nor spaCy, and loading runs no code from the folder.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from babybear.errors import ArtifactError, BabybearError

CLUSTERS_FILE = "clusters.json.gz"
MAX_TABLE_BYTES = 256 * 2**20  # md's table unpacks to 2.7 MB


def spacy_vectors(name: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(words, row of each word, the distinct rows) of a spaCy pipeline's static vectors.

    ``name`` is resolved like the spaCy mamabear's model (a package, a folder or an offline alias); only the
    vocabulary is loaded, no pipeline component."""
    import spacy

    from .models import resolve

    nlp = spacy.load(
        resolve(name, "spacy"),
        exclude=[
            "tok2vec",
            "tagger",
            "morphologizer",
            "parser",
            "attribute_ruler",
            "lemmatizer",
            "ner",
            "senter",
        ],
    )
    if nlp.vocab.vectors.shape[0] == 0:
        raise BabybearError(f"the spaCy model '{name}' has no static word vectors")
    return vocab_vectors(nlp.vocab)


def vocab_vectors(vocab: object) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(words, row of each word, the distinct rows) of a spaCy ``Vocab``'s static vectors."""
    vectors = vocab.vectors  # type: ignore[attr-defined]
    strings = vocab.strings  # type: ignore[attr-defined]
    words, rows = [], []
    for key, row in vectors.key2row.items():
        if key in strings:
            words.append(strings[key])
            rows.append(row)
    return (
        words,
        np.asarray(rows, dtype=np.int64),
        np.asarray(vectors.data, dtype=np.float32),
    )


def cluster_rows(data: np.ndarray, sizes: Sequence[int], seed: int = 0) -> np.ndarray:
    """Cluster ids (rows × granularities) of each row, by MiniBatchKMeans on the unit-length rows."""
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    x = data / np.maximum(np.linalg.norm(data, axis=1, keepdims=True), 1e-12)
    out = np.zeros((len(x), len(sizes)), dtype=np.int64)
    # one BLAS thread: on a busy machine many threads made it 20 times slower (md: 28 s for 64/256/1024 on one)
    with threadpool_limits(1):
        for j, k in enumerate(sizes):
            km = MiniBatchKMeans(
                n_clusters=min(int(k), len(x)),
                random_state=seed,
                batch_size=2048,
                n_init=1,
                max_iter=20,
            )
            out[:, j] = km.fit_predict(x)
    return out


def prune(table: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The entries :meth:`WordClusters.get` can need: words that are one token (md's "logo/mascot" or
    "1-800-398-3128" never are), less a cased word whose lower-case form has the same ids (``get`` falls back
    to it). On md's vectors 685k keys become 290k, and the saved table 1.2 MB instead of 2.9."""
    from ._tokens import tokenize

    out = {}
    for word, ids in table.items():
        tokens = tokenize(word)
        if len(tokens) != 1 or tokens[0].text != word:
            continue
        low = word.lower()
        if low != word and table.get(low) == ids:
            continue
        out[word] = ids
    return out


class WordClusters:
    """word → cluster ids at each granularity; lookup tries the word, then its lower-case, then title-case form."""

    def __init__(self, sizes: Sequence[int], table: dict[str, tuple[int, ...]]) -> None:
        self.sizes = list(sizes)
        self.table = table

    @classmethod
    def from_vectors(
        cls,
        words: Sequence[str],
        rows: np.ndarray,
        data: np.ndarray,
        sizes: Sequence[int],
        seed: int = 0,
        max_len: int = 30,
    ) -> WordClusters:
        ids = cluster_rows(data, sizes, seed)
        table = {w: tuple(int(c) for c in ids[r]) for w, r in zip(words, rows) if w and len(w) <= max_len}
        return cls(sizes, prune(table))

    @classmethod
    def from_spacy(cls, name: str, sizes: Sequence[int], seed: int = 0) -> WordClusters:
        words, rows, data = spacy_vectors(name)
        return cls.from_vectors(words, rows, data, sizes, seed)

    def get(self, word: str) -> tuple[int, ...] | None:
        table = self.table
        return table.get(word) or table.get(word.lower()) or table.get(word.title())

    # -- persistence: gzipped JSON, words grouped by their cluster ids -------------------------------------------
    def to_disk(self, path: Path) -> None:
        groups: dict[str, list[str]] = {}
        for word, ids in self.table.items():
            groups.setdefault(" ".join(map(str, ids)), []).append(word)
        doc = {
            "format": 1,
            "sizes": self.sizes,
            "groups": {k: "\n".join(v) for k, v in groups.items()},
        }
        Path(path).write_bytes(
            gzip.compress(
                json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
                mtime=0,
            )
        )

    @classmethod
    def from_disk(cls, path: Path) -> WordClusters:
        try:
            with gzip.open(path, "rb") as f:
                raw = f.read(MAX_TABLE_BYTES + 1)  # a loaded folder is untrusted: no unbounded gzip bomb
            if len(raw) > MAX_TABLE_BYTES:
                raise ValueError(f"the table unpacks to over {MAX_TABLE_BYTES} bytes")
            doc = json.loads(raw.decode("utf-8"))
            sizes = [int(s) for s in doc["sizes"]]
            table: dict[str, tuple[int, ...]] = {}
            for key, words in doc["groups"].items():
                ids = tuple(int(c) for c in key.split(" "))
                if len(ids) != len(sizes):
                    raise ValueError(f"cluster ids '{key}' do not match the {len(sizes)} granularities")
                for w in words.split("\n"):
                    table[w] = ids
        except (
            OSError,
            EOFError,
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            gzip.BadGzipFile,
        ) as e:
            raise ArtifactError(f"cannot load word clusters from {path}: {type(e).__name__}: {e}") from e
        return cls(sizes, table)
