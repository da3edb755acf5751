"""The PyTorch mamabear on a real BERT-style token classifier: MiniLM-L6 weights (its first 2 layers) with a seeded
random head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from babybear.errors import BabybearError
from babybear.types import Prediction
from babybear.nodes._align import decode
from babybear.nodes.models import resolve
from babybear.nodes.mamabear_hf import HFTokenClassifier
from tests.conftest import ODD_TEXTS, variant

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
try:
    MINILM = resolve("minilm-l6", "encoder")
except BabybearError as missing:
    pytest.skip(str(missing), allow_module_level=True)

ID2LABEL = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
TEXT = "Angela Merkel met Emmanuel Macron in Paris on Monday, and the talks (unusually) ran late."
TEXTS = [TEXT, "Short one.", TEXT + " " + TEXT, "Berlin, Oslo and Rome."]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A token classification model folder: the MiniLM encoder's first 2 layers (what is tested is the windowing
    and decoding around the model, not its depth; 2 layers cost a third of 6 on the 100,000-character odd text)
    plus a seeded, sharpened classifier head."""
    path = tmp_path_factory.mktemp("minilm-ner")
    torch.manual_seed(0)
    model = transformers.AutoModelForTokenClassification.from_pretrained(
        MINILM, num_labels=len(ID2LABEL), id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()},
        num_hidden_layers=2,
    )
    with torch.no_grad():
        model.classifier.weight.mul_(50)  # a random head this strong tags a fair share of words as entities
    model.save_pretrained(path)
    transformers.AutoTokenizer.from_pretrained(MINILM).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def node(folder: Path) -> HFTokenClassifier:
    node = HFTokenClassifier(model=str(folder), device="cpu", dtype="float32")  # compared with plain fp32 calls
    node.warm_up()
    return node


def test_spans_start_and_end_on_word_boundaries(node: HFTokenClassifier, folder: Path) -> None:
    (pred,) = node.predict_batch([TEXT])
    words = transformers.AutoTokenizer.from_pretrained(folder).backend_tokenizer.pre_tokenizer.pre_tokenize_str(TEXT)
    starts, ends = {s for _, (s, _) in words}, {e for _, (_, e) in words}
    assert pred.spans, "the seeded head should tag some words"
    assert all(s.start in starts and s.end in ends and s.label in {"PER", "LOC"} for s in pred.spans)


def test_one_window_equals_the_plain_model_call(node: HFTokenClassifier, folder: Path) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForTokenClassification.from_pretrained(folder).eval()
    enc = tokenizer(TEXT, return_offsets_mapping=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**{k: v for k, v in enc.items() if k != "offset_mapping"}).logits[0].numpy()
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    plain = decode(enc["offset_mapping"][0].tolist(), enc.word_ids(), probs, ID2LABEL, keep_token_probs=True)
    (ours,) = node.predict_batch([TEXT])
    assert ours.spans == plain.spans
    assert ours.evidence == pytest.approx(plain.evidence, rel=1e-4)


def test_windowed_equals_unwindowed_on_a_text_that_fits(node: HFTokenClassifier, folder: Path) -> None:
    n_tokens = len(transformers.AutoTokenizer.from_pretrained(folder)(TEXT)["input_ids"])
    tight = variant(node, max_length=n_tokens, stride=4)
    assert tight.predict_batch([TEXT])[0].spans == node.predict_batch([TEXT])[0].spans


def test_long_texts_are_windowed_not_truncated(node: HFTokenClassifier) -> None:
    long = " ".join([TEXT] * 6)
    (windowed,) = variant(node, max_length=32, stride=12).predict_batch([long])
    assert windowed.evidence["n_words"] == node.predict_batch([long])[0].evidence["n_words"]
    assert max(s.end for s in windowed.spans) > len(long) - len(TEXT)  # the last copy is read too


def test_batch_size_does_not_change_the_answer(node: HFTokenClassifier) -> None:
    one = variant(node, batch_size=1).predict_batch(TEXTS)
    batched = node.predict_batch(TEXTS)
    assert [p.spans for p in one] == [p.spans for p in batched]
    for a, b in zip(one, batched):
        assert a.evidence == pytest.approx(b.evidence, rel=1e-4)


def test_token_probs_are_per_word_distributions(node: HFTokenClassifier) -> None:
    (pred,) = node.predict_batch([TEXT])
    assert pred.token_probs is not None and len(pred.token_probs) == pred.evidence["n_words"]
    for start, end, probs in pred.token_probs:
        assert TEXT[start:end].strip() == TEXT[start:end] != ""
        assert set(probs) == set(ID2LABEL.values()) and sum(probs.values()) == pytest.approx(1, abs=1e-5)
    (plain,) = variant(node, keep_token_probs=False).predict_batch([TEXT])
    assert plain.token_probs is None and plain.spans == pred.spans


def test_odd_inputs_give_one_prediction_each_in_order(node: HFTokenClassifier) -> None:
    preds = node.predict_batch(ODD_TEXTS + [TEXT])
    assert len(preds) == len(ODD_TEXTS) + 1 and all(isinstance(p, Prediction) for p in preds)
    assert preds[0].spans == preds[1].spans == () and preds[3].evidence["n_words"] == 1  # one long word
    assert preds[-1].spans == node.predict_batch([TEXT])[0].spans


def test_device_and_dtype_follow_the_params(node: HFTokenClassifier) -> None:
    assert node.device == "cpu" and node._model.dtype == torch.float32
    assert HFTokenClassifier(model="x", device="cuda").device == "gpu"
    with pytest.raises(ValueError, match="stride"):
        HFTokenClassifier(model="x", max_length=32, stride=20)


def fake_gpu(monkeypatch: pytest.MonkeyPatch, native_bf16: bool) -> None:
    """Pretend a CUDA device is present; bfloat16 is native on it or (otherwise) only emulated."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    bf16 = lambda including_emulation=True: native_bf16 or including_emulation  # noqa: E731
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16)


@pytest.mark.parametrize(("native_bf16", "expected"), [(True, "bfloat16"), (False, "float16")])
def test_auto_dtype_on_cuda_is_bf16_where_the_gpu_has_it(
    monkeypatch: pytest.MonkeyPatch, folder: Path, native_bf16: bool, expected: str
) -> None:
    placed: dict = {}
    load = transformers.AutoModelForTokenClassification.from_pretrained

    def load_and_record(*args, **kwargs):
        model = load(*args, **kwargs)
        monkeypatch.setattr(model, "to", lambda **to: placed.update(to) or model)  # no GPU here to move it to
        return model

    monkeypatch.setattr(transformers.AutoModelForTokenClassification, "from_pretrained", load_and_record)
    fake_gpu(monkeypatch, native_bf16)
    node = HFTokenClassifier(model=str(folder))
    node.warm_up()
    assert placed == {"device": "cuda", "dtype": getattr(torch, expected)} and node.device == "gpu"


def test_bf16_asked_for_on_a_gpu_without_it_is_a_babybear_error(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    fake_gpu(monkeypatch, native_bf16=False)
    with pytest.raises(BabybearError, match="HFTokenClassifier: dtype='bfloat16' but this GPU does not support"):
        HFTokenClassifier(model=str(folder), dtype="bfloat16").warm_up()
