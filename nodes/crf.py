"""A linear-chain CRF babybear (python-crfsuite) trained on the mamabear's spans.

Speed comes from the features: each distinct word's features are computed once and cached, already prefixed
for every position in the context window, so a sentence's features are a few list concatenations per token.
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pycrfsuite
from pydantic import Field
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from babybear.errors import ArtifactError, BabybearError, NotFittedError
from babybear.node import Node
from babybear.node import Params as NodeParams
from babybear.progress import console
from babybear.types import Prediction

from ._clusters import CLUSTERS_FILE, WordClusters
from ._gazetteer import GAZETTEER_FILE, Gazetteer
from ._tokens import Token, bio_to_spans, spans_to_bio, tokenize

MODEL_FILE = "model.crfsuite"
META_FILE = "crf.json"
VOCAB_FILE = "vocab.json"
EVIDENCE_KEYS = (
    "seq_prob", "min_marginal", "mean_marginal", "min_entity_marginal", "n_tokens", "n_spans",
    "n_uncertain", "n_unseen", "n_unseen_capitalized", "n_capitalized_untagged",
)  # fmt: skip
# with a warm-up gazetteer (``gazetteer: true``), about the predicted spans' strings and the gazetteer's matches
GAZETTEER_EVIDENCE_KEYS = (
    "n_spans_seen", "frac_spans_seen", "n_spans_labelled_otherwise", "n_spans_mixed", "n_gazetteer_untagged",
)  # fmt: skip


_NUMBER_AND_UNIT = re.compile(r"(\d(?:[\d.,]*\d)?)([^\W\d_]+)")  # 479m, 21.5bn, 1980s, 3G


def crf_tokens(text: str, split_units: bool) -> list[Token]:
    """:func:`tokenize`'s tokens; with ``split_units`` a number glued to letters ("£479m", "1980s") is two tokens,
    as spaCy splits it: md labels "479" alone as MONEY in 2.2% of BBC sentences, which a CRF over the whole token
    could never match."""
    tokens = tokenize(text)
    if not split_units:
        return tokens
    out = []
    for t in tokens:
        m = _NUMBER_AND_UNIT.fullmatch(t.text) if t.text[0].isdigit() else None
        if m is None:
            out.append(t)
        else:
            cut = t.start + m.end(1)
            out += [Token(m.group(1), t.start, cut), Token(m.group(2), cut, t.end)]
    return out


def word_shape(word: str) -> str:
    """Capitalization shape with runs collapsed: ``"McDonald's"`` → ``"XxXx'x"``, ``"1,000"`` → ``"d,d"``."""
    out: list[str] = []
    for ch in word:
        c = "X" if ch.isupper() else "x" if ch.islower() else "d" if ch.isdigit() else ch
        if not out or out[-1] != c:
            out.append(c)
    return "".join(out)


class WordFeatures:
    """CRF features for token sequences, with a bounded per-word cache.

    A word's entry holds its own features and, for each offset ``k`` in the window, the subset that a token
    ``k`` positions away sees, already prefixed with ``k``. Thread-safe: a cache race only recomputes a word.
    """

    def __init__(self, window: int, max_words: int = 200_000, clusters: WordClusters | None = None) -> None:
        self.offsets = [k for k in range(-window, window + 1) if k]
        self.clusters = clusters
        self.max_words = max_words
        self._cache: dict[str, tuple[list[str], dict[int, list[str]]]] = {}
        # what a token sees at an offset that falls outside the sentence
        self._pad = {k: [f"{k}:pad"] for k in self.offsets}

    def _entry(self, word: str) -> tuple[list[str], dict[int, list[str]]]:
        low = word.lower()
        shape = word_shape(word)
        own = ["bias", "w=" + low, "p3=" + low[:3], "s3=" + low[-3:], "s2=" + low[-2:], "sh=" + shape]
        if word.istitle():
            own.append("title")
        if word.isupper():
            own.append("upper")
        if any(ch.isdigit() for ch in word):
            own.append("digit")
        seen = ["w=" + low, "sh=" + shape]
        if self.clusters is not None:
            ids = self.clusters.get(word)
            cl = [f"c{k}={c}" for k, c in zip(self.clusters.sizes, ids)] if ids is not None else ["c=none"]
            own += cl
            seen += cl
        entry = own, {k: [f"{k}:{f}" for f in seen] for k in self.offsets}
        if len(self._cache) >= self.max_words:
            self._cache.clear()
        self._cache[word] = entry
        return entry

    def __call__(self, words: Sequence[str]) -> list[list[str]]:
        """One feature list per word of a sentence."""
        cache = self._cache
        entries = [cache.get(w) or self._entry(w) for w in words]
        n = len(entries)
        out = []
        for i, (own, _) in enumerate(entries):
            feats = own.copy()
            for k in self.offsets:
                j = i + k
                feats += entries[j][1][k] if 0 <= j < n else self._pad[k]
            out.append(feats)
        if out:
            out[0].append("BOS")
            out[-1].append("EOS")
        return out


class InMemoryTagger(pycrfsuite.Tagger):
    """A crfsuite tagger on model bytes, which it keeps alive: crfsuite reads them in place, without a copy."""

    def __init__(self, model: bytes) -> None:
        super().__init__()
        self.model = model
        self.open_inmemory(model)  # raises ValueError on bytes that are not a crfsuite model


class _Trainer(pycrfsuite.Trainer):
    """A crfsuite trainer that reports each L-BFGS iteration's figures to ``on_step`` instead of printing."""

    on_step: Callable[[dict], None] = staticmethod(lambda info: None)

    def message(self, message: str) -> None:
        if self.logparser.feed(message) == "iteration":
            self.on_step(self.logparser.last_iteration)


