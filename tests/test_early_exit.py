"""Early exit inside an HF token-classifier mamabear, on tiny models built here from configs (no download)."""

from __future__ import annotations


import numpy as np
import pytest

from circuit.errors import BabybearError
from nodes import _layers

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


def test_an_unsupported_architecture_is_a_clear_error() -> None:
    config = transformers.ElectraConfig(vocab_size=len(VOCAB), embedding_size=32, **SIZES, num_labels=3)
    electra = transformers.AutoModelForTokenClassification.from_config(config)
    with pytest.raises(BabybearError, match=r"model type 'electra'.*supported: bert, roberta.*distilbert"):
        _layers.embed(electra, torch.zeros((1, 3), dtype=torch.long), torch.ones((1, 3), dtype=torch.long))
    encoder_only = transformers.BertModel(transformers.BertConfig(**SIZES))
    with pytest.raises(BabybearError, match="not a token classifier"):
        _layers.n_layers(encoder_only)
