"""The spaCy mamabear on en_core_web_md: real entities with exact offsets, only NER runs, any text length."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from circuit.errors import BabybearError
from circuit.types import Prediction, Span
from nodes._models import resolve
from nodes.mamabear_spacy import SpacyNER, pieces

pytest.importorskip("spacy")
try:
    resolve("en_core_web_md", "spacy")
except BabybearError as missing:
    pytest.skip(str(missing), allow_module_level=True)

NEWS = [
    "Tony Blair visited London on Monday.",
    "Shares in Microsoft rose 3% after Bill Gates spoke in Seattle.",
    "The European Commission said on Tuesday that Germany would pay 2 billion euros.",
]
BAD = ["", "  \n\t ", "x" * 100_000, "\x00\x07\x1b[0m\u200b\x7f", "😀🇬🇧👩‍👩‍👧 hi 😀", "Mixed 日本語 русский العربية ok"]


@pytest.fixture(scope="module")
def md() -> SpacyNER:
    node = SpacyNER(model="en_core_web_md")
    node.warm_up()
    return node


def _variant(node: SpacyNER, **changes: Any) -> SpacyNER:
    """The same loaded model with other parameters (loading takes seconds)."""
    other = copy.copy(node)
    other.params = node.params.model_copy(update=changes)
    return other


def test_known_entities_with_exact_offsets(md: SpacyNER) -> None:
    (pred,) = md.predict_batch(NEWS[:1])
    assert pred.spans == (Span(0, 10, "PERSON"), Span(19, 25, "GPE"), Span(29, 35, "DATE"))
    assert pred.evidence == {"n_spans": 3.0}


def test_only_ner_and_what_it_listens_to_runs(md: SpacyNER) -> None:
    assert md.pipe_names == ["ner"]  # en_core_web_md's ner has its own tok2vec


def test_labels_keep_only_those(md: SpacyNER) -> None:
    preds = _variant(md, labels=["GPE", "ORG"]).predict_batch(NEWS)
    assert {s.label for p in preds for s in p.spans} == {"GPE", "ORG"}
    with pytest.raises(BabybearError, match="known: .*PERSON"):
        SpacyNER(model="en_core_web_sm", labels=["PERSONS"]).warm_up()


def test_long_text_in_pieces_equals_whole(md: SpacyNER) -> None:
    text = " ".join(NEWS * 8)
    (whole,) = md.predict_batch([text])
    (split,) = _variant(md, max_chars=150).predict_batch([text])
    assert len(pieces(text, 150, 37)) > 10
    assert split.spans == whole.spans
    assert len(whole.spans) == 8 * sum(len(p.spans) for p in md.predict_batch(NEWS))


def test_pieces_cover_the_text_at_whitespace() -> None:
    text = "ab " * 100 + "x" * 500 + " cd" * 50
    ranges = pieces(text, 100, 25)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(text)
    for (s, e), (s2, _) in zip(ranges, ranges[1:]):
        assert e - s <= 100 and s < s2 <= e  # in order, overlapping, no gap
        assert text[e].isspace() or text[e - 1 : e + 1] == "xx"  # whitespace cut unless inside the long word


def test_odd_inputs_give_one_prediction_each_in_order(md: SpacyNER) -> None:
    preds = _variant(md, max_chars=10_000).predict_batch(BAD + NEWS[:1])
    assert len(preds) == len(BAD) + 1 and all(isinstance(p, Prediction) for p in preds)
    assert preds[0].spans == preds[1].spans == () and preds[-1].evidence["n_spans"] == 3
    assert all(0 <= s.start < s.end <= len(t) for t, p in zip(BAD, preds) for s in p.spans)


def test_batch_size_does_not_change_the_answer(md: SpacyNER) -> None:
    one = _variant(md, batch_size=1).predict_batch(NEWS + BAD[:2])
    assert [p.spans for p in one] == [p.spans for p in md.predict_batch(NEWS + BAD[:2])]
