"""The scheduler: micro-batches, order and completeness under faults, OOM halving, GPU overlap, streaming memory."""

from __future__ import annotations

import logging
import random
import os
import threading

import pytest

import numpy as np

from babybear import Circuit, Node, Prediction, Span, register_node
from babybear.node import Gate
from babybear.errors import BabybearError
from babybear.scheduler import Scheduler, is_out_of_memory, micro_batches

from tests.conftest import CapsMamabear, FragileMemorizer, Memorizer, synthetic_texts


class FakeOOM(RuntimeError):
    """What torch / onnxruntime raise when the GPU is full (matched by message)."""


@register_node("test.Flaky.v1")
class Flaky(CapsMamabear):
    """A mamabear that fails on texts containing ``poison``, and runs out of memory above ``max_batch`` texts."""

    def __init__(self, poison: str = "POISON", max_batch: int | None = None, gpu: bool = False) -> None:
        super().__init__()
        self.poison, self.max_batch, self.gpu = poison, max_batch, gpu
        self.sizes: list[int] = []
        self.threads: set[str] = set()

    @property
    def device(self) -> str:
        return "gpu" if self.gpu else "cpu"

    def predict_batch(self, texts):
        self.sizes.append(len(texts))
        self.threads.add(threading.current_thread().name)
        if self.max_batch is not None and len(texts) > self.max_batch:
            raise FakeOOM("CUDA out of memory. Tried to allocate 2.00 GiB")
        if any(self.poison in t for t in texts):
            raise ValueError("cannot parse this text")
        return super().predict_batch(texts)


def fitted(mamabear: Node, babybear: Node | None = None) -> Circuit:
    circuit = Circuit("toy", {"min_entity_f1": 0.99}).add("memo", babybear or Memorizer()).add("mama", mamabear)
    circuit.connect("memo", "mama")
    # Priced at 0, the babybear is never switched off by tuning on noisy measured timings: these tests need it run.
    return circuit.fit(synthetic_texts(300), progress=False).tune(costs={"memo": 0.0})


class Unsure(Gate):
    """A gate that sends every text on."""

    def fit(self, evidence, agrees):
        return self

    def score(self, evidence):
        return np.zeros(len(evidence))

    def to_dict(self):
        return {}

    def load_dict(self, state):
        return self


def to_mamabear(mamabear: Node) -> Circuit:
    """An unfitted circuit whose babybear passes every text on to ``mamabear``."""
    return Circuit("toy").add("memo", Memorizer()).add("mama", mamabear).connect("memo", "mama", Unsure(), threshold=0.5)


def test_micro_batches_bucket_by_length_within_budgets():
    lengths = [5, 1, 40, 3, 3, 100, 2, 7]
    batches = micro_batches(lengths, max_texts=3, max_tokens=20)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 20
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)  # shortest first: each batch holds texts of similar length


def test_out_of_memory_is_recognised():
    assert is_out_of_memory(FakeOOM("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert is_out_of_memory(RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer"))
    assert not is_out_of_memory(ValueError("bad input"))


def test_order_and_completeness_under_random_batches_and_failures():
    rng = random.Random(7)
    texts = synthetic_texts(400, seed=3)
    bad = set(rng.sample(range(len(texts)), 9))
    texts = [t + " POISON" if i in bad else t for i, t in enumerate(texts)]
    texts[5] = ""  # blank: answered without a model
    circuit = fitted(Flaky())
    expected = CapsMamabear().predict_batch(texts)
    ids = [f"doc-{i}" for i in range(len(texts))]
    for batch_size in (1, 2, 3, 17, 64, 512):
        answers = circuit(texts, ids=ids, batch_size=batch_size)
        assert [a.id for a in answers] == ids
        assert [a.text for a in answers] == texts
        for i, a in enumerate(answers):
            if a.error:
                assert i in bad and a.spans == () and a.node == "mama"
                assert f"node 'mama' failed on text 'doc-{i}'" in a.error
            elif i == 5:
                assert a.spans == () and a.node is None
            elif i in bad:
                assert a.node == "memo"  # the babybear kept it: the mamabear never saw it
            elif a.node == "mama":
                assert a.spans == expected[i].spans
        assert any(a.error for a in answers)