@contextmanager
def _training_bar(max_iterations: int, n_sequences: int) -> Iterator[Callable[[dict], None]]:
    """A rich bar over L-BFGS iterations (with the loss), drawn only when stderr is a terminal."""
    if not console.is_terminal:
        yield lambda info: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(f"crf on {n_sequences} texts", total=max_iterations)

        def step(info: dict) -> None:
            bar.update(task, completed=info["num"], description=f"crf on {n_sequences} texts, loss {info.get('loss', 0):.1f}")

        yield step
        bar.update(task, total=bar.tasks[0].completed)  # L-BFGS may converge before max_iterations


class CRFTagger(Node):
    """A CRF over regex word tokens; BIO tags learned from the mamabear's character spans.

    Evidence (the same keys for every text; an empty text has no tokens, no spans and probabilities of 1):
    ``seq_prob`` (probability of the predicted tag sequence), ``min_marginal`` / ``mean_marginal`` (of each
    token's predicted tag), ``min_entity_marginal`` (over tokens inside entities; 1 if none), ``n_tokens``,
    ``n_spans``, ``n_uncertain`` (tokens whose predicted tag has a marginal below 0.99), ``n_unseen`` (words
    not in the training texts, case-insensitive), ``n_unseen_capitalized`` (of those, capitalised ones after the
    first token), ``n_capitalized_untagged`` (capitalised tokens after the first one tagged O). A model saved
    without its vocabulary (format 1) counts no word as unseen.

    What the mamabear knows, as features: ``vectors`` names static word vectors (a spaCy model, resolved like
    the spaCy mamabear's), whose rows are clustered at fit time at ``cluster_sizes`` granularities; each token
    and its neighbours get their cluster ids (the table is saved with the model, so loading needs no vectors).
    ``gazetteer`` keeps the strings the mamabear labelled in the training texts with their label counts: the
    longest match at each token is a feature, and the evidence gains :data:`GAZETTEER_EVIDENCE_KEYS` (see
    :meth:`_gazetteer_evidence`).
    """

    class Params(NodeParams):
        c1: float = Field(0.1, ge=0, description="L1 regularization")
        c2: float = Field(0.1, ge=0, description="L2 regularization")
        max_iterations: int = Field(100, ge=1, description="L-BFGS iterations")
        window: int = Field(1, ge=0, le=4, description="neighbours on each side whose features a token sees")
        keep_token_probs: bool = Field(False, description="return per-token label marginals as token_probs")
        vectors: str | None = Field(
            None, description="static word vectors to cluster for features: a spaCy model (package, folder or offline alias), or none"
        )
        cluster_sizes: list[int] = Field([64, 256, 1024], min_length=1, description="k-means granularities of the vector clusters")
        gazetteer: bool = Field(False, description="features and evidence from the strings the mamabear labelled in warm-up")
        gazetteer_folds: int = Field(5, ge=2, description="training texts see a gazetteer built without their own fold")
        split_units: bool = Field(True, description='a number glued to letters ("479m", "1980s") is two tokens')

    params: CRFTagger.Params

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.model_: bytes | None = None
        self.labels_: list[str] = []
        self.vocab_: frozenset[str] | None = None  # lower-cased training words
        self.clusters_: WordClusters | None = None
        self.gazetteer_: Gazetteer | None = None
        self._reset()

    def _reset(self) -> None:
        """Fresh feature cache and per-thread taggers, after the params or the model changed."""
        self.features = WordFeatures(self.params.window, clusters=self.clusters_)
        self._local = threading.local()

    @property
    def is_fitted(self) -> bool:
        return self.model_ is not None

    def warm_up(self) -> None:
        if self.is_fitted:
            self._tagger()

    def fit(self, texts: Sequence[str], reference: Sequence[Prediction]) -> CRFTagger:
        if len(texts) != len(reference):
            raise BabybearError(f"CRFTagger.fit got {len(texts)} texts but {len(reference)} reference predictions")
        trainer = _Trainer(algorithm="lbfgs", verbose=False)
        trainer.set_params(
            {
                "c1": self.params.c1,
                "c2": self.params.c2,
                "max_iterations": self.params.max_iterations,
                "feature.possible_transitions": True,
            }
        )
        p = self.params
        self.clusters_ = WordClusters.from_spacy(p.vectors, p.cluster_sizes) if p.vectors else None
        self.gazetteer_ = Gazetteer.build(texts, (r.spans for r in reference)) if p.gazetteer else None
        self._reset()
        # each training text sees a gazetteer built without its own fold (contiguous folds keep documents
        # together), or the CRF would learn that every gazetteer match is right, which it is only on its own texts
        folds = p.gazetteer_folds if p.gazetteer else 1
        bounds = [len(texts) * f // folds for f in range(folds + 1)]
        n_sequences = 0
        vocab: set[str] = set()
        for f in range(folds):
            lo, hi = bounds[f], bounds[f + 1]
            gazetteer = None
            if p.gazetteer:
                rest = [*range(lo), *range(hi, len(texts))]
                gazetteer = Gazetteer.build((texts[i] for i in rest), (reference[i].spans for i in rest))
            for text, ref in zip(texts[lo:hi], reference[lo:hi]):
                tokens = crf_tokens(text, self.params.split_units)
                if tokens:
                    trainer.append(self._featurize(tokens, gazetteer), spans_to_bio(tokens, ref.spans))
                    vocab.update(t.text.lower() for t in tokens)
                    n_sequences += 1
        if not n_sequences:
            raise BabybearError("CRFTagger.fit needs at least one text with a token in it")
        with tempfile.TemporaryDirectory() as tmp, _training_bar(self.params.max_iterations, n_sequences) as step:
            model_path = Path(tmp) / MODEL_FILE
            trainer.on_step = step
            trainer.train(str(model_path))
            self._load_model(model_path.read_bytes())
        self.vocab_ = frozenset(vocab)
        return self

    def predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
        tagger = self._tagger()
        return [self._predict(tagger, text) for text in texts]

    def _predict(self, tagger: InMemoryTagger, text: str) -> Prediction:
        tokens = crf_tokens(text, self.params.split_units)
        keep = self.params.keep_token_probs
        if not tokens:
            evidence = dict.fromkeys(EVIDENCE_KEYS, 0.0)
            evidence |= {"seq_prob": 1.0, "min_marginal": 1.0, "mean_marginal": 1.0, "min_entity_marginal": 1.0}
            if self.gazetteer_ is not None:
                evidence |= dict.fromkeys(GAZETTEER_EVIDENCE_KEYS, 0.0) | {"frac_spans_seen": 1.0}
            return Prediction((), evidence, [] if keep else None)
        words = [t.text for t in tokens]
        matches = self.gazetteer_.match(words) if self.gazetteer_ is not None else None
        tagger.set(self._featurize(tokens, self.gazetteer_, matches))
        tags = tagger.tag()
        marginals = [tagger.marginal(tag, i) for i, tag in enumerate(tags)]
        entity = [m for m, tag in zip(marginals, tags) if tag != "O"]
        spans = bio_to_spans(tokens, tags)
        vocab = self.vocab_
        unseen = [vocab is not None and t.text.lower() not in vocab for t in tokens]
        capitalized = [i > 0 and t.text[0].isupper() for i, t in enumerate(tokens)]
        evidence = {
            "seq_prob": tagger.probability(tags),
            "min_marginal": min(marginals),
            "mean_marginal": sum(marginals) / len(marginals),
            "min_entity_marginal": min(entity, default=1.0),
            "n_tokens": float(len(tokens)),
            "n_spans": float(len(spans)),
            "n_uncertain": float(sum(m < 0.99 for m in marginals)),
            "n_unseen": float(sum(unseen)),
            "n_unseen_capitalized": float(sum(u and c for u, c in zip(unseen, capitalized))),
            "n_capitalized_untagged": float(sum(c and tag == "O" for c, tag in zip(capitalized, tags))),
        }
        if self.gazetteer_ is not None:
            evidence |= self._gazetteer_evidence(tokens, tags, spans, text, matches)
        token_probs = None
        if keep:
            token_probs = [
                (t.start, t.end, {label: tagger.marginal(label, i) for label in self.labels_})
                for i, t in enumerate(tokens)
            ]
        return Prediction(tuple(spans), evidence, token_probs)

    def _gazetteer_evidence(
        self, tokens: Sequence[Token], tags: Sequence[str], spans: Sequence, text: str, matches: Sequence[tuple[int, int, str]] | None = None
    ) -> dict[str, float]:
        """How the predicted spans sit with what the mamabear labelled in warm-up: ``n_spans_seen`` (spans whose
        string it labelled with the same label), ``frac_spans_seen`` (of the spans; 1 without spans),
        ``n_spans_labelled_otherwise`` (spans whose string it mostly labelled with another label),
        ``n_spans_mixed`` (spans whose string it labelled in more than one way), and
        ``n_gazetteer_untagged`` (gazetteer matches whose every token the CRF tagged O)."""
        gz = self.gazetteer_
        assert gz is not None
        seen = other = mixed = 0
        first = {t.start: i for i, t in enumerate(tokens)}
        last = {t.end: i for i, t in enumerate(tokens)}
        for s in spans:  # spans start and end on tokens: their key is their words
            key = " ".join(t.text for t in tokens[first[s.start] : last[s.end] + 1])
            counts = gz.counts.get(key)
            if counts is None:
                continue
            seen += s.label in counts
            other += gz.best[key] != s.label
            mixed += len(counts) > 1
        if matches is None:
            matches = gz.match([t.text for t in tokens])
        untagged = sum(all(tags[k] == "O" for k in range(i, j)) for i, j, _ in matches)
        return {
            "n_spans_seen": float(seen),
            "frac_spans_seen": seen / len(spans) if spans else 1.0,
            "n_spans_labelled_otherwise": float(other),
            "n_spans_mixed": float(mixed),
            "n_gazetteer_untagged": float(untagged),
        }

    def _featurize(self, tokens: Sequence[Token], gazetteer: Gazetteer | None = None, matches: Sequence[tuple[int, int, str]] | None = None) -> list[list[str]]:
        words = [t.text for t in tokens]
        feats = self.features(words)
        if gazetteer is not None:
            for f, g in zip(feats, gazetteer.features(words, matches)):
                f += g
        return feats

    def _tagger(self) -> InMemoryTagger:
        """This thread's tagger (crfsuite taggers are not thread-safe)."""
        if self.model_ is None:
            raise NotFittedError("CRFTagger is not fitted: call fit() or from_disk() first")
        tagger = getattr(self._local, "tagger", None)
        if tagger is None:
            tagger = self._local.tagger = InMemoryTagger(self.model_)
        return tagger

    def _load_model(self, model: bytes) -> None:
        self.labels_ = sorted(InMemoryTagger(model).labels())
        self.model_ = model
        self._reset()

    # -- persistence -----------------------------------------------------------------------------------------
    def to_disk(self, path: Path) -> None:
        """Write ``model.crfsuite`` (crfsuite's own format), ``crf.json`` (params and labels), in format 2
        ``vocab.json`` (the sorted training words), and where the params ask for them ``clusters.json.gz`` (the
        word clusters) and ``gazetteer.json``."""
        if self.model_ is None:
            raise NotFittedError("CRFTagger is not fitted: nothing to save")
        path = Path(path)
        (path / MODEL_FILE).write_bytes(self.model_)
        # a model loaded from a format-1 folder has no vocabulary to save: it stays format 1
        meta = {"format": 1 if self.vocab_ is None else 2, "params": self.params.model_dump(), "labels": self.labels_}
        (path / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if self.vocab_ is not None:
            (path / VOCAB_FILE).write_text(json.dumps(sorted(self.vocab_), ensure_ascii=False), encoding="utf-8")
        if self.clusters_ is not None:
            self.clusters_.to_disk(path / CLUSTERS_FILE)
        if self.gazetteer_ is not None:
            self.gazetteer_.to_disk(path / GAZETTEER_FILE)

    def from_disk(self, path: Path) -> CRFTagger:
        """Load what :meth:`to_disk` wrote; the saved params replace these (they define the model's features)."""
        path = Path(path)
        try:
            meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
            # a model saved before split_units existed was trained on whole tokens
            self.params = self.Params(**{"split_units": False, **meta["params"]})
            # the features the model was trained on: the saved cluster table (no vectors needed) and gazetteer
            self.clusters_ = WordClusters.from_disk(path / CLUSTERS_FILE) if self.params.vectors else None
            self.gazetteer_ = Gazetteer.from_disk(path / GAZETTEER_FILE) if self.params.gazetteer else None
            self._load_model((path / MODEL_FILE).read_bytes())
            # format 2 saves the vocabulary: without it every word would count as seen, so it must be there
            vocab_file = path / VOCAB_FILE
            self.vocab_ = frozenset(json.loads(vocab_file.read_text(encoding="utf-8"))) if meta.get("format", 1) >= 2 else None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"cannot load the CRF from {path}: {type(e).__name__}: {e}") from e
        return self
