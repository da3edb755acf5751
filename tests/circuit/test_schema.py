"""Circuit YAML: valid files load and round-trip; broken ones report every problem, located."""

from __future__ import annotations

from pathlib import Path

import pytest

from babybear import BabybearError, Circuit, CircuitValidationError
from babybear.node import Params
from babybear.nodes.gates import CalibratedGate
from tests.conftest import FIXTURES, CapsMamabear, Memorizer


def problems(name: str) -> list[str]:
    with pytest.raises(CircuitValidationError) as info:
        Circuit.from_yaml(FIXTURES / name)
    return [str(p) for p in info.value.problems]


def test_valid_yaml_round_trips_with_equality():
    circuit = Circuit.from_yaml(FIXTURES / "valid.yaml")
    assert list(circuit.graph) == ["memo", "mama"]
    assert circuit.node("memo").params.min_count == 2
    again = Circuit.from_yaml(circuit.to_yaml())
    assert again == circuit and again.to_dict() == circuit.to_dict()


def test_python_api_builds_the_same_circuit_as_yaml():
    built = Circuit("toy", {"min_entity_f1": 0.99, "confidence": 0.95}).add("memo", Memorizer(min_count=2)).add("mama", CapsMamabear()).connect("memo", "mama", gate=CalibratedGate())
    assert built == Circuit.from_yaml(FIXTURES / "valid.yaml")


def test_every_problem_is_reported_at_once_with_location_and_choices():
    found = problems("broken_many.yaml")
    text = "\n".join(found)
    assert "budget.min_entity_f1 (line 3): must be in (0, 1], got 1.5" in text
    assert "nodes.memo.params.c3 (line 5): unknown parameter; known: min_count" in text
    assert "nodes.crf.type (line 6): unknown node type 'babybear.CRFTaggr.v1'; known: " in text and "babybear.CRFTagger.v1" in text
    assert "edges.1.target (line 10): no node named 'nowhere'" in text
    assert "edges.2.gate.type (line 11): unknown gate type 'babybear.NoSuchGate.v1'; known: babybear.CalibratedGate.v1" in text
    assert "edges.2 (line 11): duplicate edge memo -> mama" in text
    assert len(found) >= 6


def test_cycle_is_named():
    assert any("cycle: a -> b -> a" in p or "cycle: b -> a -> b" in p for p in problems("broken_cycle.yaml"))


def test_several_sinks_and_unreachable_nodes():
    text = "\n".join(problems("broken_sinks.yaml"))
    assert "more than one sink" in text and "b" in text and "lonely" in text


def test_no_mamabear():
    assert any("no mamabear node" in p for p in problems("broken_no_mamabear.yaml"))


def test_misspelt_fields_list_the_known_ones():
    text = "\n".join(problems("broken_shape.yaml"))
    assert "nodez (line 2): unknown field; known: budget, edges, name, nodes, version" in text
    assert "nodes.a.parms (line 5): unknown field; known: enabled, labels, params, type" in text
    assert "edges.0.treshold (line 9): unknown field; known: agree_with, gate, source, target, threshold" in text
    assert "edges.2.gate.typ (line 11): unknown field; known: params, type" in text
    # the well-shaped parts are checked in the same pass
    assert "budget.min_entity_f1 (line 3): must be in (0, 1], got 1.5" in text
    assert "nodes.b.params.c3 (line 6): unknown parameter; known: min_count" in text
    assert "edges.1.target (line 10): no node named 'nowhere'" in text and "edges.1.threshold (line 10): must be in [0, 1]" in text


def test_the_readme_example_with_real_types_reports_its_six_problems(capsys):
    from babybear.doors.cli import main

    assert main(["fit", str(FIXTURES / "broken_real.yaml"), "--corpus", "x", "--out", "y"]) == 2
    err = capsys.readouterr().err
    assert "6 problems in the circuit" in err
    for where in ("budget.confidance (line 3)", "edges.1.treshold (line 11)", "nodes.crf.type (line 6)",
                  "nodes.student.params.epoch (line 7)", "edges.2.gate.type (line 12)", "edges.3.target (line 13)"):
        assert where in err


def test_nodes_as_a_list_is_a_located_problem():
    with pytest.raises(CircuitValidationError, match=r"nodes \(line 2\): Input should be a valid dictionary"):
        Circuit.from_yaml("nodes:\n  - {type: babybear.CRFTagger.v1}\n")


def test_not_yaml_and_missing_file():
    with pytest.raises(CircuitValidationError, match="not valid YAML"):
        Circuit.from_yaml("nodes: [unclosed\n")
    with pytest.raises(Exception, match="circuit file not found"):
        Circuit.from_yaml("nope/missing.yaml")


@pytest.mark.parametrize("path", ["circuits/missing.yaml", "my.circuit", "circuits/news"])
def test_a_missing_circuit_file_is_named(path):
    with pytest.raises(BabybearError, match=f"circuit file not found: {path}"):
        Circuit.from_yaml(path)


def test_confidence_of_one_is_rejected_up_front():
    yaml_text = (FIXTURES / "valid.yaml").read_text().replace("confidence: 0.95", "confidence: 1")
    with pytest.raises(CircuitValidationError, match=r"budget.confidence \(line 3\): must be in \(0, 1\)"):
        Circuit.from_yaml(yaml_text)


@pytest.mark.parametrize("budget", [0, -0.1, 1.01])
def test_bad_budget_rejected(budget):
    yaml_text = (FIXTURES / "valid.yaml").read_text().replace("min_entity_f1: 0.99", f"min_entity_f1: {budget}")
    with pytest.raises(CircuitValidationError, match="budget.min_entity_f1"):
        Circuit.from_yaml(yaml_text)


def test_params_forbid_unknown_names():
    class P(Params):
        a: int = 1

    with pytest.raises(Exception):
        P(b=2)


