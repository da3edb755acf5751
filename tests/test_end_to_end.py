"""The ready circuits on real models and real text: fit, route, save, reload in a fresh process."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from babybear import Circuit
from babybear.corpus import bbc_sentences
from babybear.metrics import entity_f1

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bbc():
    train, test = bbc_sentences()
    return train[:900], test[:200]


@pytest.fixture(scope="module")
def news(bbc, tmp_path_factory):
    circuit = Circuit.from_yaml("circuits/news.yaml")
    circuit.set_params(crf__max_iterations=50)
    circuit.fit(bbc[0], progress=False)
    path = circuit.save(tmp_path_factory.mktemp("news") / "fitted")
    return circuit, path


def test_news_circuit_fits_routes_and_keeps_its_budget_on_tuning(news):
    circuit, _ = news
    report = circuit.report_
    assert report["warm_up"]["train"] > 400
    assert report["babybear_f1_alone"]["crf"] > 0.6  # a CRF really learned from en_core_web_md's output
    assert report["tuning"]["f1"] >= circuit.budget.min_entity_f1
    for gate in report["gates"].values():
        assert gate["ece"] < 0.2 and gate["tuning"]["ece"] < 0.2  # on the rows it learned from, and on unseen ones
        assert gate["tuning"]["n"] == report["warm_up"]["tuning"]


def test_news_circuit_answers_unseen_text_in_order_against_the_real_mamabear(news, bbc):
    circuit, _ = news
    test = bbc[1]
    answers = circuit(test)
    assert [a.text for a in answers] == test
    mama = circuit.node("mamabear").predict_batch(test)
    by_mamabear = [a for a, m in zip(answers, mama) if a.node == "mamabear"]
    assert all(a.spans == m.spans for a, m in zip(answers, mama) if a.node == "mamabear") and by_mamabear
    assert entity_f1([a.spans for a in answers], [m.spans for m in mama]) > 0.9


def test_saved_news_circuit_reloads_in_a_fresh_process_with_identical_answers(news, bbc):
    circuit, path = news
    texts = bbc[1][:50]
    expected = [a.to_dict() for a in circuit(texts)]
    code = (
        "import json, sys; from babybear import Circuit;"
        f"c = Circuit.load({str(path)!r});"
        "texts = json.loads(sys.stdin.read());"
        "print(json.dumps([a.to_dict() for a in c(texts)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == expected


def _pii_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    first = ["Anna", "Ben", "Chloe", "Dmitri", "Emeka", "Fatima", "Gus", "Hana"]
    last = ["Smith", "Okafor", "Novak", "Garcia", "Tanaka", "Muller"]
    news = bbc_sentences()[0][:2000]
    out = []
    for i in range(n):
        f, l = rng.choice(first), rng.choice(last)
        kind = rng.random()
        if kind < 0.4:
            out.append(rng.choice(news))
        elif kind < 0.7:
            out.append(f"Please write to {f.lower()}.{l.lower()}{i}@example.com about order {i}.")
        else:
            out.append(f"Call {f} {l} on +44 20 7946 {1000 + i:04d} before Friday.")
    return out


def test_pii_circuit_on_the_real_onnx_model():
    circuit = Circuit.from_yaml("circuits/pii.yaml")
    circuit.set_params(crf__max_iterations=30)
    circuit.fit(_pii_texts(300), progress=False)
    texts = _pii_texts(60, seed=1)
    answers = circuit(texts)
    assert len(answers) == len(texts)
    mama = circuit.node("mamabear").predict_batch(texts)
    assert any(s.label == "EMAIL" for m in mama for s in m.spans)
    assert entity_f1([a.spans for a in answers], [m.spans for m in mama]) > 0.8


def test_bbc_corpus_is_read_as_utf8():
    train, test = bbc_sentences()
    sentences = train + test
    assert len(train) > 30_000 and len(test) > 7_000 and not set(train) & set(test)
    assert any("£" in s for s in sentences)
    assert not any("Â£" in s or "\ufffd" in s for s in sentences)  # Latin-1 mojibake or undecodable bytes


def test_news_circuit_routes_a_text_the_same_alone_and_in_batches_of_7_and_512(news, bbc):
    """The tuner sets thresholds one ulp above gate scores it cached, scored as one batch; a score that moved with
    the batch moved routing. The threshold here sits that way, at the median cached score."""
    import numpy as np

    _, path = news
    circuit = Circuit.load(path)
    edge = ("crf", "mamabear")
    circuit.set_thresholds({edge: float(np.nextafter(np.median(circuit.heldout_.run.scores[edge]), 1.0))})
    circuit.slot("crf").enabled = True
    texts = [t for t in bbc[1] if t.strip()][:300]

    def routed(size: int) -> list[tuple]:
        runs = [circuit.route(texts[i : i + size], batch_size=size) for i in range(0, len(texts), size)]
        return [row for r in runs for row in zip(r.exits, r.spans, r.confidences)]

    alone = routed(1)
    assert {"crf", "mamabear"} <= {node for node, _, _ in alone}  # both sides of the CRF's gate are exercised
    for size in (7, 512):
        assert routed(size) == alone, f"batches of {size} route differently from texts alone"
