"""Early exits learn during the ordinary warm-up from the states the mamabear's own pass kept (no extra pass), on a
tiny 4-layer BERT built here: the mamabear runs its forward pass once per warm-up text, the heads equal heads
trained on a separate pass over the same texts, and the circuit saves and loads them."""

from __future__ import annotations

import numpy as np
import pytest

from babybear import BabybearError, Circuit
from babybear.nodes import _layers
from babybear.nodes.early_exit import EarlyExit, collect
from tests.nodes.test_early_exit import sentences
from tests.circuit.test_early_exit_circuit import exit_circuit

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def warmed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A circuit exit1 -> exit2 -> mamabear warmed up on 300 texts, with every full mamabear forward pass counted
    (texts through the model's own forward, or through the split pass's head), and the texts each exit fit on."""
    circuit = exit_circuit(tmp_path_factory.mktemp("tiny-bert-4"))
    circuit.warm_up()
    mama = circuit.node("mamabear")._model
    full: list[int] = []
    fitted_on: dict[str, list[str]] = {}
    patch = pytest.MonkeyPatch()
    forward, head, fit = mama.forward, _layers.head, EarlyExit.fit

    def counted_forward(*args, **kwargs):
        full.append(len(kwargs.get("input_ids", args[0] if args else None)))
        return forward(*args, **kwargs)

    def counted_head(model, hidden):
        full.append(hidden.shape[0])
        return head(model, hidden)

    def recorded_fit(self, texts, reference, kept=None):
        assert kept is not None, "the warm-up handed the exit no kept states"
        fitted_on[self.params.layer] = list(texts)
        return fit(self, texts, reference, kept)

    def no_collect(self, texts):
        raise AssertionError("an exit ran a mamabear pass of its own during the warm-up")

    patch.setattr(mama, "forward", counted_forward)
    patch.setattr(_layers, "head", counted_head)
    patch.setattr(EarlyExit, "fit", recorded_fit)
    patch.setattr(EarlyExit, "collect", no_collect)
    texts = sentences(300, seed=3)
    try:
        circuit.fit(texts, progress=False)
    finally:
        patch.undo()
    return {"circuit": circuit, "full": full, "texts": texts, "fitted_on": fitted_on}


def test_the_mamabear_runs_once_per_warm_up_text(warmed):
    units = warmed["circuit"].report_["warm_up"]["units"]
    assert units == len(set(warmed["texts"]))
    assert sum(warmed["full"]) == units  # one window each: one full forward pass per text, train share included
    train = warmed["circuit"].report_["warm_up"]["train"]
    assert len(warmed["fitted_on"][1]) == len(warmed["fitted_on"][2]) == train > 0


def test_heads_from_kept_states_equal_heads_from_a_separate_pass(warmed):
    circuit = warmed["circuit"]
    mama = circuit.node("mamabear")
    p = mama.params
    for name, k in (("exit1", 1), ("exit2", 2)):
        texts = warmed["fitted_on"][k]
        words = collect(mama._model, mama._tokenizer, texts, [k], max_length=p.max_length, stride=p.stride, batch_size=p.batch_size, hidden_dtype=np.float16)
        alone = EarlyExit(**circuit.node(name).params.model_dump()).attach_node(mama).fit_states(words)
        ours = circuit.node(name)
        for key, value in alone.head_.state_dict().items():
            torch.testing.assert_close(ours.head_.state_dict()[key], value, rtol=1e-4, atol=1e-5)
        assert ours.temperature_ == pytest.approx(alone.temperature_, rel=1e-4)
        assert ours.report_["n_train_texts"] + ours.report_["n_heldout_texts"] == len(texts)
        # float16 states train nearly the head float32 states do: the same answers on new texts
        full = EarlyExit(**ours.params.model_dump()).attach_node(mama).fit(texts, mama.predict_batch(texts))
        new = sentences(80, seed=11)
        same = np.mean([a.spans == b.spans for a, b in zip(ours.predict_batch(new), full.predict_batch(new))])
        assert same > 0.9, same


def test_the_kept_pass_gives_the_mamabears_own_answers(warmed):
    mama = warmed["circuit"].node("mamabear")
    texts = sentences(40, seed=12)
    mama.keep({"exit1": {"layers": [1]}, "exit2": {"layers": [2, 1]}})
    try:
        preds, states = mama.predict_with_state(texts)
    finally:
        mama.keep({})
    assert preds == mama.predict_batch(texts)
    assert {tuple(sorted(s)) for s in states} == {("exit1", "exit2")}
    assert set(states[0]["exit1"].hidden) == {1} and set(states[0]["exit2"].hidden) == {1, 2}
    assert states[0]["exit1"].hidden[1].dtype == np.float16 and states[0]["exit1"].logits.dtype == np.float32
    assert mama.predict_with_state(texts[:2])[1] == [None, None]  # keeping stopped
    with pytest.raises(BabybearError, match="ask {'layers'"):
        mama.keep({"exit1": [1]})


def test_a_saved_circuit_keeps_the_heads_learned_in_the_warm_up(warmed, tmp_path):
    circuit = warmed["circuit"]
    loaded = Circuit.load(circuit.save(tmp_path / "exits"))
    for name in ("exit1", "exit2"):
        for key, value in circuit.node(name).head_.state_dict().items():
            assert torch.equal(loaded.node(name).head_.state_dict()[key], value)
    texts = sentences(30, seed=13)
    assert [(a.node, a.spans) for a in loaded(texts)] == [(a.node, a.spans) for a in circuit(texts)]


def test_a_tap_on_a_node_other_than_the_mamabear_is_a_clear_error():
    from tests.conftest import CapsMamabear

    class Tapping(EarlyExit):
        def taps(self):
            return {"other": {"layers": [1]}}

    circuit = Circuit("bad").add("exit", Tapping(mamabear="mama", layer=1)).add("mama", CapsMamabear()).connect("exit", "mama")
    from babybear.warmup import _taps

    with pytest.raises(BabybearError, match="asks to learn from 'other'"):
        _taps(circuit)
    assert CapsMamabear().predict_with_state(["a"])[1] == [None]
    with pytest.raises(BabybearError, match="can keep nothing"):
        CapsMamabear().keep({"exit": {"layers": [1]}})


def test_the_exit_rules_run_on_a_fitted_circuits_tuning_rows(warmed):
    from babybear import Budget
    from babybear.tuning.exit_rules import compare, exit_edges

    from dataclasses import replace

    # priced as the layers they run (measured costs of a tiny model are mostly overhead, and move with the load):
    # sending everyone through both exits to the mamabear then costs exactly the mamabear alone
    run = replace(warmed["circuit"].heldout_.tuning, costs={"exit1": 0.25, "exit2": 0.5, "mamabear": 1.0})
    assert exit_edges(run) == [("exit1", "exit2"), ("exit2", "mamabear")]  # found from the circuit's covers
    out = compare(run, Budget(min_entity_f1=0.9, confidence=0.9))
    shared = out["shared_threshold"]
    assert shared.thresholds[("exit1", "exit2")] == shared.thresholds[("exit2", "mamabear")] == shared.setting["threshold"]
    assert out["patience"].setting["patience"] in (1, None)
    for rule in out.values():
        assert 0 < rule.cost_fraction <= 1 + 1e-9
        assert rule.f1 >= 0.9  # the chosen setting meets the budget on these rows (or is the safe one, F1 1)