def test_set_params_with_sklearn_style_names():
    circuit = Circuit.from_yaml(FIXTURES / "valid.yaml")
    circuit.set_params(**{"memo__min_count": 5, "memo->mama__threshold": 0.4})
    assert circuit.get_params()["memo__min_count"] == 5
    assert circuit.thresholds[("memo", "mama")] == 0.4
    with pytest.raises(Exception, match="no edge"):
        circuit.set_params(**{"memo->nowhere__threshold": 0.1})


def test_set_params_rebuilds_the_node_so_what_it_built_follows():
    from babybear.nodes.crf import CRFTagger
    from babybear.nodes.rules import KeywordTagger

    circuit = Circuit().add("rules", KeywordTagger()).add("crf", CRFTagger()).add("mama", CapsMamabear())
    circuit.connect("rules", "crf").connect("crf", "mama")
    assert circuit.node("rules").predict_batch(["acme rocks"])[0].spans == ()
    circuit.set_params(rules__keywords={"ORG": ["acme"]}, crf__window=2, crf__c1=0.5)
    assert [s.label for s in circuit.node("rules").predict_batch(["acme rocks"])[0].spans] == ["ORG"]
    crf = circuit.node("crf")
    assert (crf.params.window, crf.params.c1, len(crf.features.offsets)) == (2, 0.5, 4)
    with pytest.raises(CircuitValidationError, match=r"nodes\.crf\.params\.window: .*less than or equal to 4"):
        circuit.set_params(crf__window=9)
    with pytest.raises(CircuitValidationError, match=r"nodes\.rules\.params\.kewords: unknown parameter; known: patterns"):
        circuit.set_params(rules__kewords={})


@pytest.mark.parametrize("path", sorted(Path("circuits").glob("*.yaml")), ids=lambda p: p.name)
def test_every_ready_circuit_validates_and_round_trips(path):
    circuit = Circuit.from_yaml(path)
    assert Circuit.from_yaml(circuit.to_yaml()) == circuit


def test_agree_with_round_trips_and_must_name_a_node_every_sentence_has_passed():
    three = """
version: 1
nodes:
  memo: {type: test.Memorizer.v1%s}
  other: {type: test.Memorizer.v1}
  mama: {type: test.CapsMamabear.v1}
edges:
  - {source: memo, target: other}
  - {source: other, target: mama, agree_with: %s}
"""
    circuit = Circuit.from_yaml(three % ("", "memo"))
    assert circuit.topology.agree_with == {("other", "mama"): "memo"}
    assert Circuit.from_yaml(circuit.to_yaml()) == circuit and "agree_with: memo" in circuit.to_yaml()
    for where, needle in [("nobody", "no node named 'nobody'"), ("other", "not on every path into 'other'"), ("mama", "not on every path")]:
        with pytest.raises(CircuitValidationError, match=needle) as info:
            Circuit.from_yaml(three % ("", where))
        assert "edges.1.agree_with (line 9)" in str(info.value)
    with pytest.raises(CircuitValidationError, match="'memo' is switched off"):
        Circuit.from_yaml(three % (", enabled: false", "memo"))
    side_door = (three % ("", "memo")).replace("  - {source: memo, target: other}\n", "  - {source: memo, target: other}\n  - {source: side, target: other}\n")
    side_door = side_door.replace("  mama:", "  side: {type: test.Memorizer.v1}\n  mama:")
    with pytest.raises(CircuitValidationError, match="not on every path into 'other'"):
        Circuit.from_yaml(side_door)  # sentences entering at 'side' never met memo


def test_node_names_must_be_plain_file_names_located_at_their_line():
    found = problems("broken_names.yaml")
    text = "\n".join(found)
    assert "nodes.../../../escape/rules (line 4): invalid node name '../../../escape/rules'" in text
    assert "nodes.crf--v2 (line 5): invalid node name 'crf--v2'" in text
    assert "nodes.memo (line 7): differs from node 'Memo' only in case" in text
    assert len(found) == 3


@pytest.mark.parametrize("name", ["crf", "crf.v2", "student_2", "2-layer", "_x"])
def test_ordinary_node_names_are_accepted(name):
    Circuit.from_dict({"nodes": {name: {"type": "test.Memorizer.v1"}, "mama": {"type": "test.CapsMamabear.v1"}}, "edges": [{"source": name, "target": "mama"}]})


def test_a_node_named_twice_is_a_located_problem_not_a_silent_replacement():
    assert problems("broken_duplicate.yaml") == ["nodes.memo (line 6): key 'memo' appears twice (first at line 4); the later one would silently replace the first"]


def test_an_edge_to_a_missing_node_is_reported_alone_without_follow_ons():
    assert problems("broken_edge_to_nowhere.yaml") == ["edges.0.target (line 7): no node named 'mamma'; nodes: memo, mama"]


def test_a_circuit_file_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes((FIXTURES / "valid.yaml").read_text(encoding="utf-8").replace("name: toy", "name: café").encode("latin-1"))
    with pytest.raises(BabybearError) as info:
        Circuit.from_yaml(path)
    assert str(info.value) == f"{path}: not UTF-8 text (byte 0xe9 at offset 20); save it as UTF-8"


def test_a_directory_is_named_as_one_with_the_circuit_files_in_it(tmp_path):
    with pytest.raises(BabybearError, match=r"^circuits is a directory, not a circuit file; its circuit files: news-early-exit.yaml, news-student.yaml, news-transformer.yaml, news-two-students.yaml, news.yaml, pii.yaml$"):
        Circuit.from_yaml("circuits")
    with pytest.raises(BabybearError, match=r"is a directory, not a circuit file; it holds no .yaml file"):
        Circuit.from_yaml(Path(tmp_path))
