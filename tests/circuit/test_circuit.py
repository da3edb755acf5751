"""Engine behaviour with fake nodes: warm-up, routing, simulation, persistence, bad input."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from babybear import ArtifactError, BabybearError, Circuit, CircuitValidationError, NotFittedError, register_node
from babybear.metrics import entity_f1, seqeval_f1, span_counts
from babybear.routing import CachedRun, merge
from babybear.text import split_text, stitch_spans
from babybear.types import Prediction, Span
from tests.conftest import CapsMamabear, Memorizer, _caps, synthetic_texts


@pytest.fixture
def fitted(toy_circuit):
    return toy_circuit.fit(synthetic_texts(600), progress=False)


def test_fit_learns_to_skip_the_mamabear_on_easy_texts(fitted):
    texts = synthetic_texts(300, seed=1)
    report = fitted.evaluate(texts, progress=False)
    assert report["mamabear_calls_avoided"] > 0.5  # the common-name and no-name texts
    assert report["entity_f1_vs_mamabear"] >= 0.97
    assert report["texts_per_node"]["memo"] + report["texts_per_node"]["mama"] == len(texts)
    assert 0 < fitted.thresholds[("memo", "mama")] < 1


def test_a_per_label_budget_on_a_label_the_mamabear_never_uses_fails_before_the_babybears_train(toy_circuit):
    toy_circuit.budget = toy_circuit.budget.model_copy(update={"per_label": {"PERSN": 0.99}})
    with pytest.raises(BabybearError, match="PERSN: the mamabear never used this label here; labels: ENT"):
        toy_circuit.fit(synthetic_texts(200), progress=False)
    assert toy_circuit.node("memo").known_ is None


def test_warm_up_leaves_out_the_texts_the_mamabear_fails_on():
    from tests.conftest import FragileMamabear

    texts = synthetic_texts(300)
    broken = {f"BREAK-MAMA Zed{i} met Quill{i}" for i in range(5)}
    circuit = Circuit("toy").add("memo", Memorizer()).add("mama", FragileMamabear()).connect("memo", "mama")
    circuit.fit([*texts[:100], *sorted(broken), *texts[100:]], progress=False, block=1)
    warm_up = circuit.report_["warm_up"]
    assert warm_up["mamabear_failures"] == 5 and warm_up["units"] == len(set(texts))
    assert warm_up["train"] + warm_up["calibration"] + warm_up["tuning"] == len(set(texts))
    assert not broken & set(circuit.heldout_.texts)


def test_warm_up_leaves_texts_a_babybear_fails_on_out_of_calibration_and_tuning():
    from tests.conftest import FragileMemorizer

    texts = synthetic_texts(300)
    broken = [f"BREAK-BABY Zed{i} met Quill{i}" for i in range(40)]
    circuit = Circuit("toy").add("memo", FragileMemorizer()).add("mama", CapsMamabear()).connect("memo", "mama")
    circuit.fit([*texts, *broken], progress=False, block=1)
    warm_up = circuit.report_["warm_up"]
    failed = warm_up["babybear_failures"]
    assert failed > 0 and not set(broken) & set(circuit.heldout_.texts)
    assert warm_up["calibration"] + warm_up["tuning"] == len(circuit.heldout_.texts) == circuit.heldout_.run.n
    assert warm_up["train"] + warm_up["calibration"] + warm_up["tuning"] + failed == warm_up["units"]
    assert len({id(p) for p in circuit.heldout_.run.preds["memo"]}) == circuit.heldout_.run.n  # no shared objects


@pytest.mark.parametrize("fractions", [(0.5, 0.5, 0.0), (0.6, 0.3, 0.3), (0.6, -0.1, 0.5), (0.5, 0.5)])
def test_warm_up_fractions_must_leave_calibration_and_tuning_rows(toy_circuit, fractions):
    with pytest.raises(BabybearError, match="fractions"):
        toy_circuit.fit(synthetic_texts(100), fractions=fractions, progress=False)


def test_unfitted_circuit_refuses_to_route(toy_circuit):
    with pytest.raises(NotFittedError):
        toy_circuit(["Hello Bob"])


def test_every_input_is_answered_in_order_even_odd_ones(fitted):
    odd = ["", "   ", "\x00\x01 Bob \x1b[31m", "🐻 Alice met 🐼 Bob", "Grüße aus Köln, Иван и 李", "x" * 100_000, "yesterday Bob met Carol"]
    answers = fitted(odd, ids=[f"t{i}" for i in range(len(odd))])
    assert [a.id for a in answers] == [f"t{i}" for i in range(len(odd))]
    assert [a.text for a in answers] == odd
    assert answers[0].node is None and answers[1].node is None and answers[0].spans == ()
    for a in answers:
        for s in a.spans:
            assert 0 <= s.start < s.end <= len(a.text)


def test_long_text_is_split_and_no_entity_is_lost_at_a_cut(fitted):
    filler = "word " * 390  # about 1950 characters: the first cut falls near the names
    text = filler + "yesterday Alice met Bob " + filler + " and Carol " + filler
    answer = fitted([text])[0]
    mama = CapsMamabear().predict_batch([text])[0].spans
    assert set(answer.spans) == set(mama) or answer.node == "mama"
    assert {text[s.start : s.end] for s in answer.spans} >= {"Alice", "Bob", "Carol"}


def test_split_cores_tile_the_text_and_overlap_protects_spans():
    text = ("abc " * 1500).strip()
    bounds = split_text(text, 2000, 200)
    assert bounds[0][2] == 0 and bounds[-1][3] == len(text)
    assert all(a[3] == b[2] for a, b in zip(bounds, bounds[1:]))
    assert all(e - s <= 2000 for s, e, _, _ in bounds)
    for s, e, cs, ce in bounds:  # every entity of length < 100 starting in a core lies inside its cut
        assert s <= cs and ce + 100 <= e or ce == len(text)
    spans = [[Span(cs - s, cs - s + 3, "X")] for s, e, cs, ce in bounds]
    assert len(stitch_spans(bounds, spans)) == len(bounds)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=1, max_size=60), st.sampled_from([" ", "\n"]))
def test_long_words_never_shrink_the_overlap(word_lengths, space):
    """Whatever the words (URLs, base64 ...), an entity shorter than overlap // 2 starting in a core is whole."""
    text = space.join("x" * n for n in word_lengths)
    bounds = split_text(text, 500, 80)
    assert bounds[0][2] == 0 and bounds[-1][3] == len(text)
    for (s, e, cs, ce), (s2, _, cs2, _) in zip(bounds, bounds[1:]):
        assert ce == cs2 and s < s2 and e - s2 >= 80 and e - s <= 500
        assert ce + 40 <= e


