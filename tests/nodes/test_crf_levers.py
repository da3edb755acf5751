"""The CRF's levers from the mamabear's own knowledge (issue 17): clusters of md's static word vectors as
features, and a warm-up gazetteer of the strings md labelled, as features and gate evidence."""

from __future__ import annotations

import gzip
import json

import pytest

from babybear.errors import ArtifactError
from babybear.metrics import entity_f1
from babybear.types import Prediction, Span
from babybear.nodes import _clusters
from babybear.nodes._clusters import CLUSTERS_FILE, WordClusters, prune, vocab_vectors
from babybear.nodes._gazetteer import GAZETTEER_FILE, Gazetteer
from babybear.nodes._tokens import tokenize
from babybear.nodes.crf import EVIDENCE_KEYS, GAZETTEER_EVIDENCE_KEYS, CRFTagger, crf_tokens
from tests.conftest import ODD_TEXTS

SIZES = [16, 64]  # small granularities keep the k-means to a second or two


@pytest.fixture(scope="module")
def md_vectors(spacy_md):
    """md's static vectors, from the loaded mamabear's vocabulary (no second load)."""
    return vocab_vectors(spacy_md._nlp.vocab)


@pytest.fixture(scope="module")
def md_clusters(md_vectors):
    return WordClusters.from_vectors(*md_vectors, SIZES)


# -- clusters -------------------------------------------------------------------------------------------------
def test_md_vectors_cluster_into_meaningful_groups(md_vectors, md_clusters):
    words, _rows, data = md_vectors
    assert len(words) > 500_000 and data.shape == (20_000, 300)
    clusters = md_clusters
    assert clusters.get("Monday") == clusters.get("Tuesday")  # weekdays share a cluster, at every granularity
    assert clusters.get("Monday")[1] != clusters.get("Microsoft")[1]
    assert clusters.get("quuxingtonish") is None and clusters.get("LONDON") == clusters.get("london")


def test_the_cluster_table_round_trips_as_gzipped_json(tmp_path):
    clusters = WordClusters([4, 8], {"Paris": (1, 5), "London": (1, 5), "the": (0, 2), "naïve": (3, 7)})
    clusters.to_disk(tmp_path / CLUSTERS_FILE)
    doc = json.loads(gzip.decompress((tmp_path / CLUSTERS_FILE).read_bytes()))
    assert doc["sizes"] == [4, 8] and sorted(doc["groups"]) == ["0 2", "1 5", "3 7"]
    loaded = WordClusters.from_disk(tmp_path / CLUSTERS_FILE)
    assert loaded.sizes == [4, 8] and loaded.table == clusters.table
    (tmp_path / CLUSTERS_FILE).write_bytes(gzip.compress(b'{"sizes": [4], "groups": {"1 5": "Paris"}}'))
    with pytest.raises(ArtifactError, match="granularities"):
        WordClusters.from_disk(tmp_path / CLUSTERS_FILE)
    (tmp_path / CLUSTERS_FILE).write_bytes(b"\x80\x04 a pickle, not gzip")
    with pytest.raises(ArtifactError, match="cannot load word clusters"):
        WordClusters.from_disk(tmp_path / CLUSTERS_FILE)


@pytest.fixture(scope="module")
def clustered(labelled_bbc, md_clusters):
    """A CRF with `vectors: en_core_web_md`, whose clusters come from the already-loaded md (no second load)."""
    train, train_ref, _, _ = labelled_bbc
    mp = pytest.MonkeyPatch()
    mp.setattr(
        WordClusters,
        "from_spacy",
        classmethod(lambda cls, name, sizes, seed=0: md_clusters),
    )
    try:
        return CRFTagger(vectors="en_core_web_md", cluster_sizes=SIZES).fit(train, train_ref)
    finally:
        mp.undo()


def test_md_clusters_make_the_crf_agree_better_with_md(clustered, labelled_bbc):
    train, train_ref, test, test_ref = labelled_bbc
    plain = CRFTagger().fit(train, train_ref)
    f1 = {
        name: entity_f1([p.spans for p in crf.predict_batch(test)], [r.spans for r in test_ref])
        for name, crf in [("plain", plain), ("clusters", clustered)]
    }
    assert f1["clusters"] > f1["plain"] + 0.02, f1  # 0.71 against 0.65 on these 600 + 200 sentences
    feats = clustered.features(["Blair", "said"])
    assert f"c64={clustered.clusters_.get('Blair')[1]}" in feats[0] and any(f.startswith("1:c16=") for f in feats[0])


