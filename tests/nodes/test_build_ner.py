"""``babybear models build``: the whole build path on a tiny MPNet encoder made here from a config (no download) and
a rule labeller; the output rescale; the built folder as a mamabear; bf16 autocast on CPU."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from babybear.errors import BabybearError
from babybear.types import Span
from babybear.nodes import build_ner, models
from babybear.nodes.build_ner import Recipe, build, encode, rescale_output, word_targets

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

PEOPLE = ["Tony Blair", "Gordon Brown", "Kofi Annan", "Serena Williams", "Roman Abramovich"]
PLACES = ["London", "Paris", "Moscow", "Brussels", "Glasgow"]
VERBS = ["met", "called", "praised", "criticised", "visited"]


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.sample(PEOPLE, 2)
        out.append(f"{a} {rng.choice(VERBS)} {b} in {rng.choice(PLACES)} on {rng.randint(2, 28)} May.")
    return out


def rule_labeller(texts):
    """People and places from the lists above, and numbers: a cheap, learnable stand-in for spaCy md."""
    out = []
    for t in texts:
        spans = [Span(m.start(), m.end(), "PERSON") for p in PEOPLE for m in re.finditer(re.escape(p), t)]
        spans += [Span(m.start(), m.end(), "GPE") for p in PLACES for m in re.finditer(rf"\b{p}\b", t)]
        spans += [Span(m.start(), m.end(), "CARDINAL") for m in re.finditer(r"\d+", t)]
        out.append(sorted(spans))
    return out


def make_tiny_encoder(path: Path, texts: list[str]) -> Path:
    """A 2-layer MPNet encoder (hidden 32) with a WordPiece tokenizer trained on ``texts``, saved as a HF folder."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"]  # MPNet's ids: <s> 0, <pad> 1, </s> 2
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.decoder = decoders.WordPiece()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
        pad_token="<pad>", unk_token="[UNK]", mask_token="<mask>", model_input_names=["input_ids", "attention_mask"],
    )
    fast.save_pretrained(path)
    torch.manual_seed(0)
    config = transformers.MPNetConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=514, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )
    model = transformers.MPNetModel(config)
    with torch.no_grad():  # an encoder whose output is as small as all-mpnet-base-v2's
        model.encoder.layer[-1].output.LayerNorm.weight.mul_(0.1)
    model.save_pretrained(path)
    return path


RECIPE = Recipe(
    encoder="unused", train_sentences=60, heldout_sentences=12, test_sentences=16, batch_size=8, max_steps=60,
    eval_every=20, patience=3, lr=2e-3, head_lr=1e-2, warmup_steps=6, freeze_word_embeddings=False,
)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny-mpnet"), _sentences(200, 1))