@pytest.mark.parametrize("space", [" ", "\n", "\t"])
def test_long_texts_are_cut_at_any_whitespace_not_inside_words(space):
    text = space.join(f"word{i}" for i in range(1500))
    bounds = split_text(text, 2000, 200)
    assert len(bounds) > 1
    for s, e, _, _ in bounds:
        assert (s == 0 or text[s - 1] == space) and (e == len(text) or text[e] == space)


def test_simulator_agrees_with_real_routing_sentence_for_sentence(fitted):
    texts = synthetic_texts(200, seed=2)
    routed = fitted.route(texts)
    answers, exits = routed.spans, routed.exits
    topo = fitted.topology
    preds = {n: fitted.node(n).predict_batch(texts) for n in topo.order}
    scores = {e: fitted.edge(*e).gate.score([p.evidence for p in preds[e[0]]]) for e in topo.edges}
    run = CachedRun(topo, preds, scores, {n: 1.0 for n in topo.order}, np.ones(len(texts)))
    reach = run.reach(fitted.thresholds)
    for i in range(len(texts)):
        visited = [n for n in topo.order if reach[n][i]]
        assert visited[-1] == exits[i]
        assert merge(visited, {v: preds[v][i] for v in visited}, topo.labels) == answers[i]
    sim = run.evaluate(fitted.thresholds)
    real_f1 = entity_f1(answers, [p.spans for p in preds["mama"]])
    assert sim["f1"] == pytest.approx(real_f1)
    assert sim["mamabear_calls_avoided"] == pytest.approx(1 - sum(e == "mama" for e in exits) / len(texts))