def test_a_clustered_crf_loads_without_the_vectors(clustered, labelled_bbc, tmp_path, monkeypatch):
    clustered.to_disk(tmp_path)
    assert (tmp_path / CLUSTERS_FILE).is_file() and not (tmp_path / GAZETTEER_FILE).exists()

    def no_vectors(name):
        raise AssertionError("a saved CRF must not need the vectors")

    monkeypatch.setattr(_clusters, "spacy_vectors", no_vectors)
    loaded = CRFTagger().from_disk(tmp_path)
    texts = labelled_bbc[2][:60] + ODD_TEXTS
    assert loaded.predict_batch(texts) == clustered.predict_batch(texts)
    (tmp_path / CLUSTERS_FILE).unlink()
    with pytest.raises(ArtifactError, match="clusters"):
        CRFTagger().from_disk(tmp_path)


# -- gazetteer ------------------------------------------------------------------------------------------------
def test_the_gazetteer_counts_labels_and_matches_the_longest_string():
    texts = [
        "Tony Blair met Gordon Brown.",
        "Blair spoke.",
        "Brown bread is cheap.",
        "New York Times",
    ]
    spans = [
        [Span(0, 10, "PERSON"), Span(15, 27, "PERSON")],
        [Span(0, 5, "PERSON")],
        [],
        [Span(0, 8, "GPE")],
    ]
    gz = Gazetteer.build(texts, spans)
    gz.counts["Blair"] = {"PERSON": 3, "ORG": 1}  # md once called him an organisation
    gz = Gazetteer(gz.counts)
    assert gz.counts["Tony Blair"] == {"PERSON": 1} and gz.best["Blair"] == "PERSON"
    words = ["Tony", "Blair", "and", "Blair", "in", "New", "York", "Times"]
    assert gz.match(words) == [
        (0, 2, "Tony Blair"),
        (3, 4, "Blair"),
        (5, 7, "New York"),
    ]
    feats = gz.features(words)
    assert feats[0] == ["gz=B-PERSON"] and feats[1] == ["gz=I-PERSON"] and feats[2] == []
    assert feats[3] == ["gz=B-PERSON", "gzmix"] and feats[6] == ["gz=I-GPE"] and feats[7] == []


def test_the_gazetteer_round_trips_as_json_and_refuses_junk(tmp_path):
    gz = Gazetteer.build(["Tony Blair smiled"], [[Span(0, 10, "PERSON")]])
    gz.to_disk(tmp_path / GAZETTEER_FILE)
    loaded = Gazetteer.from_disk(tmp_path / GAZETTEER_FILE)
    assert loaded.counts == gz.counts and loaded.best == gz.best
    (tmp_path / GAZETTEER_FILE).write_text('{"counts": {"Blair": {"PERSON": "many"}}, "max_words": 8}')
    with pytest.raises(ArtifactError, match="gazetteer"):
        Gazetteer.from_disk(tmp_path / GAZETTEER_FILE)


@pytest.fixture(scope="module")
def gazetteered(labelled_bbc):
    train, train_ref, _, _ = labelled_bbc
    return CRFTagger(gazetteer=True).fit(train, train_ref)


def test_gazetteer_evidence_sees_strings_md_labelled_otherwise(gazetteered, labelled_bbc):
    preds = gazetteered.predict_batch(labelled_bbc[2][:50] + ODD_TEXTS)
    for p in preds:
        assert set(p.evidence) == set(EVIDENCE_KEYS) | set(GAZETTEER_EVIDENCE_KEYS)
        ev = p.evidence
        assert ev["n_spans_seen"] <= ev["n_spans"] and 0 <= ev["frac_spans_seen"] <= 1
    gz = gazetteered.gazetteer_
    gz = gazetteered.gazetteer_
    person = next(
        k for k, v in sorted(gz.counts.items()) if list(v) == ["PERSON"] and v["PERSON"] >= 2 and " " not in k
    )
    text = f"The report was read by {person} on Monday."
    tokens = tokenize(text)
    start = text.index(person)
    as_org = gazetteered._gazetteer_evidence(
        tokens, ["O"] * len(tokens), [Span(start, start + len(person), "ORG")], text
    )
    assert as_org["n_spans_seen"] == 0 and as_org["frac_spans_seen"] == 0 and as_org["n_spans_labelled_otherwise"] == 1
    assert as_org["n_gazetteer_untagged"] >= 1  # the CRF tagged the known name O
    tags = ["B-PERSON" if t.text == person else "O" for t in tokens]
    as_person = gazetteered._gazetteer_evidence(tokens, tags, [Span(start, start + len(person), "PERSON")], text)
    assert (
        as_person["n_spans_seen"] == 1
        and as_person["frac_spans_seen"] == 1
        and as_person["n_spans_labelled_otherwise"] == 0
    )
    assert as_person["n_gazetteer_untagged"] == as_org["n_gazetteer_untagged"] - 1