def test_a_text_a_babybear_fails_on_goes_on_to_the_mamabear(caplog):
    circuit = fitted(CapsMamabear(), FragileMemorizer())
    texts = synthetic_texts(50, seed=1)
    texts[17] += " BREAK-BABY"
    with caplog.at_level(logging.WARNING, logger="babybear"):
        answers = circuit(texts, ids=[f"t{i}" for i in range(50)], batch_size=16)
    assert answers[17].error is None and answers[17].node == "mama"
    assert answers[17].spans == CapsMamabear().predict_batch([texts[17]])[0].spans != ()
    assert "node 'memo' failed on text 't17'" in caplog.text
    assert all(a.error is None and a.node in ("memo", "mama") for a in answers)


def test_stream_errors_name_a_text_by_its_position_in_the_whole_input():
    from tests.conftest import FragileMamabear

    circuit = fitted(FragileMamabear(), Memorizer())
    circuit.set_thresholds({("memo", "mama"): 1.0})  # everything reaches the mamabear
    texts = ["Alice met Bob", "Carol", "Dan met Eve", "BREAK-MAMA Zed met Quill"]
    answers = list(circuit.stream(texts, chunk=2))
    assert [a.text for a in answers] == texts and answers[3].id is None
    assert "failed on text '3'" in answers[3].error


def test_one_string_in_place_of_a_list_of_texts_is_refused():
    circuit = fitted(CapsMamabear(), Memorizer())
    for call in (circuit, lambda t: list(circuit.stream(t)), circuit.route):
        with pytest.raises(BabybearError, match="got one str: wrap it"):
            call("Tony Blair")


def test_a_gate_comparing_with_a_babybear_that_failed_sends_the_text_on():
    circuit = Circuit("toy", {"min_entity_f1": 0.99}).add("frail", FragileMemorizer()).add("memo", Memorizer())
    circuit.add("mama", CapsMamabear()).connect("frail", "memo").connect("memo", "mama", agree_with="frail")
    circuit.fit(synthetic_texts(300), progress=False).tune(costs={"frail": 0.0, "memo": 0.0})  # both kept on
    assert circuit.topology.disabled == frozenset()
    circuit.set_thresholds({("frail", "memo"): 1.0, ("memo", "mama"): 0.0})  # only a failure reaches the mamabear
    texts = ["Alice met Bob BREAK-BABY", "Alice met Bob"]
    answers = circuit(texts)
    assert [a.node for a in answers] == ["mama", "memo"]
    assert answers[0].spans == CapsMamabear().predict_batch(texts[:1])[0].spans


def test_out_of_memory_halves_the_batch_and_keeps_it_small():
    mama = Flaky(max_batch=8)
    circuit = to_mamabear(mama)
    circuit.node("memo").known_ = set()
    texts = synthetic_texts(100, seed=2)
    answers = circuit(texts, batch_size=64)
    assert all(a.error is None for a in answers)
    assert [a.spans for a in answers] == [p.spans for p in CapsMamabear().predict_batch(texts)]
    first_ok = next(k for k, s in enumerate(mama.sizes) if s <= 8)
    assert mama.sizes[:first_ok] == [64, 32, 16]  # halved until it fits...
    assert max(mama.sizes[first_ok:]) <= 8  # ...and later batches start at the size that fitted


def test_a_text_that_alone_runs_out_of_memory_is_an_error_not_a_crash():
    mama = Flaky(max_batch=0)
    circuit = to_mamabear(mama)
    circuit.node("memo").known_ = set()
    answers = circuit(["Alice met Bob", "Carol met Dave"], ids=["a", "b"])
    assert all("out of memory" in a.error for a in answers)