def test_labels_merge_takes_each_label_from_the_deepest_covering_node():
    preds = {
        "rules": Prediction([Span(0, 3, "EMAIL"), Span(5, 8, "PER")]),
        "crf": Prediction([Span(0, 4, "EMAIL"), Span(10, 12, "ORG")]),
    }
    labels = {"rules": frozenset({"EMAIL"}), "crf": frozenset({"ORG", "PER"})}
    assert merge(["rules", "crf"], preds, labels) == (Span(0, 3, "EMAIL"), Span(10, 12, "ORG"))
    assert merge(["rules", "crf"], preds, {"rules": None, "crf": None}) == preds["crf"].spans


def test_save_and_load_in_a_fresh_process_give_the_same_answers(fitted, tmp_path):
    import subprocess
    import sys

    fitted.save(tmp_path / "fitted")
    assert (tmp_path / "fitted" / "circuit.yaml").is_file()
    assert not list((tmp_path / "fitted").rglob("*.pkl"))
    loaded = Circuit.load(tmp_path / "fitted")
    texts = synthetic_texts(50, seed=3)
    assert [a.spans for a in loaded(texts)] == [a.spans for a in fitted(texts)]
    assert loaded.thresholds == pytest.approx(fitted.thresholds)
    code = (
        "import tests.conftest, sys; from babybear import Circuit;"
        f"c = Circuit.load({str(tmp_path / 'fitted')!r});"
        "print(sum(a.node == 'memo' for a in c(tests.conftest.synthetic_texts(50, seed=3))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) == sum(a.node == "memo" for a in fitted(texts))


def test_saving_over_a_folder_leaves_no_file_of_the_earlier_save(fitted, tmp_path):
    folder = fitted.save(tmp_path / "f")
    (folder / "nodes" / "memo" / "stale.bin").write_text("old")
    (folder / "gates" / "gone--mama.json").write_text("{}")
    (folder / "report").mkdir()
    (folder / "report" / "frontier.png").write_text("a plot")
    Circuit.load(folder).save(folder)  # in place, as `babybear tune` does
    assert not (folder / "nodes" / "memo" / "stale.bin").exists() and not (folder / "gates" / "gone--mama.json").exists()
    assert (folder / "report" / "frontier.png").exists() and not (folder / ".saving").exists()
    assert Circuit.load(folder)(["yesterday Bob met Carol"]) == fitted(["yesterday Bob met Carol"])


def test_out_of_range_thresholds_are_refused_before_anything_changes(fitted):
    before = dict(fitted.thresholds)
    with pytest.raises(CircuitValidationError, match=re.escape("memo->mama.threshold: must be in [0, 1], got 5")):
        fitted.set_params(**{"memo->mama__threshold": 5})
    with pytest.raises(CircuitValidationError, match="must be in"):
        fitted.set_thresholds({("memo", "mama"): -0.1})
    with pytest.raises(BabybearError, match="no edge mama -> memo"):
        fitted.set_thresholds({("mama", "memo"): 0.5})
    assert fitted.thresholds == before
    assert fitted.set_params(**{"memo->mama__threshold": 0.25}).thresholds[("memo", "mama")] == 0.25


def test_missing_gate_file_names_the_file(fitted, tmp_path):
    fitted.save(tmp_path / "f")
    (tmp_path / "f" / "gates" / "memo--mama.json").unlink()
    with pytest.raises(ArtifactError, match="memo--mama.json"):
        Circuit.load(tmp_path / "f")


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("gates/memo--mama.json", "{}", "gates/memo--mama.json: cannot read gate memo -> mama: gate state lacks features"),
        ("gates/memo--mama.json", '{"features": ["a"], "mean": [], "scale": [], "coef": [], "intercept": 0}', "differ in length"),
        ("heldout.json", '{"n_calibration": 3, "texts": [], "preds": {}}', "heldout.json: cannot read the held-out cache: lacks costs"),
        ("report.json", "{bad", "report.json: cannot read the fit report"),
        ("report.json", "[1]", "report.json: the fit report is not a JSON object"),
    ],
)
def test_damaged_folder_files_are_artifact_errors_naming_the_file(fitted, tmp_path, file, content, message):
    fitted.save(tmp_path / "f")
    (tmp_path / "f" / file).write_text(content)
    with pytest.raises(ArtifactError, match=re.escape(message)):
        Circuit.load(tmp_path / "f")