def test_training_texts_see_a_gazetteer_without_their_own_fold(labelled_bbc, monkeypatch):
    """Built on all training texts, every training string is in the gazetteer and the CRF learns to trust it."""
    train, train_ref = labelled_bbc[0][:200], labelled_bbc[1][:200]
    built: list[int] = []
    real_build = Gazetteer.build

    def build(texts, spans, max_words=8):
        texts = list(texts)
        built.append(len(texts))
        return real_build(texts, spans, max_words)

    monkeypatch.setattr(Gazetteer, "build", staticmethod(build))
    CRFTagger(gazetteer=True, gazetteer_folds=4, max_iterations=5).fit(train, train_ref)
    assert built == [200, 150, 150, 150, 150]


def test_a_gazetteer_crf_round_trips(gazetteered, labelled_bbc, tmp_path):
    gazetteered.to_disk(tmp_path)
    loaded = CRFTagger().from_disk(tmp_path)
    assert loaded.gazetteer_.counts == gazetteered.gazetteer_.counts
    texts = labelled_bbc[2][:60] + ODD_TEXTS
    assert loaded.predict_batch(texts) == gazetteered.predict_batch(texts)


# -- numbers glued to units -----------------------------------------------------------------------------------
def test_a_number_glued_to_its_unit_is_two_tokens_as_md_labels_the_number_alone():
    assert [t.text for t in crf_tokens("£479m in the 1980s, 21.5bn, 1,000 A4", True)] == [
        "£", "479", "m", "in", "the", "1980", "s", ",", "21.5", "bn", ",", "1,000", "A4",
    ]  # fmt: skip
    text = "The deal cost £479m last year."
    md = Prediction((Span(15, 18, "MONEY"), Span(20, 29, "DATE")))  # what md says: "479", "last year"
    assert [text[s.start : s.end] for s in md.spans] == ["479", "last year"]
    texts, refs = [text, "Nothing to see here."] * 10, [md, Prediction()] * 10
    split = CRFTagger(max_iterations=30).fit(texts, refs)
    whole = CRFTagger(max_iterations=30, split_units=False).fit(texts, refs)
    assert split.predict_batch([text])[0].spans == md.spans
    assert whole.predict_batch([text])[0].spans[0] == Span(15, 19, "MONEY")  # "479m": never md's answer


def test_a_crf_saved_before_split_units_keeps_whole_tokens(tmp_path):
    text, ref = "It cost £479m.", Prediction((Span(9, 12, "MONEY"),))
    crf = CRFTagger(max_iterations=5, split_units=False).fit([text] * 5, [ref] * 5)
    crf.to_disk(tmp_path)
    meta = json.loads((tmp_path / "crf.json").read_text())
    del (
        meta["params"]["split_units"],
        meta["params"]["vectors"],
        meta["params"]["gazetteer"],
    )
    (tmp_path / "crf.json").write_text(json.dumps(meta))
    loaded = CRFTagger().from_disk(tmp_path)
    assert loaded.params.split_units is False and loaded.predict_batch([text]) == crf.predict_batch([text])


def test_the_table_keeps_only_what_a_lookup_can_need():
    table = {"logo/mascot": (1,), "London": (2,), "london": (2,), "Apple": (3,), "apple": (4,), "MONDAY": (5,)}
    pruned = prune(table)
    assert pruned == {"london": (2,), "Apple": (3,), "apple": (4,), "MONDAY": (5,)}
    full, small = WordClusters([8], table), WordClusters([8], pruned)
    for word in ["London", "LONDON", "london", "Apple", "APPLE", "apple", "Monday", "MONDAY", "logo"]:
        assert small.get(word) == full.get(word), word


def test_a_cluster_table_that_unpacks_too_far_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(_clusters, "MAX_TABLE_BYTES", 1000)
    (tmp_path / CLUSTERS_FILE).write_bytes(gzip.compress(b" " * 1001))
    with pytest.raises(ArtifactError, match="over 1000 bytes"):
        WordClusters.from_disk(tmp_path / CLUSTERS_FILE)
