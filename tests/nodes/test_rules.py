"""Rule babybears: user keyword/regex rules, and the tagger that learns where the mamabear finds nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError
from sklearn.metrics import roc_auc_score

from babybear import registry
from babybear.errors import ArtifactError, NotFittedError
from babybear.types import Prediction, Span
from babybear.nodes.rules import KeywordTagger, LearnedKeywordTagger
from tests.conftest import ODD_TEXTS

CUES = {"n_tokens", "n_capitalized_inner", "n_digit_tokens", "n_allcaps"}


def test_registered():
    assert registry.nodes.get("babybear.KeywordTagger.v1") is KeywordTagger
    assert registry.nodes.get("babybear.LearnedKeywordTagger.v1") is LearnedKeywordTagger


def test_the_old_gate_names_still_load_a_saved_circuit_which_is_then_written_under_the_new_names(tmp_path):
    from babybear import Circuit
    from tests.conftest import CapsMamabear, synthetic_texts

    assert registry.nodes.get("babybear.KeywordGate.v1") is KeywordTagger
    assert registry.nodes.get("babybear.LearnedKeywordGate.v1") is LearnedKeywordTagger
    assert "babybear.KeywordGate.v1" not in registry.nodes.names()  # the known names a bad file is told of
    circuit = Circuit("old", {"min_entity_f1": 0.9}).add("rules", LearnedKeywordTagger(n_features=1024))
    circuit.add("mama", CapsMamabear()).connect("rules", "mama").fit(synthetic_texts(300), progress=False)
    folder = circuit.save(tmp_path / "saved")
    yaml_file = folder / "circuit.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("LearnedKeywordTagger.v1", "LearnedKeywordGate.v1"))
    assert "LearnedKeywordGate.v1" in yaml_file.read_text()
    loaded = Circuit.load(folder)
    texts = synthetic_texts(50, seed=1)
    assert [a.spans for a in loaded(texts)] == [a.spans for a in circuit(texts)]
    assert loaded.to_dict()["nodes"]["rules"]["type"] == "babybear.LearnedKeywordTagger.v1"


# -- KeywordTagger ----------------------------------------------------------------------------------------------
def test_patterns_and_keywords_match_leftmost_longest():
    tagger = KeywordTagger(
        patterns=[{"label": "MONEY", "regex": r"[$£]\d+(?:[.,]\d+)*(?:bn|m)?"}],
        keywords={"ORG": ["Time Warner", "Time", "AOL"], "GPE": ["US"]},
    )
    text = "US giant Time Warner earned $1.13bn; aol and Timely BUS news."
    (p,) = tagger.predict_batch([text])
    assert [(text[s.start : s.end], s.label) for s in p.spans] == [
        ("US", "GPE"), ("Time Warner", "ORG"), ("$1.13bn", "MONEY"), ("aol", "ORG"),
    ]  # fmt: skip
    assert p.evidence == {
        "n_matches": 4.0, "n_tokens": 14.0, "n_capitalized_inner": 4.0, "n_digit_tokens": 1.0, "n_allcaps": 2.0,
    }  # fmt: skip


def test_case_sensitive_keywords_and_overlapping_rules():
    tagger = KeywordTagger(keywords={"ORG": ["AOL"]}, case_sensitive=True, patterns=[{"label": "X", "regex": "A"}])
    assert tagger.predict_batch(["aol AOL"])[0].spans == (Span(4, 7, "ORG"),)  # longest wins over "A" at 4
    assert KeywordTagger(patterns=[{"label": "X", "regex": "a*"}]).predict_batch(["bbb"])[0].spans == ()


def test_no_rules_answers_no_entities():
    (p,) = KeywordTagger().predict_batch(["Tony Blair visited Paris in 2005."])
    assert p.spans == () and p.evidence["n_matches"] == 0 and p.evidence["n_capitalized_inner"] == 2


def test_invalid_regex_names_the_pattern_and_where_it_is():
    with pytest.raises(ValidationError) as err:
        KeywordTagger(patterns=[{"label": "OK", "regex": "ok"}, {"label": "BAD", "regex": "Time (Warner"}])
    (problem,) = err.value.errors()
    assert problem["loc"] == ("patterns", 1, "regex")
    assert "invalid regular expression 'Time (Warner'" in problem["msg"]


def test_keyword_tagger_handles_odd_texts():
    tagger = KeywordTagger(keywords={"PERSON": ["Tony Blair"], "GPE": ["London", "Paris", "東京"]})
    preds = tagger.predict_batch(ODD_TEXTS)
    assert len(preds) == len(ODD_TEXTS)
    assert [len(p.spans) for p in preds] == [0, 0, 5200, 0, 1, 0, 0, 0, 1, 0]
    assert all(set(p.evidence) == CUES | {"n_matches"} for p in preds)


# -- LearnedKeywordTagger -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def learned(labelled_bbc):
    train, train_ref, _, _ = labelled_bbc
    return LearnedKeywordTagger().fit(train, train_ref)


def test_learned_tagger_separates_empty_from_non_empty_answers(learned, labelled_bbc):
    _, _, test, test_ref = labelled_bbc
    empty = [not r.spans for r in test_ref]
    assert 0.1 < np.mean(empty) < 0.9  # both kinds are there to tell apart
    preds = learned.predict_batch(test)
    assert all(p.spans == () and set(p.evidence) == CUES | {"p_empty"} for p in preds)
    auc = roc_auc_score(empty, [p.evidence["p_empty"] for p in preds])
    assert auc > 0.7, auc


def test_learned_tagger_json_round_trip(learned, labelled_bbc, tmp_path):
    learned.to_disk(tmp_path)
    state = json.loads((tmp_path / "learned_gate.json").read_text())
    assert state["params"] == learned.get_params() and len(state["indices"]) == len(state["values"]) > 0
    loaded = LearnedKeywordTagger().from_disk(tmp_path)
    texts = labelled_bbc[2][:100] + ODD_TEXTS
    assert loaded.predict_batch(texts) == learned.predict_batch(texts)


def test_learned_tagger_handles_odd_texts_and_one_class(learned):
    preds = learned.predict_batch(ODD_TEXTS)
    assert len(preds) == len(ODD_TEXTS) and all(0 < p.evidence["p_empty"] < 1 for p in preds)
    assert [p.evidence["n_tokens"] for p in preds[:2]] == [0, 0]
    always_empty = LearnedKeywordTagger().fit(["a", "b", "c"], [Prediction()] * 3)
    assert always_empty.predict_batch(["anything"])[0].evidence["p_empty"] == pytest.approx(3.5 / 4)


def test_learned_tagger_fails_clearly(tmp_path):
    with pytest.raises(NotFittedError):
        LearnedKeywordTagger().predict_batch(["Hello"])
    (tmp_path / "learned_gate.json").write_text("{}")
    with pytest.raises(ArtifactError, match="cannot load the learned keyword tagger"):
        LearnedKeywordTagger().from_disk(tmp_path)


def test_keywords_are_whole_words_with_their_combining_marks_and_in_either_normal_form():
    tagger = KeywordTagger(keywords={"PLACE": ["cafe", "Zürich"]})
    decomposed = "Zu\u0308rich and cafe\u0301 and Zürich"  # "cafe" + accent is the word "café", not "cafe"
    assert [decomposed[s.start : s.end] for s in tagger.matches(decomposed)] == ["Zu\u0308rich", "Zürich"]
    assert tagger.matches("e\u0301cafe") == []  # a mark before the keyword belongs to the word it is in


def test_keywords_in_scripts_without_spaces_are_found_inside_running_text():
    tagger = KeywordTagger(keywords={"GPE": ["東京", "Tokyo"]})
    assert tagger.matches("東京に行く。Tokyoites") == [Span(0, 2, "GPE")]


def test_learned_tagger_takes_a_lone_surrogate_as_one_unknown_character(learned):
    assert learned.predict_batch(["Tony \ud800 Blair"]) == learned.predict_batch(["Tony \ufffd Blair"])


def test_pii_circuit_rules_find_whole_phones_not_dates_and_scan_long_runs_in_linear_time():
    spec = yaml.safe_load((Path(__file__).parents[2] / "circuits" / "pii.yaml").read_text(encoding="utf-8"))
    tagger = KeywordTagger(**spec["nodes"]["regex"]["params"])
    text = "Mail a.b@x.co.uk or call (415) 555-0199 or +44 20 7946 1234, not on 2005-03-22 in 1991-2005."
    assert [(text[s.start : s.end], s.label) for s in tagger.matches(text)] == [
        ("a.b@x.co.uk", "EMAIL"), ("(415) 555-0199", "PHONE"), ("+44 20 7946 1234", "PHONE"),
    ]  # fmt: skip
    start = time.perf_counter()
    assert tagger.matches("a" * 200_000) == []  # each start in the run was a new scan to its end: about a minute
    assert time.perf_counter() - start < 1