def test_seqeval_and_fast_counts_agree():
    rng = np.random.default_rng(0)
    texts, preds, refs = [], [], []
    for _ in range(200):
        n = int(rng.integers(5, 60))
        texts.append("a" * n)

        def spans():
            out, pos = [], 0
            while pos < n - 2:
                s = int(rng.integers(pos, n - 1))
                e = int(rng.integers(s + 1, min(n, s + 6) + 1))
                out.append(Span(s, e, str(rng.choice(["A", "B"]))))
                pos = e
            return out[: int(rng.integers(0, 4))]

        refs.append(spans())
        preds.append(spans() if rng.random() < 0.5 else list(refs[-1]))
    assert seqeval_f1(texts, preds, refs) == pytest.approx(entity_f1(preds, refs))
    assert span_counts([Span(0, 1, "A")], [Span(0, 1, "A"), Span(2, 3, "B")]) == (1, 0, 1)


def test_tune_resets_thresholds_from_the_cache_without_running_models(fitted, tmp_path):
    strict = dict(fitted.thresholds)
    fitted.tune(0.8)
    loose = dict(fitted.thresholds)
    assert loose[("memo", "mama")] <= strict[("memo", "mama")]
    assert fitted.report_["tuning"]["mamabear_calls_avoided"] >= 0
    fitted.save(tmp_path / "f")
    loaded = Circuit.load(tmp_path / "f")
    loaded.tune(0.8)
    assert loaded.thresholds == pytest.approx(loose)


@pytest.mark.parametrize(("change", "where"), [({"confidence": 0.0}, "budget.confidence"), ({"min_entity_f1": 1.5}, "budget.min_entity_f1")])
def test_tune_checks_a_new_budget_before_changing_anything(fitted, change, where):
    before = fitted.budget, dict(fitted.thresholds)
    with pytest.raises(CircuitValidationError, match=re.escape(where)):
        fitted.tune(**change)
    assert (fitted.budget, fitted.thresholds) == before
    fitted.tune(confidence=0.8)
    assert fitted.budget.confidence == 0.8 and fitted.report_["tuned_on"]["source"] == "held-out tuning split"


