"""A Hugging Face token classifier (``AutoModelForTokenClassification``) as the mamabear.

Texts of any length are cut into overlapping token windows and never truncated; subword predictions become
character spans through the tokenizer's offsets and word ids (:func:`babybear.nodes._align.classify`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from babybear.errors import BabybearError
from babybear.node import Node, Params
from babybear.types import Prediction

from ._align import check_stride, classify, untruncated
from .models import resolve, torch_dtype


class TokenClassifierParams(Params):
    """What every subword token classifier mamabear (PyTorch or ONNX) takes."""

    model: str = Field(description="a model folder, an offline alias, or a Hugging Face hub id")
    batch_size: int = Field(32, ge=1, description="windows per forward pass")
    max_length: int = Field(512, ge=8, description="tokens per window, special tokens included")
    stride: int = Field(128, ge=0, description="tokens shared by neighbouring windows of a long text")
    keep_token_probs: bool = Field(True, description="return per-word label probabilities (soft labels)")

    @model_validator(mode="after")
    def _stride_fits(self) -> TokenClassifierParams:
        check_stride(self.stride, self.max_length)
        return self


class TokenClassifierNode(Node):
    """Base of the subword token classifier mamabears: subclasses load a tokenizer and a model in ``warm_up``
    and say how to get logits; texts of any length are windowed and decoded by :func:`babybear.nodes._align.classify`.

    Evidence (from :func:`babybear.nodes._align.decode`): ``log_seq_prob``, ``min_prob``, ``mean_prob``,
    ``min_entity_prob``, ``n_words``, ``n_spans``.
    """

    Params: ClassVar[type[Params]] = TokenClassifierParams
    role: ClassVar[Literal["babybear", "mamabear"]] = "mamabear"
    params: TokenClassifierParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._tokenizer: Any = None  # a tokenizers.Tokenizer
        self._id2label: dict[int, str] = {}
        self._input_names: set[str] = set()  # the inputs the model takes

    def _set_tokenizer(self, tokenizer: Any, id2label: dict[Any, str]) -> None:
        self._tokenizer = untruncated(tokenizer)  # classify() does the windowing
        self._id2label = {int(k): v for k, v in id2label.items()}

    @abstractmethod
    def _logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Logits (batch, length, n_labels) for int64 ``input_ids``, ``attention_mask``, ``token_type_ids``."""

    def predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
        self.warm_up()
        return classify(
            self._tokenizer,
            texts,
            self._logits,
            self._id2label,
            max_length=self.params.max_length,
            overlap=self.params.stride,
            batch_size=self.params.batch_size,
            keep_token_probs=self.params.keep_token_probs,
        )


class HFTokenClassifier(TokenClassifierNode):
    """Entity spans from a PyTorch ``AutoModelForTokenClassification``, on CPU or CUDA."""

    class Params(TokenClassifierParams):
        device: Literal["auto", "cpu", "cuda"] = "auto"
        dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
            "auto",
            description="auto: bfloat16 on CUDA where the GPU supports it, else float16; on CPU bfloat16 autocast "
            "where the CPU has native bfloat16 (AMX, AVX512-BF16), else float32",
        )

    params: HFTokenClassifier.Params

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._model: Any = None
        self._device: str | None = None
        self._autocast: Any = None  # the CPU's bfloat16 autocast dtype, or None (weights carry the dtype)
        self._keep: dict[str, list[int]] = {}  # requesting node -> the layers to keep for it (see keep())

    def warm_up(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        device = self.params.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch_dtype(self.params.dtype, device, type(self).__name__)
        path = resolve(self.params.model, "hf")
        tokenizer = AutoTokenizer.from_pretrained(path)
        if not tokenizer.is_fast:
            raise BabybearError(f"model '{self.params.model}' has no fast tokenizer (tokenizer.json); need offsets")
        model = AutoModelForTokenClassification.from_pretrained(path)
        # on CPU, bfloat16 runs as autocast over float32 weights: the matrix products in bfloat16, LayerNorm and
        # softmax in float32 (weights cast to bfloat16 throughout drift further from float32's answers)
        self._autocast = dtype if device == "cpu" and dtype == torch.bfloat16 else None
        self._model = model.to(device=device, dtype=torch.float32 if self._autocast else dtype).eval()
        self._set_tokenizer(tokenizer.backend_tokenizer, model.config.id2label)
        self._input_names = set(tokenizer.model_input_names)
        self._device = device

    @property
    def device(self) -> str:
        """``"gpu"`` when the model runs on CUDA (known after :meth:`warm_up`; before it, when asked for)."""
        return "gpu" if (self._device or self.params.device) == "cuda" else "cpu"

    def keep(self, requests: Mapping[str, Any]) -> None:
        """Keep, from the next passes, the hidden states after the layers each request names (``{"layers": [k,
        ...]}``, 1 .. layers - 1) at each word's first subword, beside the final logits there
        (:func:`babybear.nodes.early_exit.collect`, in float16): :meth:`predict_with_state` then gives per text
        {requesting node: :class:`babybear.nodes.early_exit.WordStates`}. What early exits learn from without a
        pass of their own."""
        layers = {}
        for name, request in requests.items():
            if not isinstance(request, Mapping) or set(request) != {"layers"}:
                raise BabybearError(f"{type(self).__name__} keeps layers: {name!r} asked {request!r}; ask {{'layers': [k, ...]}}")
            layers[name] = sorted({int(k) for k in request["layers"]})
        self._keep = layers

    def predict_with_state(self, texts: Sequence[str]) -> tuple[list[Prediction], list[Any]]:
        """:meth:`predict_batch`, and per text what :meth:`keep` asked for (None each when nothing was)."""
        if not self._keep:
            return super().predict_with_state(texts)
        from .early_exit import WordStates, collect, word_predictions

        self.warm_up()
        p = self.params
        words = collect(
            self._model,
            self._tokenizer,
            texts,
            sorted({k for ks in self._keep.values() for k in ks}),
            max_length=p.max_length,
            stride=p.stride,
            batch_size=p.batch_size,
            autocast=self._autocast,
            hidden_dtype=np.float16,
        )
        states = [{name: WordStates(w.spans, {k: w.hidden[k] for k in ks}, w.logits) for name, ks in self._keep.items()} for w in words]
        return word_predictions(words, self._id2label, p.keep_token_probs), states

    def _logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        feed = {k: torch.from_numpy(v) for k, v in inputs.items() if k in self._input_names}
        if self._device == "cuda":  # pinned host memory: the copy to the GPU is a single asynchronous DMA
            feed = {k: v.pin_memory().to(self._device, non_blocking=True) for k, v in feed.items()}
        with torch.inference_mode(), torch.autocast("cpu", dtype=self._autocast, enabled=self._autocast is not None):
            return self._model(**feed).logits.float().cpu().numpy()
