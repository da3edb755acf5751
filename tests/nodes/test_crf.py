"""The CRF babybear and its tokenizer, trained on real BBC sentences labelled by a real mamabear (spaCy md)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from babybear import registry
from babybear.errors import ArtifactError, NotFittedError
from babybear.metrics import entity_f1
from babybear.types import Prediction, Span
from babybear.nodes._tokens import bio_to_spans, spans_to_bio, tokenize
from babybear.nodes.crf import EVIDENCE_KEYS, CRFTagger, crf_tokens
from tests.conftest import ODD_TEXTS


@pytest.fixture(scope="module")
def crf(labelled_bbc):
    train, train_ref, _, _ = labelled_bbc
    return CRFTagger().fit(train, train_ref)


# -- tokenizer ------------------------------------------------------------------------------------------------
@given(st.text())
def test_tokens_keep_their_offsets(text):
    tokens = tokenize(text)
    covered = set()
    for prev, tok in zip([None, *tokens], tokens):
        assert tok.text == text[tok.start : tok.end] and tok.end > tok.start
        assert prev is None or prev.end <= tok.start
        covered.update(range(tok.start, tok.end))
    # only whitespace and control characters are left out
    assert all(ch.isspace() or ord(ch) < 32 or 0x7F <= ord(ch) <= 0x9F for i, ch in enumerate(text) if i not in covered)


def test_tokenizer_splits_words_numbers_and_punctuation():
    text = "Profits rose 76% to $1,000.50 (£600m), said café-owner O'Neil 👍🏽."
    words = [t.text for t in tokenize(text)]
    assert words == [
        "Profits", "rose", "76", "%", "to", "$", "1,000.50", "(", "£", "600m", ")", ",",
        "said", "café", "-", "owner", "O", "'", "Neil", "👍", "🏽", ".",
    ]  # fmt: skip


WORDS = ["Tony", "Blair", "went", "to", "New", "York", ",", "1,000.5"]


@given(st.lists(st.sampled_from(WORDS), max_size=12), st.data())
def test_bio_round_trip(words, draw):
    text = " ".join(words)
    tokens = tokenize(text)
    # token-aligned, non-overlapping spans survive spans -> BIO -> spans unchanged
    cuts = sorted(draw.draw(st.sets(st.integers(0, len(tokens)), max_size=6)))
    spans = [
        Span(tokens[a].start, tokens[b - 1].end, draw.draw(st.sampled_from(["PER", "GPE"])))
        for a, b in zip(cuts[::2], cuts[1::2])
        if b > a
    ]
    assert bio_to_spans(tokens, spans_to_bio(tokens, spans)) == spans


def test_bio_tags_tokens_that_overlap_a_span():
    text = "TimeWarner's profit"
    tokens = tokenize(text)  # TimeWarner ' s profit
    assert spans_to_bio(tokens, [Span(0, 12, "ORG")]) == ["B-ORG", "I-ORG", "I-ORG", "O"]
    assert spans_to_bio(tokens, [Span(4, 6, "ORG")]) == ["B-ORG", "O", "O", "O"]
    expected = [Span(0, 10, "ORG"), Span(10, 11, "PER"), Span(13, 19, "X")]
    assert bio_to_spans(tokens, ["I-ORG", "I-PER", "O", "B-X"]) == expected


# -- CRF --------------------------------------------------------------------------------------------------------
def test_registered():
    assert registry.nodes.get("babybear.CRFTagger.v1") is CRFTagger


def test_crf_agrees_with_the_mamabear_on_held_out_sentences(crf, labelled_bbc):
    _, _, test, test_ref = labelled_bbc
    preds = crf.predict_batch(test)
    f1 = entity_f1([p.spans for p in preds], [r.spans for r in test_ref])
    assert f1 > 0.5, f1  # a CRF on 600 sentences reaches ~0.65; one that learned nothing stays near 0


def test_evidence_is_complete_and_sane(crf, labelled_bbc):
    preds = crf.predict_batch(labelled_bbc[2][:50])
    assert any(p.spans for p in preds)
    for p in preds:
        ev = p.evidence
        assert set(ev) == set(EVIDENCE_KEYS) and p.token_probs is None
        assert 0 <= ev["seq_prob"] <= ev["min_marginal"] + 1e-9 <= ev["mean_marginal"] + 2e-9 <= 1 + 2e-9
        assert ev["min_entity_marginal"] >= ev["min_marginal"] - 1e-9
        assert ev["n_spans"] == len(p.spans)
        assert ev["n_uncertain"] <= ev["n_tokens"] and ev["n_unseen_capitalized"] <= ev["n_unseen"] <= ev["n_tokens"]
        assert ev["n_capitalized_untagged"] < ev["n_tokens"]


def test_unseen_words_are_counted_against_the_training_texts(crf, labelled_bbc):
    train = labelled_bbc[0]
    assert all(p.evidence["n_unseen"] == 0 for p in crf.predict_batch(train[:20]))
    assert train[0].startswith("The dollar has hit")
    (p,) = crf.predict_batch(["The dollar Zorblax has hit quuxington"])
    assert p.evidence["n_unseen"] == 2 and p.evidence["n_unseen_capitalized"] == 1


def test_bad_inputs_answer_one_prediction_each_in_order(crf):
    preds = crf.predict_batch(ODD_TEXTS)
    assert len(preds) == len(ODD_TEXTS)
    for text, p in zip(ODD_TEXTS, preds):
        assert set(p.evidence) == set(EVIDENCE_KEYS)
        assert p.evidence["n_tokens"] == len(crf_tokens(text, crf.params.split_units))
        assert all(0 <= s.start < s.end <= len(text) for s in p.spans)
    assert preds[0].spans == () and preds[0].evidence["seq_prob"] == 1.0
    assert preds[1].spans == () and preds[1].evidence["n_tokens"] == 0


def test_token_probs_only_when_asked(crf, labelled_bbc, tmp_path):
    crf.to_disk(tmp_path)
    soft = CRFTagger().from_disk(tmp_path)
    soft.params.keep_token_probs = True
    text = labelled_bbc[2][0]
    (p,) = soft.predict_batch([text])
    assert [(s, e) for s, e, _ in p.token_probs] == [(t.start, t.end) for t in crf_tokens(text, True)]
    for _, _, probs in p.token_probs:
        assert set(probs) == set(crf.labels_) and sum(probs.values()) == pytest.approx(1.0)
    assert soft.predict_batch([""])[0].token_probs == []


def test_save_load_gives_identical_answers(crf, labelled_bbc, tmp_path):
    crf.to_disk(tmp_path)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["crf.json", "model.crfsuite", "vocab.json"]
    loaded = CRFTagger(window=3).from_disk(tmp_path)  # saved params win: they define the features
    assert loaded.params == crf.params and loaded.labels_ == crf.labels_ and loaded.vocab_ == crf.vocab_
    texts = labelled_bbc[2][:100] + ODD_TEXTS
    assert loaded.predict_batch(texts) == crf.predict_batch(texts)


def test_a_format_1_model_without_a_vocabulary_loads_but_a_format_2_one_must_have_it(crf, tmp_path):
    crf.to_disk(tmp_path)
    (tmp_path / "vocab.json").unlink()
    with pytest.raises(ArtifactError, match="vocab.json"):  # it would count every word as seen, silently
        CRFTagger().from_disk(tmp_path)
    meta = json.loads((tmp_path / "crf.json").read_text())
    (tmp_path / "crf.json").write_text(json.dumps({**meta, "format": 1}))  # as format 1 saved it
    text = "The dollar Zorblax has hit quuxington"
    loaded = CRFTagger().from_disk(tmp_path)
    (old,) = loaded.predict_batch([text])
    assert old.spans == crf.predict_batch([text])[0].spans and old.evidence["n_unseen"] == 0
    (tmp_path / "again").mkdir()
    loaded.to_disk(tmp_path / "again")  # saved again, it is still a format-1 folder that loads
    assert json.loads((tmp_path / "again" / "crf.json").read_text())["format"] == 1
    assert CRFTagger().from_disk(tmp_path / "again").predict_batch([text]) == [old]


def test_batch_size_and_threads_do_not_change_answers(crf, labelled_bbc):
    texts = labelled_bbc[2][:60]
    whole = crf.predict_batch(texts)
    assert [crf.predict_batch([t])[0] for t in texts] == whole
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(crf.predict_batch, [texts[i::4] for i in range(4)]))
    assert [parts[i % 4][i // 4] for i in range(len(texts))] == whole


def test_unfitted_and_unreadable_models_fail_clearly(tmp_path):
    with pytest.raises(NotFittedError):
        CRFTagger().predict_batch(["Hello"])
    (tmp_path / "crf.json").write_text('{"format": 1, "params": {}, "labels": []}')
    (tmp_path / "model.crfsuite").write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match="cannot load the CRF"):
        CRFTagger().from_disk(tmp_path)


def test_training_shows_a_bar_only_on_a_terminal(monkeypatch):
    from io import StringIO

    from rich.console import Console

    texts, refs = ["Tony Blair met Gordon Brown"] * 20, [Prediction((Span(0, 10, "PERSON"),))] * 20
    for terminal in (True, False):
        out = StringIO()
        monkeypatch.setattr("babybear.nodes.crf.console", Console(file=out, force_terminal=terminal))
        CRFTagger(max_iterations=5).fit(texts, refs)
        assert ("crf on 20 texts, loss" in out.getvalue()) is terminal


def test_a_lone_surrogate_is_one_unknown_character(tmp_path):
    text, ref = "Tony \ud800 Blair", Prediction((Span(0, 4, "PERSON"), Span(7, 12, "PERSON")))
    crf = CRFTagger(max_iterations=5).fit([text, "The cat sat."], [ref, Prediction()])
    assert crf.predict_batch([text]) == crf.predict_batch(["Tony \ufffd Blair"])
    crf.to_disk(tmp_path)
    assert "\ufffd" in CRFTagger().from_disk(tmp_path).vocab_