@pytest.fixture(scope="module")
def built(encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    cache = tmp_path_factory.mktemp("models")
    target = cache / "mpnet-news-ner"
    report = build(
        target, RECIPE, _sentences(80, 2), _sentences(16, 3), rule_labeller,
        encoder_path=str(encoder), progress=False, log=lambda _: None, command="test",
    )
    return target, report


def test_word_targets_label_first_subwords_only(encoder: Path) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(encoder)
    text = "Abramovichs visited Glasgow."  # a word the tiny vocabulary has not seen whole
    label2id = {"O": 0, "B-PERSON": 1, "I-PERSON": 2, "B-GPE": 3, "I-GPE": 4}
    enc = tokenizer(text, return_offsets_mapping=True)
    targets = word_targets(enc["offset_mapping"], enc.word_ids(), text, [Span(0, 11, "PERSON"), Span(20, 27, "GPE")], label2id)
    assert targets[0] == targets[-1] == -100  # <s> and </s>
    words = enc.word_ids()
    firsts = {w: i for i, w in reversed(list(enumerate(words))) if w is not None}
    assert [targets[firsts[w]] for w in sorted(firsts)] == [1, 0, 3, 0]
    assert all(t == -100 for i, t in enumerate(targets) if i not in firsts.values())
    assert len(tokenizer.tokenize("Abramovichs")) > 1, "the tiny vocabulary splits this word into subwords"


def test_encode_uses_the_encoders_special_tokens(encoder: Path) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(encoder)
    ((ids, targets),) = encode(tokenizer, ["Tony Blair met Kofi Annan."], [[Span(0, 10, "PERSON")]], {"O": 0, "B-PERSON": 1, "I-PERSON": 2}, 128)
    assert ids[0] == 0 and ids[-1] == 2 and len(ids) == len(targets)
    assert [t for t in targets if t != -100] == [1, 2, 0, 0, 0, 0]


def test_rescale_changes_the_scale_of_the_output_only(encoder: Path) -> None:
    model = transformers.AutoModel.from_pretrained(encoder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(encoder)
    batch = dict(tokenizer(_sentences(4, 5), return_tensors="pt", padding=True))
    with torch.no_grad():
        before = model(**batch).last_hidden_state
    rms_before, rms_after = rescale_output(model, batch, 1.0)
    with torch.no_grad():
        after = model(**batch).last_hidden_state
    assert rms_before < 0.5 and rms_after == pytest.approx(1.0, rel=1e-3)
    assert torch.allclose(after, before * (rms_after / rms_before), atol=1e-4)


def test_the_build_saves_a_standard_token_classification_folder(built) -> None:
    target, report = built
    assert {"model.safetensors", "tokenizer.json", "config.json", "build.json"} <= {p.name for p in target.iterdir()}
    config = json.loads((target / "config.json").read_text())
    assert config["id2label"]["0"] == "O" and config["label2id"]["B-PERSON"] >= 1
    assert set(config["id2label"].values()) == {"O"} | {f"{p}-{t}" for t in ("CARDINAL", "GPE", "PERSON") for p in "BI"}
    saved = json.loads((target / "build.json").read_text())
    assert saved["curve"] == report["curve"] and [r["step"] for r in report["curve"]] == [20, 40, 60]
    assert report["output_rms_before_after"][1] == pytest.approx(1.0, rel=1e-3)
    assert report["curve"][-1]["loss"] < report["curve"][0]["loss"]
    assert report["best_heldout_f1"] >= 0.5, report["curve"]
    assert report["test_f1"] >= 0.5 and report["test_sentences"] == 16
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_the_built_model_is_a_mamabear_by_name(built, monkeypatch) -> None:
    from babybear.nodes.mamabear_hf import HFTokenClassifier

    target, _ = built
    monkeypatch.setenv("BABYBEAR_MODELS", str(target.parent))
    node = HFTokenClassifier(model="mpnet-news-ner", device="cpu", dtype="float32")
    texts = _sentences(8, 9)
    preds = node.predict_batch(texts)
    gold = rule_labeller(texts)
    from babybear.metrics import entity_f1

    assert entity_f1([p.spans for p in preds], gold) >= 0.5


def test_a_second_build_reuses_the_folder(built, monkeypatch, capsys) -> None:
    from babybear.doors.cli import main

    target, _ = built
    monkeypatch.setenv("BABYBEAR_MODELS", str(target.parent))
    monkeypatch.setattr(build_ner, "build", lambda *a, **k: pytest.fail("rebuilt a built model"))
    assert build_ner.build_model("mpnet-news-ner") == target
    assert main(["models", "build", "mpnet-news-ner"]) == 0
    assert "already built" in capsys.readouterr().err


def test_an_unknown_model_has_no_recipe() -> None:
    with pytest.raises(BabybearError, match="known: mpnet-news-ner"):
        build_ner.build_model("gpt-ner")


def test_bf16_autocast_on_cpu_keeps_the_spans(built, monkeypatch) -> None:
    from babybear.nodes.mamabear_hf import HFTokenClassifier

    target, _ = built
    texts = _sentences(12, 11)
    fp32 = HFTokenClassifier(model=str(target), device="cpu", dtype="float32").predict_batch(texts)
    monkeypatch.setattr(models, "cpu_native_bf16", lambda: True)
    auto = HFTokenClassifier(model=str(target), device="cpu", dtype="auto")
    auto.warm_up()
    assert auto._autocast == torch.bfloat16
    assert next(auto._model.parameters()).dtype == torch.float32  # weights stay float32 under CPU autocast
    bf16 = auto.predict_batch(texts)
    same = sum(a.spans == b.spans for a, b in zip(fp32, bf16))
    assert same >= len(texts) - 1, [(a.spans, b.spans) for a, b in zip(fp32, bf16)]


def test_auto_is_float32_on_a_cpu_without_native_bf16(built, monkeypatch) -> None:
    from babybear.nodes.mamabear_hf import HFTokenClassifier

    monkeypatch.setattr(models, "cpu_native_bf16", lambda: False)
    node = HFTokenClassifier(model=str(built[0]), device="cpu", dtype="auto")
    node.warm_up()
    assert node._autocast is None and next(node._model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("native", [True, False])
def test_the_student_stays_float32_on_a_cpu_unless_bf16_is_asked_for(monkeypatch, native: bool) -> None:
    """Under bf16 its evidence moved with the batch's padding (routing then depended on the batch), for a 1.24x gain."""
    from babybear.nodes.transformer import TransformerTagger

    monkeypatch.setattr(models, "cpu_native_bf16", lambda: native)
    assert not isinstance(TransformerTagger(device="cpu")._autocast(), torch.autocast)
    ctx = TransformerTagger(device="cpu", dtype="bfloat16")._autocast()
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16


@pytest.mark.slow
def test_the_real_mpnet_news_ner_finds_news_entities() -> None:
    from babybear.nodes.mamabear_hf import HFTokenClassifier

    folder = models.built_model("mpnet-news-ner")
    if folder is None:
        pytest.skip("mpnet-news-ner is not built (`babybear models build mpnet-news-ner`)")
    (pred,) = HFTokenClassifier(model="mpnet-news-ner").predict_batch(["Tony Blair flew to Washington on Monday."])
    text = "Tony Blair flew to Washington on Monday."
    found = {(text[s.start : s.end], s.label) for s in pred.spans}
    assert {("Tony Blair", "PERSON"), ("Washington", "GPE")} <= found, found
    report = json.loads((folder / "build.json").read_text())
    assert report["test_f1"] >= 0.5 and report["curve"]


def test_compare_dtypes_reports_speed_and_agreement(built) -> None:
    texts = _sentences(10, 13)
    out = build_ner.compare_dtypes(str(built[0]), texts, rule_labeller(texts))
    assert out["texts"] == 10 and out["float32_ms_per_sentence"] > 0 and out["bfloat16_ms_per_sentence"] > 0
    assert out["bf16_vs_fp32_f1"] >= 0.9 and 0.8 <= out["same_spans"] <= 1.0
    assert 0 <= out["float32_f1_vs_refs"] <= 1 and 0 <= out["bfloat16_f1_vs_refs"] <= 1