def test_configuration_errors_are_raised_not_bisected():
    class Broken(CapsMamabear):
        def predict_batch(self, texts):
            raise BabybearError("model not installed")

    circuit = to_mamabear(Broken())
    circuit.node("memo").known_ = set()
    with pytest.raises(BabybearError, match="not installed"):
        circuit(["Alice met Bob"])


def test_gpu_nodes_run_on_the_worker_thread_and_answers_match():
    cpu = fitted(Flaky())
    gpu = fitted(Flaky(gpu=True))
    texts = synthetic_texts(500, seed=4)
    gpu.node("mama").threads.clear()  # fit called it directly
    cpu.node("mama").threads.clear()
    assert [a.spans for a in gpu(texts)] == [a.spans for a in cpu(texts)]
    assert [a.spans for a in gpu.stream(iter(texts), chunk=37)] == [a.spans for a in cpu(texts)]
    assert {t.split("_")[0] for t in gpu.node("mama").threads} == {"babybear-gpu"}
    assert cpu.node("mama").threads == {threading.main_thread().name}


def test_batch_size_one_and_512_give_the_same_answers():
    circuit = fitted(CapsMamabear())
    texts = synthetic_texts(600, seed=5) + ["x" * 5000 + " Alice " + "y" * 3000]  # a long text is chunked
    one, big = circuit(texts, batch_size=1), circuit(texts, batch_size=512)
    assert [(a.spans, a.node, a.confidence) for a in one] == [(a.spans, a.node, a.confidence) for a in big]


@register_node("test.Nothing.v1")
class Nothing(Node):
    """The cheapest mamabear, on the "GPU": no entities anywhere."""

    role = "mamabear"
    device = "gpu"

    def predict_batch(self, texts):
        return [Prediction() for _ in texts]


def rss() -> int:
    """This process's resident memory in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
def test_streaming_100k_texts_runs_in_bounded_memory():
    circuit = Circuit("nothing").add("mama", Nothing())
    texts = (f"text number {i}" for i in range(100_000))
    n, early = 0, 0
    for a in circuit.stream(texts, (f"id{i}" for i in range(100_000)), chunk=1_000):
        assert a.id == f"id{n}"
        n += 1
        if n == 10_000:
            early = rss()
    assert n == 100_000
    # 90,000 more answers kept anywhere would take ~40 MB; a flat stream stays within allocator noise
    assert rss() - early < 12 * 2**20


def test_scheduler_rejects_bad_settings(toy_circuit):
    with pytest.raises(BabybearError, match="batch_size"):
        Scheduler(toy_circuit, batch_size=0)


@pytest.mark.slow
def test_spacy_md_mamabear_is_batch_size_invariant():
    from babybear.nodes.mamabear_spacy import SpacyNER

    try:
        node = SpacyNER(model="en_core_web_md")
        node.warm_up()
    except BabybearError as err:
        pytest.skip(str(err))
    circuit = Circuit("md").add("mama", node)
    texts = [
        "Tony Blair met Gordon Brown in London on Tuesday.",
        "Shares in Vodafone rose 3% to 120p after the BBC reported the deal.",
        "",
        "The Football Association fined Arsenal £175,000 last March.",
        "It was a quiet day.",
    ] * 8
    with Scheduler(circuit, batch_size=1) as one, Scheduler(circuit, batch_size=512) as big:
        small, large = one.predict("mama", texts), big.predict("mama", texts)
    assert [p.spans for p in small.preds] == [p.spans for p in large.preds]
    assert any(p.spans for p in small.preds) and not small.errors
    assert small.preds[0].spans == (Span(0, 10, "PERSON"), Span(15, 27, "PERSON"), Span(31, 37, "GPE"), Span(41, 48, "DATE"))
    assert isinstance(small.preds[2], Prediction)
