"""Early exit inside an HF token-classifier mamabear, on tiny models built here from configs (no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from babybear.errors import BabybearError
from babybear.nodes import _layers
from babybear.nodes.early_exit import EarlyExit, advance, collect, resume_predictions, start_states, word_predictions
from babybear.nodes.mamabear_hf import HFTokenClassifier

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ID2LABEL = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
WORDS = (
    "angela merkel met emmanuel macron in paris and berlin on monday the talks ran late oslo rome said that "
    "a new plan for europe was agreed by leaders of france germany italy spain after long night"
).split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *WORDS]
SIZES = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 64}
CONFIGS = {
    "bert": lambda: transformers.BertConfig(**SIZES),
    "roberta": lambda: transformers.RobertaConfig(**SIZES),
    "xlm-roberta": lambda: transformers.XLMRobertaConfig(**SIZES),
    "camembert": lambda: transformers.CamembertConfig(**SIZES),
    "mpnet": lambda: transformers.MPNetConfig(**SIZES),
    "distilbert": lambda: transformers.DistilBertConfig(dim=32, n_layers=3, n_heads=4, hidden_dim=64),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> object:
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 22))) + "." for _ in range(n)]


TEXTS = [*sentences(9, seed=1), "", "Paris , Oslo and Rome ."]


def tiny_model(family: str, seed: int = 0) -> object:
    """A 3-layer token classifier of hidden size 32, with a sharpened random head (it tags many words)."""
    torch.manual_seed(seed)
    config = CONFIGS[family]()
    config.update({"vocab_size": len(VOCAB), "max_position_embeddings": 64, "num_labels": len(ID2LABEL)})
    config.update({"id2label": ID2LABEL, "label2id": {v: k for k, v in ID2LABEL.items()}})
    model = transformers.AutoModelForTokenClassification.from_config(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(20)
    return model


def tiny_tokenizer(folder: Path) -> object:
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))


@pytest.fixture(scope="module", params=list(CONFIGS))
def mamabear(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> HFTokenClassifier:
    """The HF mamabear node on a tiny saved model of each family, windows of 12 tokens sharing 4."""
    folder = tmp_path_factory.mktemp(request.param)
    tiny_model(request.param).save_pretrained(folder)
    tiny_tokenizer(folder).save_pretrained(folder)
    node = HFTokenClassifier(model=str(folder), device="cpu", max_length=12, stride=4, batch_size=16)
    node.warm_up()
    return node


@pytest.fixture(scope="module")
def bert_mamabear(tmp_path_factory: pytest.TempPathFactory) -> HFTokenClassifier:
    folder = tmp_path_factory.mktemp("bert")
    tiny_model("bert").save_pretrained(folder)
    tiny_tokenizer(folder).save_pretrained(folder)
    node = HFTokenClassifier(model=str(folder), device="cpu", max_length=24, stride=8, batch_size=16)
    node.warm_up()
    return node


@pytest.fixture(scope="module")
def fitted(bert_mamabear: HFTokenClassifier) -> EarlyExit:
    node = EarlyExit(mamabear="mamabear", layer=1, epochs=20).attach_node(bert_mamabear)
    return node.fit_states(node.collect(sentences(150, seed=2)))


@pytest.mark.parametrize("family", list(CONFIGS))
def test_the_split_forward_pass_is_the_model_bit_for_bit(family: str) -> None:
    model = tiny_model(family)
    ids = torch.randint(7, len(VOCAB), (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:], mask[2, 3:] = 0, 0
    ids[mask == 0] = 0
    n = _layers.n_layers(model)
    with torch.inference_mode():
        full = model(input_ids=ids, attention_mask=mask).logits
        for k in range(n + 1):
            hidden = _layers.run_layers(model, _layers.embed(model, ids, mask), mask, 0, k)
            assert torch.equal(_layers.head(model, _layers.run_layers(model, hidden, mask, k, n)), full), k


def test_resuming_from_layer_k_gives_the_mamabears_predictions_bit_for_bit(mamabear: HFTokenClassifier) -> None:
    long = " ".join(TEXTS[:4])  # several windows of 12 tokens
    texts = [*TEXTS, long]
    expected = mamabear.predict_batch(texts)
    p = mamabear.params
    run = {"batch_size": p.batch_size, "autocast": getattr(mamabear, "_autocast", None)}  # its CPU autocast, if any
    for k in range(1, 3):
        start = start_states(mamabear._tokenizer, texts, max_length=p.max_length, stride=p.stride)
        states = advance(mamabear._model, start, k, **run)
        assert resume_predictions(mamabear._model, states, **run) == expected  # evidence, token probs too: exact
    words = collect(
        mamabear._model, mamabear._tokenizer, texts, [1, 2], max_length=p.max_length, stride=p.stride, **run
    )
    assert word_predictions(words, mamabear._id2label) == expected  # the warm-up's references, from the same pass


def test_an_unsupported_architecture_is_a_clear_error() -> None:
    config = transformers.ElectraConfig(vocab_size=len(VOCAB), embedding_size=32, **SIZES, num_labels=3)
    electra = transformers.AutoModelForTokenClassification.from_config(config)
    with pytest.raises(BabybearError, match=r"model type 'electra'.*supported: bert, roberta.*distilbert"):
        _layers.embed(electra, torch.zeros((1, 3), dtype=torch.long), torch.ones((1, 3), dtype=torch.long))
    with pytest.raises(BabybearError, match=r"EarlyExit \(layer 1 of 'mama'\): early exit: model type 'electra'"):
        EarlyExit(mamabear="mama", layer=1).attach(electra, None)
    encoder_only = transformers.BertModel(transformers.BertConfig(**SIZES))
    with pytest.raises(BabybearError, match="not a token classifier"):
        _layers.n_layers(encoder_only)


def test_the_exit_layer_must_lie_inside_the_mamabear(bert_mamabear: HFTokenClassifier) -> None:
    with pytest.raises(BabybearError, match="layer must be below the mamabear's 3 layers"):
        EarlyExit(mamabear="mamabear", layer=3).attach_node(bert_mamabear)
    with pytest.raises(ValueError, match="lyer"):
        EarlyExit(mamabear="mamabear", layer=1, lyer=2)


def test_the_exit_head_learns_the_mamabears_answers_from_frozen_states(
    fitted: EarlyExit, bert_mamabear: HFTokenClassifier
) -> None:
    before = {k: v.clone() for k, v in bert_mamabear._model.state_dict().items()}
    words = fitted.collect(sentences(60, seed=3))
    labels = np.concatenate([w.logits.argmax(-1) for w in words])
    chance = np.bincount(labels).max() / len(labels)  # always saying the most frequent label
    with torch.no_grad():
        z = fitted.head_(torch.from_numpy(np.concatenate([w.hidden[1] for w in words]))).numpy()
    agreement = float((z.argmax(-1) == labels).mean())
    assert agreement > chance + 0.15 and agreement > 0.8, (agreement, chance)
    assert fitted.report_["heldout_word_agreement"] > 0.8
    assert 0.05 < fitted.temperature_ < 20
    assert all(torch.equal(v, before[k]) for k, v in bert_mamabear._model.state_dict().items())  # frozen
    (pred,) = fitted.predict_batch(["angela merkel met emmanuel macron in paris ."])
    assert set(pred.evidence) == {"log_seq_prob", "min_prob", "mean_prob", "min_entity_prob", "n_words", "n_spans"}


def test_a_batch_where_some_exit_and_others_resume_keeps_order_and_loses_none(
    fitted: EarlyExit, bert_mamabear: HFTokenClassifier
) -> None:
    texts = [*TEXTS, " ".join(TEXTS[:4])]
    exits, states = fitted.predict_with_state(texts)
    go_on = [i for i in range(len(texts)) if i % 3 != 1]  # the gate hands these on
    resumed = fitted.resume([states[i] for i in go_on])
    answers = [resumed[go_on.index(i)] if i in go_on else exits[i] for i in range(len(texts))]
    assert len(answers) == len(texts)
    expected = bert_mamabear.predict_batch(texts)
    for i, text in enumerate(texts):
        if i in go_on:
            assert answers[i].spans == expected[i].spans, text
            assert answers[i].evidence == pytest.approx(expected[i].evidence, rel=1e-5)
        else:
            assert answers[i] is exits[i]


def test_a_deeper_exit_continues_from_a_shallower_ones_state(
    fitted: EarlyExit, bert_mamabear: HFTokenClassifier
) -> None:
    deeper = EarlyExit(mamabear="mamabear", layer=2, epochs=3).attach_node(bert_mamabear)
    deeper.fit_states(deeper.collect(sentences(40, seed=4)))
    _, shallow = fitted.predict_with_state(TEXTS)
    chained, states = deeper.predict_with_state(TEXTS, shallow)
    assert chained == deeper.predict_batch(TEXTS)
    assert {s.layer for s in states} == {2}
    assert deeper.resume(states) == bert_mamabear.predict_batch(TEXTS)


def test_save_and_load_round_trip_the_head(fitted: EarlyExit, bert_mamabear: HFTokenClassifier, tmp_path: Path) -> None:
    fitted.to_disk(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["early_exit.json", "exit_head.safetensors"]
    loaded = EarlyExit(mamabear="mamabear", layer=2).from_disk(tmp_path).attach_node(bert_mamabear)
    assert loaded.params.layer == 1
    assert loaded.predict_batch(TEXTS) == fitted.predict_batch(TEXTS)
    other = tiny_model("bert")
    other.config.hidden_size = 48  # a mamabear the head was not trained on
    with pytest.raises(BabybearError, match="hidden size 32; the mamabear has .* and 48"):
        loaded.attach(other, bert_mamabear._tokenizer)
