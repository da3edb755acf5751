"""Shared fixtures: tiny fake nodes for fast engine tests; for tests of real models, odd inputs, the spaCy md
mamabear and real BBC sentences labelled by it."""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path
from typing import Any, TypeVar

import pytest

from babybear import Node, Params, Prediction, Span, register_node

FIXTURES = Path(__file__).parent / "fixtures"
WORD = re.compile(r"\w+")


def _caps(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), m.group()) for m in WORD.finditer(text) if m.start() > 0 and m.group()[0].isupper()]


@register_node("test.CapsMamabear.v1")
class CapsMamabear(Node):
    """Fake mamabear: every capitalised word after the first character is an entity; digits are NUM.

    Like a real one it is the expensive node (0.2 ms a text), so tuning has something to save.
    """

    role = "mamabear"

    def predict_batch(self, texts):
        time.sleep(2e-4 * len(texts))
        out = []
        for t in texts:
            spans = [Span(s, e, "ENT") for s, e, _ in _caps(t)]
            spans += [Span(m.start(), m.end(), "NUM") for m in re.finditer(r"\d+", t)]
            out.append(Prediction(spans=spans, evidence={"n": float(len(spans))}))
        return out


@register_node("test.Memorizer.v1")
class Memorizer(Node):
    """Fake babybear: tags numbers, and the capitalised words it saw tagged in warm-up; knows what it does not know."""

    class Params(Params):
        min_count: int = 1

    def __init__(self, **params):
        super().__init__(**params)
        self.known_: set[str] | None = None

    def fit(self, texts, reference):
        self.known_ = {t[s.start : s.end] for t, r in zip(texts, reference) for s in r.spans if s.label == "ENT"}
        return self

    def predict_batch(self, texts):
        out = []
        for t in texts:
            caps = _caps(t)
            known = [(s, e) for s, e, w in caps if w in self.known_]
            spans = [Span(s, e, "ENT") for s, e in known] + [Span(m.start(), m.end(), "NUM") for m in re.finditer(r"\d+", t)]
            out.append(Prediction(spans=spans, evidence={"unknown": float(len(caps) - len(known)), "n": float(len(caps))}))
        return out

    def to_disk(self, path):
        (path / "known.json").write_text(json.dumps(sorted(self.known_)))

    def from_disk(self, path):
        self.known_ = set(json.loads((path / "known.json").read_text()))
        return self


NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory", "Oscar"]
RARE = ["Zebulon", "Xanthe", "Quillon", "Yvaine", "Wystan", "Ulrika", "Thaddeus", "Seraphina"]


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    """Sentences with common names (learnable), rare names (not) and no names at all."""
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.3:
            out.append(f"the weather was fine on day {i} of the trip")
        elif kind < 0.8:
            out.append(f"yesterday {rng.choice(NAMES)} met {rng.choice(NAMES)} near the river, story {i}")
        else:
            out.append(f"later {rng.choice(RARE)}{i} spoke with {rng.choice(NAMES)} at home")
    return out


@pytest.fixture
def toy_circuit():
    from babybear import Circuit

    return Circuit("toy", {"min_entity_f1": 0.99}).add("memo", Memorizer()).add("mama", CapsMamabear()).connect("memo", "mama")


# -- real models ----------------------------------------------------------------------------------------------
from babybear.testing import ODD_TEXTS  # noqa: E402  (the conformance battery's odd inputs)

N = TypeVar("N", bound=Node)


def variant(node: N, **changes: Any) -> N:
    """The same loaded model with other parameters (loading takes seconds)."""
    other = copy.copy(node)
    other.params = node.params.model_copy(update=changes)
    return other


@pytest.fixture(scope="session")
def spacy_md() -> Node:
    """The spaCy en_core_web_md mamabear, loaded once per test session (skips where it is not installed)."""
    from babybear.errors import BabybearError
    from babybear.nodes.mamabear_spacy import SpacyNER

    pytest.importorskip("spacy")
    node = SpacyNER(model="en_core_web_md")
    try:
        node.warm_up()
    except BabybearError as missing:
        pytest.skip(str(missing))
    return node


Labelled = tuple[list[str], list[Prediction], list[str], list[Prediction]]
SLOW_FIXTURES = {"labelled_bbc"}  # spaCy md over 800 sentences: the tests that use it are slow


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a slow fixture ``slow``, so ``-m "not slow"`` is the fast tier."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def labelled_bbc(spacy_md: Node) -> Labelled:
    """600 real BBC sentences spread over all topics and 200 from held-out articles, with the mamabear's
    answers: (train, train_ref, test, test_ref)."""
    from babybear.corpus import bbc_sentences

    train, test = bbc_sentences()
    train, test = train[:: len(train) // 600][:600], test[:: len(test) // 200][:200]
    return train, spacy_md.predict_batch(train), test, spacy_md.predict_batch(test)


@register_node("test.FragileMemorizer.v1")
class FragileMemorizer(Memorizer):
    """A Memorizer that fails on any text containing BREAK-BABY (for fault-handling tests)."""

    def predict_batch(self, texts):
        if any("BREAK-BABY" in t for t in texts):
            raise ValueError("cannot read this text")
        return super().predict_batch(texts)


@register_node("test.FragileMamabear.v1")
class FragileMamabear(CapsMamabear):
    """A CapsMamabear that fails on any text containing BREAK-MAMA."""

    def predict_batch(self, texts):
        if any("BREAK-MAMA" in t for t in texts):
            raise ValueError("the mamabear choked")
        return super().predict_batch(texts)
