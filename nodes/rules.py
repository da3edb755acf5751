"""Rule babybears: user-written keyword/regex rules (:class:`KeywordTagger`), and a learned "the mamabear finds
nothing here" tagger (:class:`LearnedKeywordTagger`). Both are nodes; the gates are on the edges after them.

Both report the same cheap surface cues as evidence (token, capitalization and digit counts), from which a
gate can learn when a sentence has no entity worth sending on.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy.sparse import csr_matrix
from sklearn.feature_extraction import FeatureHasher
from sklearn.linear_model import LogisticRegression

from babybear.errors import ArtifactError, BabybearError, NotFittedError
from babybear.node import Node
from babybear.node import Params as NodeParams
from babybear.types import Prediction, Span

from ._tokens import MARKS, Token, tokenize

GATE_FILE = "learned_gate.json"  # the name from when LearnedKeywordTagger was LearnedKeywordGate; saved folders keep it
_SENTENCE_END = frozenset(".!?")
_WORD_CHAR = rf"[\w{MARKS}]"  # a letter, digit or combining mark: what a whole keyword must not touch
# scripts written without spaces between words (Han, kana, Thai, Lao, Myanmar, Khmer): no boundary there
_UNSPACED = re.compile(
    "[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]"
)


def keyword_regexes(words: Sequence[str], flags: int = 0) -> list[re.Pattern[str]]:
    """Regexes matching ``words`` as whole words, longest first at one position, in NFC and NFD forms.

    A keyword may not touch a letter, digit or combining mark, except on a side where it ends in a script
    written without spaces (``東京`` is found in ``東京に行く``).
    """
    groups: dict[tuple[bool, bool], set[str]] = {}
    for word in words:
        for form in {unicodedata.normalize("NFC", word), unicodedata.normalize("NFD", word)} - {""}:
            sides = (not _UNSPACED.match(form[0]), not _UNSPACED.match(form[-1]))
            groups.setdefault(sides, set()).add(form)
    out = []
    for (before, after), forms in sorted(groups.items()):
        alternatives = "|".join(re.escape(w) for w in sorted(forms, key=lambda w: (-len(w), w)))
        lookbehind, lookahead = f"(?<!{_WORD_CHAR})" * before, f"(?!{_WORD_CHAR})" * after
        out.append(re.compile(f"{lookbehind}(?:{alternatives}){lookahead}", flags))
    return out


def surface_cues(tokens: Sequence[Token]) -> dict[str, float]:
    """Counts a gate can read: tokens, capitalized tokens not at a sentence start, tokens with a digit, and
    all-caps tokens of two or more characters."""
    inner_caps = digits = allcaps = 0
    sentence_start = True
    for tok in tokens:
        word = tok.text
        if word[0].isupper() and not sentence_start:
            inner_caps += 1
        if any(ch.isdigit() for ch in word):
            digits += 1
        if len(word) > 1 and word.isupper():
            allcaps += 1
        # a sentence starts after . ! ? and stays at its start across opening quotes and brackets
        sentence_start = word in _SENTENCE_END or (sentence_start and not word[0].isalnum())
    return {
        "n_tokens": float(len(tokens)),
        "n_capitalized_inner": float(inner_caps),
        "n_digit_tokens": float(digits),
        "n_allcaps": float(allcaps),
    }


class Pattern(BaseModel):
    """One regex rule: every match of ``regex`` is an entity of type ``label``."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1)
    regex: str = Field(min_length=1)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"invalid regular expression {value!r}: {e}") from e
        return value


class KeywordTagger(Node):
    """User-written rules: regex ``patterns`` and per-label ``keywords`` (whole words, see :func:`keyword_regexes`).

    Answers the matched spans, non-overlapping, leftmost-longest over all rules; with no rules it answers no
    entities. Evidence: ``n_matches`` plus the :func:`surface_cues` counts.
    """

    class Params(NodeParams):
        patterns: list[Pattern] = Field(default_factory=list, description="regex rules, each {label, regex}")
        keywords: dict[str, list[str]] = Field(default_factory=dict, description="label -> words or phrases")
        case_sensitive: bool = Field(False, description="match keywords with their exact case")

    params: KeywordTagger.Params

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        flags = 0 if self.params.case_sensitive else re.IGNORECASE
        self._rules: list[tuple[re.Pattern[str], str]] = [(re.compile(p.regex), p.label) for p in self.params.patterns]
        for label, words in self.params.keywords.items():
            self._rules += [(rx, label) for rx in keyword_regexes(words, flags)]

    def matches(self, text: str) -> list[Span]:
        """Non-overlapping rule matches in ``text``: leftmost first, then longest; empty matches are ignored."""
        found = sorted(
            (m.start(), -m.end(), label) for rx, label in self._rules for m in rx.finditer(text) if m.end() > m.start()
        )
        spans: list[Span] = []
        for start, neg_end, label in found:
            if not spans or start >= spans[-1].end:
                spans.append(Span(start, -neg_end, label))
        return spans

    def predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
        out = []
        for text in texts:
            spans = self.matches(text)
            evidence = {"n_matches": float(len(spans))} | surface_cues(tokenize(text))
            out.append(Prediction(tuple(spans), evidence))
        return out


