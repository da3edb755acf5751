"""The conformance battery every node type passes, built-in or third-party (as scikit-learn's ``check_estimator``).

A node author runs it in their own tests::

    from babybear.testing import check_node
    check_node(my_fitted_node, some_texts, tmp_path)

or one test per check, so a failure names the check::

    @pytest.mark.parametrize("check", NODE_CHECKS, ids=lambda c: c.__name__)
    def test_my_node(check, tmp_path):
        check(my_fitted_node, some_texts, tmp_path)

Each check takes a node ready to predict (fitted, for a babybear), a few ordinary texts of its domain and an
empty folder, and raises ``AssertionError`` saying what is wrong. A node that works on another node's model (an
early exit on its mamabear) also takes ``peers``, the nodes it is bound to (:meth:`Node.bind`), by name.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pydantic

from .node import Node
from .types import Prediction

ODD_TEXTS = [
    "",
    "   \n\t ",
    "Gordon Brown met Tony Blair in London. " * 2600,  # ~100,000 characters of sentences
    "supercalifragilistic" * 5_000,  # one 100,000-character word
    "Control\x00chars\x07in\x1bthe\x7fmiddle of Paris",
    "\x00\x07\x1b[0m\u200b\x7f",  # nothing but control and zero-width characters
    "Emoji 👍🏽 and ❤️ next to Microsoft 🚀",
    "😀🇬🇧👩‍👩‍👧 hi 😀",
    "Mixed scripts: 東京 Tokyo, Москва Moscow, हिन्दी, العربية, café, naïve",
    "A lone \ud800 surrogate half beside Berlin",
]
"""Inputs every node must answer, one prediction each, in order: empty, blank, long, control characters, emoji,
mixed scripts, a lone surrogate (which UTF-8 cannot encode)."""

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pt", ".pth", ".ckpt")

Check = Callable[..., None]  # (node, texts, folder, peers=None) -> None


def _assert_valid(texts: Sequence[str], preds: Sequence[Prediction], where: str) -> None:
    assert len(preds) == len(texts), f"{where}: {len(preds)} predictions for {len(texts)} texts"
    for i, (text, pred) in enumerate(zip(texts, preds)):
        assert isinstance(pred, Prediction), f"{where}: text {i} got {type(pred).__name__}, not a Prediction"
        for span in pred.spans:
            assert 0 <= span.start < span.end <= len(text), f"{where}: text {i} has span {tuple(span)} outside 0..{len(text)}"
            assert isinstance(span.label, str) and span.label, f"{where}: text {i} has a span without a label"
        for key, value in pred.evidence.items():
            assert isinstance(value, (int, float)) and math.isfinite(value), f"{where}: text {i} evidence {key}={value!r} is not a finite number"


def _assert_same(a: Sequence[Prediction], b: Sequence[Prediction], where: str) -> None:
    """Same spans; evidence equal up to float rounding (a transformer's padded batch multiplies other shapes)."""
    for i, (p, q) in enumerate(zip(a, b, strict=True)):
        assert p.spans == q.spans, f"{where}: text {i}: spans {list(p.spans)} != {list(q.spans)}"
        assert p.evidence.keys() == q.evidence.keys(), f"{where}: text {i}: evidence keys differ"
        for key in p.evidence:
            assert math.isclose(p.evidence[key], q.evidence[key], rel_tol=1e-5, abs_tol=1e-6), (
                f"{where}: text {i}: evidence {key} {p.evidence[key]} != {q.evidence[key]}"
            )


def check_params_are_validated(node: Node, texts: Sequence[str], folder: Path, peers: Mapping[str, Node] | None = None) -> None:
    """Unknown parameter names are refused, and the node's own params build an equal node without loading."""
    try:
        type(node)(**node.get_params(), not_a_parameter_of_any_node=1)
    except pydantic.ValidationError:
        pass
    else:
        raise AssertionError(f"{type(node).__name__} accepted an unknown parameter: its Params must forbid extras")
    assert type(node)(**node.get_params()).params == node.params, "get_params() does not rebuild the same params"


def check_odd_texts_answered_in_order(node: Node, texts: Sequence[str], folder: Path, peers: Mapping[str, Node] | None = None) -> None:
    """Odd texts (see :data:`ODD_TEXTS`) mixed with ordinary ones: one valid prediction each, in order."""
    mixed = [t for pair in zip(ODD_TEXTS, list(texts) * len(ODD_TEXTS)) for t in pair]
    preds = node.predict_batch(mixed)
    _assert_valid(mixed, preds, "odd texts")
    alone = [node.predict_batch([t])[0] for t in texts]
    _assert_same(preds[1::2][: len(texts)], alone, "ordinary texts among odd ones")


def check_batch_size_invariance(node: Node, texts: Sequence[str], folder: Path, peers: Mapping[str, Node] | None = None) -> None:
    """The same answers for a text alone, in batches of 7 and all at once."""
    whole = node.predict_batch(texts)
    _assert_valid(texts, whole, "all at once")
    _assert_same([node.predict_batch([t])[0] for t in texts], whole, "one at a time")
    _assert_same([p for i in range(0, len(texts), 7) for p in node.predict_batch(texts[i : i + 7])], whole, "batches of 7")


def check_save_load_in_a_fresh_object(node: Node, texts: Sequence[str], folder: Path, peers: Mapping[str, Node] | None = None) -> None:
    """``to_disk`` then ``from_disk`` into a node built from the same params gives the same answers."""
    node.to_disk(folder)
    fresh = type(node)(**node.get_params())
    loaded = fresh.from_disk(folder)
    assert loaded is fresh, "from_disk must return self"
    if peers:
        fresh.bind(peers)
    fresh.warm_up()
    _assert_same(fresh.predict_batch(texts), node.predict_batch(texts), "after save and load")


def check_no_pickle_written(node: Node, texts: Sequence[str], folder: Path, peers: Mapping[str, Node] | None = None) -> None:
    """What ``to_disk`` writes is data (JSON, safetensors, crfsuite, ONNX...), never a pickle, which would run
    code when loaded."""
    node.to_disk(folder)
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = file.relative_to(folder)
        assert file.suffix.lower() not in PICKLE_SUFFIXES, f"{name}: a pickle-style file"
        head = file.read_bytes()[:2]
        assert not (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5), f"{name}: starts like a pickle"
        if zipfile.is_zipfile(file):  # torch.save writes a zip holding data.pkl
            inner = [n for n in zipfile.ZipFile(file).namelist() if n.endswith(".pkl")]
            assert not inner, f"{name}: a zip holding a pickle ({inner[0]})"


NODE_CHECKS: list[Check] = [
    check_params_are_validated,
    check_odd_texts_answered_in_order,
    check_batch_size_invariance,
    check_save_load_in_a_fresh_object,
    check_no_pickle_written,
]
"""Every check, in the order :func:`check_node` runs them."""


def check_node(node: Node, texts: Sequence[str], folder: Path, peers: Mapping[str, Node] | None = None) -> None:
    """Run every check of :data:`NODE_CHECKS` on ``node`` (ready to predict) with a few ordinary ``texts``;
    ``folder`` must be empty (each check that saves gets its own subfolder)."""
    for check in NODE_CHECKS:
        sub = folder / check.__name__
        sub.mkdir(parents=True)
        check(node, texts, sub, peers)
