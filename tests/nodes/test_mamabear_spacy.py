"""The spaCy mamabear on en_core_web_md: real entities with exact offsets, only NER runs, any text length."""

from __future__ import annotations


import pytest

from babybear.errors import BabybearError
from babybear.text import split_text
from babybear.types import Prediction, Span
from babybear.nodes.mamabear_spacy import SpacyNER
from tests.conftest import ODD_TEXTS, variant

NEWS = [
    "Tony Blair visited London on Monday.",
    "Shares in Microsoft rose 3% after Bill Gates spoke in Seattle.",
    "The European Commission said on Tuesday that Germany would pay 2 billion euros.",
]


def test_known_entities_with_exact_offsets(spacy_md: SpacyNER) -> None:
    (pred,) = spacy_md.predict_batch(NEWS[:1])
    assert pred.spans == (Span(0, 10, "PERSON"), Span(19, 25, "GPE"), Span(29, 35, "DATE"))
    assert pred.evidence == {"n_spans": 3.0}


def test_only_ner_and_what_it_listens_to_runs(spacy_md: SpacyNER) -> None:
    assert spacy_md.pipe_names == ["ner"]  # en_core_web_md's ner has its own tok2vec


def test_labels_keep_only_those(spacy_md: SpacyNER) -> None:
    preds = variant(spacy_md, labels=["GPE", "ORG"]).predict_batch(NEWS)
    assert {s.label for p in preds for s in p.spans} == {"GPE", "ORG"}
    with pytest.raises(BabybearError, match="known: .*PERSON"):
        SpacyNER(model="en_core_web_sm", labels=["PERSONS"]).warm_up()


def test_long_text_in_pieces_equals_whole(spacy_md: SpacyNER) -> None:
    text = " ".join(NEWS * 8)
    (whole,) = spacy_md.predict_batch([text])
    (split,) = variant(spacy_md, max_chars=150).predict_batch([text])
    assert len(split_text(text, 150, 37)) > 10
    assert split.spans == whole.spans
    assert len(whole.spans) == 8 * sum(len(p.spans) for p in spacy_md.predict_batch(NEWS))


def test_pieces_cover_the_text_at_whitespace() -> None:
    text = "ab " * 100 + "x" * 500 + " cd" * 50
    ranges = [(s, e) for s, e, _, _ in split_text(text, 100, 25)]
    assert ranges[0][0] == 0 and ranges[-1][1] == len(text)
    for (s, e), (s2, _) in zip(ranges, ranges[1:]):
        assert e - s <= 100 and s < s2 <= e  # in order, overlapping, no gap
        assert text[e].isspace() or text[e - 1 : e + 1] == "xx"  # whitespace cut unless inside the long word


def test_odd_inputs_give_one_prediction_each_in_order(spacy_md: SpacyNER) -> None:
    preds = variant(spacy_md, max_chars=10_000).predict_batch(ODD_TEXTS + NEWS[:1])
    assert len(preds) == len(ODD_TEXTS) + 1 and all(isinstance(p, Prediction) for p in preds)
    assert preds[0].spans == preds[1].spans == () and preds[-1].evidence["n_spans"] == 3
    assert all(0 <= s.start < s.end <= len(t) for t, p in zip(ODD_TEXTS, preds) for s in p.spans)


def test_batch_size_does_not_change_the_answer(spacy_md: SpacyNER) -> None:
    one = variant(spacy_md, batch_size=1).predict_batch(NEWS + ODD_TEXTS[:2])
    assert [p.spans for p in one] == [p.spans for p in spacy_md.predict_batch(NEWS + ODD_TEXTS[:2])]


def test_a_lone_surrogate_is_one_unknown_character(spacy_md: SpacyNER) -> None:
    text = "Tony Blair \ud800 visited London on Monday."
    assert spacy_md.predict_batch([text]) == spacy_md.predict_batch([text.replace("\ud800", "\ufffd")])