def _hashed_cues(tokens: Sequence[Token]) -> list[str]:
    """The distinct surface cues of a text, as strings for feature hashing."""
    cues = {f"len={min(len(tokens).bit_length(), 10)}"}
    for i, tok in enumerate(tokens):
        word = tok.text
        cues.add("w=" + word.lower())
        shape = "cap" if word[0].isupper() else "low" if word[0].islower() else "other"
        cues.add(f"shape={shape}" if i else f"first={shape}")
        if any(ch.isdigit() for ch in word):
            cues.add("digit")
    return sorted(cues)


class LearnedKeywordTagger(Node):
    """Learns from the mamabear which surface cues mean "no entity here"; always answers no entities.

    A logistic regression over hashed cues (lower-cased words, capitalization shapes, digits, a length bucket)
    estimates P(the mamabear finds no entity). Evidence: ``p_empty`` plus the :func:`surface_cues` counts.
    """

    class Params(NodeParams):
        n_features: int = Field(2**18, ge=16, description="size of the hashed cue space")
        C: float = Field(1.0, gt=0, description="inverse L2 regularization strength")

    params: LearnedKeywordTagger.Params

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self._hasher = FeatureHasher(self.params.n_features, input_type="string", alternate_sign=False)
        self.coef_: np.ndarray | None = None
        self.intercept_ = 0.0

    @property
    def is_fitted(self) -> bool:
        return self.coef_ is not None

    def fit(self, texts: Sequence[str], reference: Sequence[Prediction]) -> LearnedKeywordTagger:
        if len(texts) != len(reference) or not texts:
            raise BabybearError(
                f"LearnedKeywordTagger.fit needs as many references as texts (at least one), "
                f"got {len(texts)} texts and {len(reference)} references"
            )
        empty = np.array([not ref.spans for ref in reference])
        self.coef_ = np.zeros(self.params.n_features)
        if empty.all() or not empty.any():  # one class only: the smoothed rate is all there is to learn
            rate = (empty.sum() + 0.5) / (len(empty) + 1)
            self.intercept_ = math.log(rate / (1 - rate))
            return self
        model = LogisticRegression(C=self.params.C, max_iter=1000)
        model.fit(self._features(texts), empty)
        self.coef_ = model.coef_[0].astype(float)
        self.intercept_ = float(model.intercept_[0])
        return self

    def _features(self, texts: Sequence[str]) -> csr_matrix:
        return self._hasher.transform(_hashed_cues(tokenize(t)) for t in texts)

    def predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
        if self.coef_ is None:
            raise NotFittedError("LearnedKeywordTagger is not fitted: call fit() or from_disk() first")
        if not texts:
            return []
        logits = self._features(texts) @ self.coef_ + self.intercept_
        p_empty = 1.0 / (1.0 + np.exp(-logits))
        return [
            Prediction((), {"p_empty": float(p)} | surface_cues(tokenize(text))) for text, p in zip(texts, p_empty)
        ]

    # -- persistence (JSON: the hashing size, the intercept and the non-zero coefficients) ------------------
    def to_disk(self, path: Path) -> None:
        if self.coef_ is None:
            raise NotFittedError("LearnedKeywordTagger is not fitted: nothing to save")
        nonzero = np.flatnonzero(self.coef_)
        state = {
            "format": 1,
            "params": self.params.model_dump(),
            "intercept": self.intercept_,
            "indices": nonzero.tolist(),
            "values": self.coef_[nonzero].tolist(),
        }
        (Path(path) / GATE_FILE).write_text(json.dumps(state) + "\n", encoding="utf-8")

    def from_disk(self, path: Path) -> LearnedKeywordTagger:
        file = Path(path) / GATE_FILE
        try:
            state = json.loads(file.read_text(encoding="utf-8"))
            fresh = LearnedKeywordTagger(**state["params"])
            coef = np.zeros(fresh.params.n_features)
            coef[np.asarray(state["indices"], dtype=int)] = np.asarray(state["values"], dtype=float)
            intercept = float(state["intercept"])
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            raise ArtifactError(f"cannot load the learned keyword tagger from {file}: {type(e).__name__}: {e}") from e
        self.params, self._hasher = fresh.params, fresh._hasher
        self.coef_, self.intercept_ = coef, intercept
        return self


# The names these nodes had until they were renamed for what they are (taggers, not gates). Their registry names
# (babybear.KeywordGate.v1, babybear.LearnedKeywordGate.v1) still load, so existing YAMLs and saved circuits do too.
KeywordGate = KeywordTagger
LearnedKeywordGate = LearnedKeywordTagger
