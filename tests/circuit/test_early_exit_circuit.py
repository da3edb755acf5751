"""Early exits in a circuit, on a tiny BERT built here: exit@1 -> exit@2 -> the 4-layer mamabear. Routing hands
each text's layer state on, so nothing is computed twice; live and simulated routing agree text for text; the
simulator prices a resumed text at the layers left; the circuit saves and loads with its heads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from babybear import Circuit
from babybear.heldout import Heldout
from babybear.nodes import _layers
from babybear.nodes.early_exit import EarlyExit
from babybear.nodes.mamabear_hf import HFTokenClassifier
from tests.nodes.test_early_exit import ID2LABEL, sentences, tiny_model, tiny_tokenizer

torch = pytest.importorskip("torch")
L = 4


def exit_circuit(folder: Path) -> Circuit:
    """exit@1 -> exit@2 -> a tiny 4-layer BERT mamabear saved in ``folder`` (not fitted)."""
    torch.manual_seed(0)
    model = tiny_model("bert")
    big = tiny_model("bert").__class__(model.config.__class__(**{**model.config.to_dict(), "num_hidden_layers": L}))
    with torch.no_grad():
        big.classifier.weight.mul_(20)
    big.save_pretrained(folder)
    tiny_tokenizer(folder).save_pretrained(folder)
    return (
        Circuit("exits", {"min_entity_f1": 0.9})
        .add("exit1", EarlyExit(mamabear="mamabear", layer=1, epochs=5))
        .add("exit2", EarlyExit(mamabear="mamabear", layer=2, epochs=5))
        .add("mamabear", HFTokenClassifier(model=str(folder), device="cpu", dtype="float32", batch_size=16))
        .connect("exit1", "exit2")
        .connect("exit2", "mamabear")
    )


@pytest.fixture(scope="module")
def circuit(tmp_path_factory: pytest.TempPathFactory) -> Circuit:
    built = exit_circuit(tmp_path_factory.mktemp("tiny-bert"))
    built.fit(sentences(400, seed=3), progress=False)
    # thresholds that send some texts on from each exit, whatever the tiny model's gates learned
    scores = built.heldout_.run.scores
    built.set_thresholds({e: float(np.quantile(scores[e], 0.5)) for e in scores})
    for name in built.graph:
        built.slot(name).enabled = True
    return built


def test_an_exit_covers_its_layers_of_the_mamabear_and_of_a_deeper_exit(circuit):
    assert circuit.covers() == {("exit1", "mamabear"): 1 / L, ("exit2", "mamabear"): 2 / L, ("exit1", "exit2"): 1 / 2}


def test_nothing_is_computed_twice(circuit, monkeypatch):
    texts = sentences(60, seed=7)
    layers_run: list[int] = []
    real = _layers.run_layers

    def counted(model, hidden, mask, start, stop):
        layers_run.append((stop - start) * hidden.shape[0])  # layer passes, times the windows in the batch
        return real(model, hidden, mask, start, stop)

    monkeypatch.setattr(_layers, "run_layers", counted)
    routed = circuit.route(texts, batch_size=8)
    assert len(routed.exits) == len(texts) and {"exit1", "mamabear"} <= set(routed.exits)
    assert 0 < routed.stats["exit2"]["texts"] < len(texts)  # the middle of the chain continued from exit1's states
    depth = {"exit1": 1, "exit2": 2, "mamabear": L}
    assert sum(layers_run) == sum(depth[e] for e in routed.exits)  # each text ran each layer once, up to where it left


def test_resumed_texts_get_the_mamabears_own_answers_in_input_order(circuit):
    texts = sentences(60, seed=8)
    routed = circuit.route(texts, batch_size=8)
    alone = circuit.node("mamabear").predict_batch(texts)
    for i, exit_ in enumerate(routed.exits):
        if exit_ == "mamabear":
            assert routed.spans[i] == alone[i].spans, f"text {i}"


def test_live_and_simulated_routing_agree_and_the_simulator_prices_layers_left(circuit):
    texts = sentences(80, seed=9)
    routed = circuit.route(texts, batch_size=8)
    preds = {name: circuit.node(name).predict_batch(texts) for name in circuit.graph}
    costs = {"exit1": 1.0, "exit2": 2.0, "mamabear": 4.0}  # one unit per layer
    run = Heldout.build(texts, preds, costs, 0, circuit).rescore(circuit).run
    reach = run.reach(circuit.thresholds)
    simulated = [circuit.topology.visited(reach, i)[-1] for i in range(len(texts))]
    assert simulated == routed.exits
    depth = {"exit1": 1, "exit2": 2, "mamabear": 4}
    expected = sum(depth[e] * t for e, t in zip(routed.exits, run.tokens)) / run.tokens.sum()
    assert run.evaluate(circuit.thresholds)["cost_per_token"] == pytest.approx(expected)


def test_a_saved_circuit_with_exits_loads_and_answers_the_same(circuit, tmp_path):
    texts = sentences(30, seed=10)
    before = circuit(texts)
    loaded = Circuit.load(circuit.save(tmp_path / "exits"))
    assert [(a.node, a.spans) for a in loaded(texts)] == [(a.node, a.spans) for a in before]


def test_an_exit_on_a_mamabear_that_is_not_an_hf_model_is_a_clear_error():
    from tests.conftest import CapsMamabear

    circuit = Circuit("bad").add("exit", EarlyExit(mamabear="mama", layer=1)).add("mama", CapsMamabear()).connect("exit", "mama")
    with pytest.raises(Exception, match="an exit needs a PyTorch HF token classifier"):
        circuit.warm_up()


def test_bench_times_the_hf_mamabear_through_transformers_pipeline_beside_the_scheduler_and_the_circuit(circuit, tmp_path):
    import json

    from babybear.doors.bench import main

    circuit.save(tmp_path / "fitted")
    texts = sentences(40, seed=11)
    (tmp_path / "test.txt").write_text("\n".join(texts), encoding="utf-8")
    out = tmp_path / "bench.json"
    assert main([str(tmp_path / "fitted"), "--corpus", str(tmp_path / "test.txt"), "--limit", "40", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["mamabear"].startswith("HFTokenClassifier(") and report["texts"] == 40
    modes = report["modes"]
    assert modes["scheduler"]["entity_f1_vs_mamabear"] == 1.0 and modes["naive"]["texts_per_second"] > 0
    answered = modes["circuit"]["texts_answered_per_node"]
    assert sum(answered.values()) == 40
    to_mama = [t for t, a in zip(texts, circuit(texts)) if a.node == "mamabear"]
    assert modes["circuit"]["mamabear_tokens_avoided"] == pytest.approx(1 - sum(len(t.split()) for t in to_mama) / sum(len(t.split()) for t in texts))