def test_cli_fit_run_eval(tmp_path, capsys):
    import json

    from babybear.doors.cli import main
    from tests.conftest import FIXTURES

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(synthetic_texts(400)), encoding="utf-8")
    assert main(["fit", str(FIXTURES / "valid.yaml"), "--corpus", str(corpus), "--out", str(tmp_path / "fitted"), "--quiet"]) == 0
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": "a", "text": "yesterday Alice met Bob"}\nplain line with Carol\n{"id": "c", "text": 5}\n\n', encoding="utf-8")
    assert main(["run", str(tmp_path / "fitted"), "--input", str(inp), "--output", str(tmp_path / "out.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "2", "c", "4"]
    assert {(e["start"], e["end"], e["label"]) for e in rows[0]["entities"]} == {(10, 15, "ENT"), (20, 23, "ENT")}
    assert "not a string" in rows[2]["error"] and rows[2]["entities"] == []
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "fitted"), "--corpus", str(corpus), "--json", "--limit", "100"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"mamabear_calls_avoided", "entity_f1_vs_mamabear", "wall_time_ratio", "texts_per_node", "node_cost_seconds_per_text"} <= set(report)


def test_cli_eval_reads_rows_as_run_does(tmp_path, capsys):
    import json

    from babybear.doors.cli import main
    from tests.conftest import FIXTURES

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(synthetic_texts(300)), encoding="utf-8")
    assert main(["fit", str(FIXTURES / "valid.yaml"), "--corpus", str(corpus), "--out", str(tmp_path / "fitted"), "--quiet"]) == 0
    rows = tmp_path / "rows.txt"  # a form feed and a line separator inside lines, a JSONL row, a blank line
    rows.write_text('Alice\x0cmet Bob\nCarol\u2028Dan\n{"id": "x", "text": "yesterday Bob met Carol"}\n\n', encoding="utf-8")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "fitted"), "--corpus", str(rows), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["texts"] == 3  # the blank line has nothing to score
    rows.write_text('Alice met Bob\n{"text": 5}\n', encoding="utf-8")
    assert main(["eval", str(tmp_path / "fitted"), "--corpus", str(rows)]) == 2
    assert "rows.txt, line 2: field 'text' is missing or not a string" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    from babybear.doors.cli import main
    from tests.conftest import FIXTURES

    assert main(["fit", str(FIXTURES / "broken_many.yaml"), "--corpus", "x", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("babybear: error:") and "Traceback" not in err and "nodes.memo.params.c3" in err
    assert main(["run", str(tmp_path / "nothing")]) == 2
    assert "not a fitted circuit folder" in capsys.readouterr().err


def test_cli_run_names_a_file_it_cannot_open(fitted, tmp_path, capsys):
    from babybear.doors.cli import main

    folder = fitted.save(tmp_path / "fitted")
    assert main(["run", str(folder), "--input", str(tmp_path / "missing.txt")]) == 2
    assert capsys.readouterr().err == f"babybear: error: {tmp_path / 'missing.txt'}: No such file or directory\n"
    (tmp_path / "in.txt").write_text("Alice met Bob\n", encoding="utf-8")
    assert main(["run", str(folder), "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "no" / "out.jsonl")]) == 2
    assert capsys.readouterr().err == f"babybear: error: {tmp_path / 'no' / 'out.jsonl'}: No such file or directory\n"


class _Counting(Memorizer):
    calls = 0

    def predict_batch(self, texts):
        type(self).calls += len(texts)
        return super().predict_batch(texts)


def test_a_switched_off_node_is_not_run_and_passes_everyone_on(fitted, tmp_path):
    from babybear import register_node

    register_node("test.CountingMemorizer.v1")(_Counting)
    circuit = Circuit("three").add("first", Memorizer()).add("middle", _Counting()).add("mama", CapsMamabear())
    circuit.connect("first", "middle").connect("middle", "mama").fit(synthetic_texts(600), progress=False)
    circuit.slot("middle").enabled = False
    texts = synthetic_texts(100, seed=5)
    before = _Counting.calls
    answers = circuit(texts)
    assert _Counting.calls == before  # never run
    assert {a.node for a in answers} <= {"first", "mama"}
    sim = circuit.heldout_.run.with_topology(circuit.topology).evaluate(circuit.thresholds)
    assert sim["reach"]["middle"] == sim["reach"]["mama"]  # everyone who reached it went on
    circuit.save(tmp_path / "off")
    assert "enabled: false" in (tmp_path / "off" / "circuit.yaml").read_text()
    assert not Circuit.load(tmp_path / "off").slot("middle").enabled


def test_tune_switches_off_a_node_that_does_not_pay(fitted):
    from babybear import register_node

    register_node("test.CountingMemorizer.v1")(_Counting)
    circuit = Circuit("three", {"min_entity_f1": 0.95}).add("first", Memorizer()).add("middle", _Counting()).add("mama", CapsMamabear())
    circuit.connect("first", "middle").connect("middle", "mama").fit(synthetic_texts(800), progress=False)
    measured = dict(circuit.heldout_.run.costs)
    circuit.tune(costs={"middle": 1e3})  # the copy adds nothing and, priced so, costs more than the mamabear
    assert not circuit.slot("middle").enabled
    assert circuit.report_["optimizer"]["switched_off"] == ["middle"]
    assert circuit.report_["tuning"]["f1"] >= 0.95
    assert circuit.report_["cost_override"] == {"middle": 1e3}
    assert circuit.report_["costs_seconds_per_token"] == measured
    assert circuit.heldout_.run.costs == measured  # the measured costs are kept for the next tuning
    circuit.tune()
    assert circuit.slot("middle").enabled or circuit.report_["optimizer"]["switched_off"] == ["middle"]
    with pytest.raises(BabybearError, match="unknown node nope"):
        circuit.tune(costs={"nope": 1.0})
    with pytest.raises(BabybearError, match="middle must be a number >= 0"):
        circuit.tune(costs={"middle": -1.0})


def test_a_large_stream_gives_the_held_out_parts_at_most_max_heldout_texts_and_the_rest_to_the_babybears(toy_circuit):
    from babybear.warmup import split_sizes

    assert split_sizes(30_000, (0.6, 0.2, 0.2), 3000) == (24_000, 3000)  # tuning: the last 3,000
    assert split_sizes(10_000, (0.6, 0.2, 0.2), 3000) == (6000, 2000)  # the cap does not bind
    assert split_sizes(30_000, (0.6, 0.2, 0.2), None) == (18_000, 6000)
    toy_circuit.fit(synthetic_texts(600), max_heldout=50, progress=False)
    part = toy_circuit.report_["warm_up"]
    assert (part["calibration"], part["tuning"]) == (50, 50) and part["train"] == part["units"] - 100
    with pytest.raises(BabybearError, match="max_heldout must be at least 10"):
        toy_circuit.fit(synthetic_texts(600), max_heldout=5, progress=False)


def test_tune_keeps_the_nodes_it_is_told_off_and_prices_the_circuit_without_them(fitted):
    from babybear import register_node

    register_node("test.CountingMemorizer.v1")(_Counting)
    circuit = Circuit("three", {"min_entity_f1": 0.95}).add("first", Memorizer()).add("middle", _Counting()).add("mama", CapsMamabear())
    circuit.connect("first", "middle").connect("middle", "mama").fit(synthetic_texts(800), progress=False)
    circuit.tune(off=["first"])
    assert not circuit.slot("first").enabled and circuit.report_["kept_off"] == ["first"]
    assert "first" not in circuit.report_["optimizer"]["switch_off"]  # not tried again: it is off already
    sim = circuit.heldout_.tuning.with_topology(circuit.topology).evaluate(circuit.thresholds)
    assert sim["answered"]["first"] == 0.0 and sim["f1"] == circuit.report_["tuning"]["f1"]
    circuit.tune()  # off is per call: the next tuning may switch it back on
    assert circuit.report_["kept_off"] == []
    with pytest.raises(BabybearError, match="off: unknown node nope"):
        circuit.tune(off=["nope"])
    with pytest.raises(BabybearError, match="mama is the mamabear"):
        circuit.tune(off=["mama"])


def test_cli_eval_against_gold(tmp_path, capsys):
    import json

    from babybear.doors.cli import main
    from tests.conftest import FIXTURES

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(synthetic_texts(400)), encoding="utf-8")
    assert main(["fit", str(FIXTURES / "valid.yaml"), "--corpus", str(corpus), "--out", str(tmp_path / "fitted"), "--quiet"]) == 0
    gold = tmp_path / "gold.jsonl"
    rows = [{"text": "yesterday Alice met Bob", "entities": [{"start": 10, "end": 15, "label": "ENT"}]}, {"text": "", "entities": []}]
    gold.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "fitted"), "--gold", str(gold), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["entity_f1_vs_gold"]["mamabear"] == pytest.approx(2 / 3)  # the fake mamabear also tags Bob
    assert main(["eval", str(tmp_path / "fitted")]) == 2
    assert "either --corpus" in capsys.readouterr().err


@register_node("test.ShortNameGuesser.v1")
class ShortNameGuesser(Memorizer):
    """A second fake babybear with its own blind spot: every capitalised word of at most 5 letters, and numbers."""

    def predict_batch(self, texts):
        out = []
        for t in texts:
            caps = _caps(t)
            spans = [Span(s, e, "ENT") for s, e, w in caps if len(w) <= 5]
            spans += [Span(m.start(), m.end(), "NUM") for m in re.finditer(r"\d+", t)]
            out.append(Prediction(spans=spans, evidence={"n": float(len(caps))}))
        return out


def test_agreement_between_babybears_is_gate_evidence_and_routes_as_simulated(tmp_path):
    circuit = Circuit("agree", {"min_entity_f1": 0.95}).add("memo", Memorizer()).add("guess", ShortNameGuesser()).add("mama", CapsMamabear())
    circuit.connect("memo", "guess").connect("guess", "mama", agree_with="memo").fit(synthetic_texts(800), progress=False)
    gate = circuit.edge("guess", "mama").gate
    assert "agrees_with_memo" in gate.state_["features"]
    weight = gate.state_["coef"][gate.state_["features"].index("agrees_with_memo")]
    assert weight > 0  # agreeing with the memorizer makes the guesser more likely right
    assert "memo" not in circuit.report_["optimizer"].get("switched_off", [])  # what a gate compares with stays on
    texts = synthetic_texts(300, seed=3)
    routed = circuit.route(texts)
    topo = circuit.topology
    preds = {n: circuit.node(n).predict_batch(texts) for n in topo.order}
    scores = {e: circuit.edge(*e).gate.score(circuit.gate_evidence(*e, preds)) for e in topo.edges}
    reach = CachedRun(topo, preds, scores, {n: 1.0 for n in topo.order}, np.ones(len(texts))).reach(circuit.thresholds)
    for i in range(len(texts)):
        visited = [n for n in topo.order if reach[n][i]]
        assert visited[-1] == routed.exits[i]
        assert merge(visited, {v: preds[v][i] for v in visited}, topo.labels) == routed.spans[i]
    assert {"memo", "guess"} & set(routed.exits)  # babybears answer some sentences
    loaded = Circuit.load(circuit.save(tmp_path / "agree"))
    assert loaded.get_params()["guess->mama__agree_with"] == "memo"
    assert [a.spans for a in loaded(texts)] == routed.spans
    loaded.set_params(**{"guess->mama__agree_with": None}).fit_gates().tune()  # from the cache, no model runs
    assert "agrees_with_memo" not in loaded.edge("guess", "mama").gate.state_["features"]
    with pytest.raises(CircuitValidationError, match="not on every path"):
        loaded.set_params(**{"memo->guess__agree_with": "guess"})
    assert loaded.get_params()["memo->guess__agree_with"] is None  # a refused change is not kept


@pytest.mark.parametrize(("argv", "message"), [
    (["fit", "circuits", "--corpus", "x", "--out", "y"], "babybear: error: circuits is a directory, not a circuit file; its circuit files: news-early-exit.yaml, "),
    (["fit", "tests/fixtures/valid.yaml", "--corpus", "x", "--out", "y", "--budget", "1.5"], "babybear: error: --budget 1.5: must be in (0, 1], got 1.5\n"),
])
def test_cli_fit_names_a_directory_and_the_budget_flag(argv, message, capsys):
    from babybear.doors.cli import main

    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(message)
