"""Early exit inside a Hugging Face token-classifier mamabear: a small head on layer k of the mamabear itself.

The head (layer norm + linear, or linear) reads the mamabear's layer-k hidden states and is trained with the
mamabear frozen on its own final answers: each word's label (hard) and its token distribution (soft,
temperature-softened), as "The Right Tool for the Job" (Schwartz et al., 2020) trains its exit classifiers. It
decodes like the student (Viterbi over word labels, temperature calibrated on a held-out tenth) and gives the
student's evidence keys, so the edge gate works unchanged.

Nothing is computed twice: :meth:`EarlyExit.predict_with_state` returns, beside its predictions, each text's
layer-k hidden states (:class:`ExitState`), from which :func:`resume` finishes the mamabear's forward pass, or a
deeper exit continues. Texts are tokenized and windowed exactly as the mamabear does it
(:func:`babybear.nodes._align.classify`); when every text of a batch is resumed with the mamabear's ``batch_size``, the
logits are the mamabear's own, bit for bit. Training needs no extra mamabear pass: an exit :meth:`EarlyExit.taps`
layer k of the mamabear, so the warm-up has the mamabear keep (:meth:`babybear.nodes.mamabear_hf.HFTokenClassifier.keep`)
the layer-k states of every word's first subword, in float16, beside the final logits (:func:`collect`) while it labels
the training share, and hands them to :meth:`EarlyExit.fit` as ``kept``. Outside a circuit, ``fit`` runs
:func:`collect` itself.

Supported families: :data:`babybear.nodes._layers.SUPPORTED_MODEL_TYPES`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from babybear.errors import ArtifactError, BabybearError, NotFittedError
from babybear.node import Node
from babybear.node import Params as NodeParams
from babybear.records import clean_text
from babybear.types import Prediction
from babybear.nodes import _align, _layers
from babybear.nodes._calibration import fit_temperature, top_label_calibration_error
from babybear.nodes.transformer import _transitions

_FORMAT = 1
_CONFIG_FILE = "early_exit.json"
_WEIGHTS_FILE = "exit_head.safetensors"
_COLLECT_CHUNK = 1024  # texts per pass of collect()


@dataclass
class ExitState:
    """One text part-way through the mamabear: the hidden states after ``layer`` layers of each of its windows.

    ``hidden[(start, end)]`` is a torch tensor (window tokens with special tokens, hidden size) for the window of
    content tokens ``start:end``, trimmed to its own tokens (its attention mask is all ones); windows are those of
    :func:`babybear.nodes._align.token_windows` with ``size`` and ``overlap``. ``offsets`` and ``word_ids`` are per content
    token, for decoding; ``ids`` are the content token ids (used only at ``layer`` 0, before the embeddings).
    """

    layer: int
    ids: list[int]
    offsets: list[tuple[int, int]]
    word_ids: list[int | None]
    size: int
    overlap: int
    prefix: list[int]
    suffix: list[int]
    hidden: dict[tuple[int, int], Any] = field(default_factory=dict)


@dataclass
class WordStates:
    """One text's words as the mamabear saw them: ``spans`` (start, end) per word, the hidden state of each
    word's first subword after each kept layer (``hidden[layer]``: (words, hidden size)), and the mamabear's final
    logits there (words, labels). What :meth:`EarlyExit.fit_states` learns from."""

    spans: list[tuple[int, int]]
    hidden: dict[int, np.ndarray]
    logits: np.ndarray


def start_states(tokenizer: Any, texts: Sequence[str], *, max_length: int, stride: int) -> list[ExitState]:
    """Each text tokenized and windowed as the mamabear does it (:func:`babybear.nodes._align.classify`), at layer 0."""
    prefix, suffix = _align.special_tokens(tokenizer)
    encodings = tokenizer.encode_batch([clean_text(t) for t in texts], add_special_tokens=False)
    size = max_length - len(prefix) - len(suffix)
    return [
        ExitState(0, list(enc.ids), list(enc.offsets), list(enc.word_ids), size, stride, prefix, suffix)
        for enc in encodings
    ]


Run = Callable[[Any, Any, Sequence[_align.Window]], list[np.ndarray]]
"""What a pass does with a batch: (hidden states after the states' layer, 2D attention mask, windows) → per
window, per content token outputs (end - start, n)."""


def _windowed(
    model: Any, states: Sequence[ExitState], run: Run, *, batch_size: int, width: int, autocast: Any
) -> list[np.ndarray]:
    """Per text, per content token outputs (n_tokens, ``width``) of ``run`` over every window of ``states``, batched
    and stitched as :func:`babybear.nodes._align.run_windowed` does for the mamabear, under ``autocast`` (a torch dtype, or
    None for none) as the mamabear runs."""
    import torch

    layers = {s.layer for s in states}
    if len(layers) > 1:
        raise BabybearError(f"early exit: states at different layers ({sorted(layers)}) cannot share a pass")
    device = next(model.parameters()).device

    def batch_run(batch: Sequence[_align.Window]) -> list[np.ndarray]:
        rows = [(states[t], s, e) for t, s, e in batch]
        lengths = [len(st.prefix) + e - s + len(st.suffix) for st, s, e in rows]
        mask = torch.zeros((len(rows), max(lengths)), dtype=torch.int64)
        for row, n in enumerate(lengths):
            mask[row, :n] = 1
        if rows[0][0].layer == 0:
            ids = torch.zeros_like(mask)  # padding id 0, as the mamabear pads: masked out anyway
            for row, (st, s, e) in enumerate(rows):
                ids[row, : lengths[row]] = torch.tensor(st.prefix + st.ids[s:e] + st.suffix)
            mask = mask.to(device)
            hidden = _layers.embed(model, ids.to(device), mask)
        else:
            mask = mask.to(device)
            kept = [st.hidden[s, e] for st, s, e in rows]
            hidden = kept[0].new_zeros((len(rows), max(lengths), kept[0].shape[-1]))
            for row, h in enumerate(kept):
                hidden[row, : len(h)] = h
        return run(hidden, mask, batch)

    with torch.inference_mode(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        return _align.run_windowed(
            [len(st.ids) for st in states],
            batch_run,
            size=states[0].size if states else 1,
            overlap=states[0].overlap if states else 0,
            batch_size=batch_size,
            n_labels=width,
        )


def _content(states: Sequence[ExitState], z: Any, batch: Sequence[_align.Window]) -> list[np.ndarray]:
    """Each window's content-token rows of ``z`` (batch, length, n) as float32 numpy."""
    z = z.float().cpu().numpy()
    return [z[row, len(states[t].prefix) : len(states[t].prefix) + e - s] for row, (t, s, e) in enumerate(batch)]


def advance(
    model: Any, states: Sequence[ExitState], layer: int, *, batch_size: int, autocast: Any = None
) -> list[ExitState]:
    """The states after ``layer`` layers (from where they are, which must not be deeper), in batches of
    ``batch_size`` windows under ``autocast`` (the mamabear's: a torch dtype, or None)."""
    if not states or states[0].layer == layer:
        return list(states)
    if states[0].layer > layer:
        raise BabybearError(f"early exit: cannot go back from layer {states[0].layer} to {layer}")
    out = [replace(st, layer=layer, hidden={}) for st in states]

    def keep(hidden: Any, mask: Any, batch: Sequence[_align.Window]) -> list[np.ndarray]:
        hidden = _layers.run_layers(model, hidden, mask, states[0].layer, layer)
        for row, (t, s, e) in enumerate(batch):
            st = states[t]
            out[t].hidden[s, e] = hidden[row, : len(st.prefix) + e - s + len(st.suffix)].clone()
        return [np.zeros((e - s, 0), dtype=np.float32) for _, s, e in batch]

    _windowed(model, states, keep, batch_size=batch_size, width=0, autocast=autocast)
    return out


def resume(model: Any, states: Sequence[ExitState], *, batch_size: int, autocast: Any = None) -> list[np.ndarray]:
    """The mamabear's final logits (content tokens, labels) for each text, finishing its forward pass from the
    states' layer (windows stitched as the mamabear stitches them; ``batch_size``, ``autocast`` as in
    :func:`advance`)."""
    n = _layers.n_layers(model)
    start = states[0].layer if states else n

    def finish(hidden: Any, mask: Any, batch: Sequence[_align.Window]) -> list[np.ndarray]:
        return _content(states, _layers.head(model, _layers.run_layers(model, hidden, mask, start, n)), batch)

    return _windowed(model, states, finish, batch_size=batch_size, width=model.config.num_labels, autocast=autocast)


def resume_predictions(
    model: Any, states: Sequence[ExitState], *, batch_size: int, autocast: Any = None, keep_token_probs: bool = True
) -> list[Prediction]:
    """The mamabear's own predictions from :func:`resume`, decoded as :func:`babybear.nodes._align.classify` decodes them."""
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    return [
        _align.decode(st.offsets, st.word_ids, _align.softmax(z), id2label, keep_token_probs)
        for st, z in zip(states, resume(model, states, batch_size=batch_size, autocast=autocast))
    ]


def _first_subwords(offsets: Sequence[tuple[int, int]], word_ids: Sequence[int | None]) -> list[tuple[int, int, int]]:
    """``(first token index, start, end)`` per word, grouped as :func:`babybear.nodes._align.decode` groups them."""
    words: list[tuple[int, int, int]] = []
    last = None
    for i, ((s, e), w) in enumerate(zip(offsets, word_ids)):
        if w is None or e <= s:
            continue
        if w == last:
            words[-1] = (words[-1][0], words[-1][1], e)
        else:
            words.append((i, s, e))
            last = w
    return words


def collect(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    max_length: int = 512,
    stride: int = 128,
    batch_size: int = 32,
    autocast: Any = None,
    hidden_dtype: Any = np.float32,
) -> list[WordStates]:
    """One forward pass of the mamabear over ``texts`` (its own tokenization and windowing) keeping, for every word,
    the hidden state of its first subword after each of ``layers`` (as ``hidden_dtype``: float16 halves the
    memory) and the final logits (float32): the training material of exits at those layers (the warm-up's pass,
    :meth:`babybear.nodes.mamabear_hf.HFTokenClassifier.keep`, so that they cost no extra mamabear pass). The
    windowing and ``autocast`` must be the mamabear's."""
    n, hidden_size = _layers.n_layers(model), model.config.hidden_size
    layers = sorted(set(layers))
    if not all(1 <= k < n for k in layers):
        raise BabybearError(f"early exit: layers {layers} must lie between 1 and {n - 1} (the model has {n})")
    width = len(layers) * hidden_size + model.config.num_labels
    out = []
    for first in range(0, len(texts), _COLLECT_CHUNK):  # bounds the per-token outputs held before word rows are taken
        states = start_states(tokenizer, texts[first : first + _COLLECT_CHUNK], max_length=max_length, stride=stride)

        def run(hidden: Any, mask: Any, batch: Sequence[_align.Window], states: list[ExitState] = states) -> list[Any]:
            import torch

            kept, at = [], 0
            for k in [*layers, n]:
                hidden = _layers.run_layers(model, hidden, mask, at, k)
                kept.append(hidden)
                at = k
            kept[-1] = _layers.head(model, hidden)
            return _content(states, torch.cat(kept, dim=-1), batch)

        for st, z in zip(states, _windowed(model, states, run, batch_size=batch_size, width=width, autocast=autocast)):
            words = _first_subwords(st.offsets, st.word_ids)
            rows = z[[i for i, _, _ in words]]
            hidden = {k: rows[:, j * hidden_size : (j + 1) * hidden_size].astype(hidden_dtype) for j, k in enumerate(layers)}
            out.append(WordStates([(s, e) for _, s, e in words], hidden, rows[:, len(layers) * hidden_size :].copy()))
    return out


def word_predictions(
    words: Sequence[WordStates], id2label: dict[int, str], keep_token_probs: bool = True
) -> list[Prediction]:
    """The mamabear's predictions decoded from :func:`collect`'s words, as its own decoding gives them: the
    warm-up's reference answers from the same pass that keeps the exits' training states."""
    return [
        _align.decode(w.spans, list(range(len(w.spans))), _align.softmax(w.logits), id2label, keep_token_probs)
        for w in words
    ]


def word_restart_rate(sequences: Sequence[Sequence[str]]) -> float:
    """How often a word right after an ``X`` entity word starts a new ``X`` entity (``B-X``) rather than continuing
    it (``I-X``), add-one smoothed, in word label sequences: the learned score of :func:`_align.bio_transitions`."""
    restarts = continues = 0
    for tags in sequences:
        for a, b in pairwise(tags):
            if a != "O" and b != "O" and a[2:] == b[2:]:
                restarts += b.startswith("B-")
                continues += b.startswith("I-")
    return (restarts + 1) / (restarts + continues + 2)


def _build_head(kind: str, hidden_size: int, n_labels: int) -> Any:
    import torch

    linear = torch.nn.Linear(hidden_size, n_labels)
    return torch.nn.Sequential(torch.nn.LayerNorm(hidden_size), linear) if kind == "layernorm" else linear


class EarlyExit(Node):
    """An exit head on layer ``layer`` of an HF token-classifier mamabear (registry name ``babybear.EarlyExit.v1``).

    Use: :meth:`attach` the mamabear's model and tokenizer, then :meth:`fit` (or :meth:`fit_states` on
    :func:`collect`'s output) or :meth:`from_disk`. Evidence per prediction is the student's:
    ``log_seq_prob``, ``min_prob``, ``mean_prob``, ``min_entity_prob``, ``n_words``, ``n_spans``.
    Learned state: ``head_`` (torch module), ``labels_``, ``temperature_``, ``restart_rate_``, ``report_``.
    """

    class Params(NodeParams):
        mamabear: str = Field(description="the name of the mamabear node (an HF token classifier) in the circuit")
        layer: int = Field(ge=1, description="exit after this many of the mamabear's layers (1 .. layers - 1)")
        head: Literal["layernorm", "linear"] = Field("layernorm", description="layer norm + linear, or linear alone")
        epochs: int = Field(30, ge=1)
        words_per_step: int = Field(256, ge=1, description="training batch, in words")
        lr: float = Field(3e-3, gt=0)
        distill_temperature: float = Field(2.0, gt=0, description="softens the mamabear's token distributions")
        soft_weight: float = Field(0.5, ge=0, le=1, description="weight of the soft-label loss")
        early_stopping_patience: int = Field(3, ge=0, description="epochs without held-out improvement before stopping")
        decoding: Literal["viterbi", "argmax"] = "viterbi"
        seed: int = 0

    role: ClassVar[Literal["babybear", "mamabear"]] = "babybear"
    params: EarlyExit.Params

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.head_: Any = None
        self.labels_: list[str] = []
        self.temperature_: float = 1.0
        self.restart_rate_: float = 1.0
        self.report_: dict[str, Any] = {}
        self._model: Any = None
        self._tokenizer: Any = None
        self._windowing: dict[str, Any] = {}
        self._keep_token_probs = True
        self._mamabear: Node | None = None  # the circuit's mamabear node, once bound

    @property
    def _where(self) -> str:
        return f"EarlyExit (layer {self.params.layer} of {self.params.mamabear!r})"

    # -- the mamabear ----------------------------------------------------------------------------------------
    def attach(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_length: int = 512,
        stride: int = 128,
        batch_size: int = 32,
        autocast: Any = None,
        keep_token_probs: bool = True,
    ) -> EarlyExit:
        """Run on the mamabear's ``model`` (an ``AutoModelForTokenClassification``) with its ``tokenizer`` (a
        ``tokenizers.Tokenizer``, or a fast tokenizer holding one), its windowing and its ``autocast`` dtype (None:
        none), so that the layers compute what they compute inside the mamabear; ``keep_token_probs`` as the
        mamabear's, for :meth:`resume`. Returns self."""
        try:
            n = _layers.n_layers(model)
        except BabybearError as err:
            raise BabybearError(f"{self._where}: {err}") from None
        if not self.params.layer < n:
            raise BabybearError(f"{self._where}: layer must be below the mamabear's {n} layers")
        _align.check_stride(stride, max_length)
        self._model = model.eval()
        self._tokenizer = _align.untruncated(getattr(tokenizer, "backend_tokenizer", tokenizer))
        self._windowing = {"max_length": max_length, "stride": stride, "batch_size": batch_size, "autocast": autocast}
        self._keep_token_probs = keep_token_probs
        self._check_head_fits()
        return self

    def attach_node(self, mamabear: Any) -> EarlyExit:
        """:meth:`attach` to an :class:`babybear.nodes.mamabear_hf.HFTokenClassifier` node (warmed up here), with its
        windowing and CPU autocast."""
        mamabear.warm_up()
        p = mamabear.params
        return self.attach(
            mamabear._model,
            mamabear._tokenizer,
            max_length=p.max_length,
            stride=p.stride,
            batch_size=p.batch_size,
            autocast=getattr(mamabear, "_autocast", None),
            keep_token_probs=p.keep_token_probs,
        )

    # -- in a circuit ----------------------------------------------------------------------------------------
    def bind(self, nodes: Mapping[str, Node]) -> None:
        """Attach to the circuit's node named ``params.mamabear`` (an HF token classifier)."""
        mamabear = nodes.get(self.params.mamabear)
        if mamabear is None:
            raise BabybearError(f"{self._where}: the circuit has no node {self.params.mamabear!r}; nodes: {', '.join(nodes)}")
        if mamabear is not self._mamabear:
            if not hasattr(mamabear, "_model") or not hasattr(mamabear, "_tokenizer"):
                raise BabybearError(f"{self._where}: {self.params.mamabear!r} is a {type(mamabear).__name__}; an exit needs a PyTorch HF token classifier (babybear.HFTokenClassifier.v1)")
            self.attach_node(mamabear)
            self._mamabear = mamabear

    def _n_layers(self) -> int | None:
        return _layers.n_layers(self._model) if self._model is not None else self.report_.get("n_layers")

    def covers(self, name: str, successor: Node) -> float:
        """k / L of the mamabear (an L-layer model; this exit after k layers), k / j of a deeper exit at layer j on
        the same mamabear: the layers its handed-on state already ran."""
        k, n = self.params.layer, self._n_layers()
        if name == self.params.mamabear and n:
            return k / n
        if isinstance(successor, EarlyExit) and successor.params.mamabear == self.params.mamabear and successor.params.layer > k:
            return k / successor.params.layer
        return 0.0

    def finish(self, successor: Node, texts: Sequence[str], states: Sequence[Any]) -> tuple[list[Prediction], list[Any] | None]:
        """The mamabear's own predictions from the layer-k states (:meth:`resume`), or a deeper exit's predictions
        and states continuing from them."""
        if isinstance(successor, EarlyExit) and self.covers("", successor) > 0:
            return successor.predict_with_state(texts, states)
        if successor is self._mamabear:
            return self.resume(states), None
        raise BabybearError(f"{self._where}: hands no state on to {type(successor).__name__}")

    def _check_head_fits(self) -> None:
        if self.head_ is None or self._model is None:
            return
        labels = [self._model.config.id2label[i] for i in range(self._model.config.num_labels)]
        size = self._model.config.hidden_size
        if labels != self.labels_ or self.report_.get("hidden_size") != size:
            raise BabybearError(
                f"{self._where}: the head was trained for labels {self.labels_} and hidden size "
                f"{self.report_.get('hidden_size')}; the mamabear has {labels} and {size}"
            )

    def warm_up(self) -> None:
        if self._model is None:
            raise BabybearError(f"{self._where}: not attached to its mamabear; call attach() or attach_node() first")
        if self.head_ is not None:
            self.head_.to(next(self._model.parameters()).device).eval()

    @property
    def device(self) -> str:
        if self._model is None:
            return "cpu"
        return "gpu" if next(self._model.parameters()).device.type == "cuda" else "cpu"

    @property
    def is_fitted(self) -> bool:
        return self.head_ is not None

    # -- training --------------------------------------------------------------------------------------------
    def collect(self, texts: Sequence[str]) -> list[WordStates]:
        """:func:`collect` at this exit's layer, on the attached mamabear."""
        self.warm_up()
        return collect(self._model, self._tokenizer, texts, [self.params.layer], **self._windowing)

    def taps(self) -> dict[str, Any]:
        """Layer k of the mamabear's warm-up pass (see :meth:`babybear.node.Node.taps`)."""
        return {self.params.mamabear: {"layers": [self.params.layer]}}

    def fit(self, texts: Sequence[str], reference: Sequence[Prediction], kept: Sequence[WordStates | None] | None = None) -> EarlyExit:
        """Learn from the mamabear's pass over ``texts``: the states the warm-up's own pass ``kept`` for this exit
        (texts with None are left out), or, without them, a pass of its own (:meth:`collect`). The mamabear's final
        logits are the targets (``reference`` is their decoding, so it is only checked for length)."""
        if len(texts) != len(reference) or (kept is not None and len(kept) != len(texts)):
            got = "" if kept is None else f" and {len(kept)} kept states"
            raise BabybearError(f"{self._where}: fit got {len(texts)} texts but {len(reference)} reference predictions{got}")
        if kept is None:
            return self.fit_states(self.collect(texts))
        return self.fit_states([w for w in kept if w is not None])

    def fit_states(self, words: Sequence[WordStates]) -> EarlyExit:
        """Train the head on kept layer-k states (mamabear frozen): cross-entropy on the mamabear's word labels
        mixed with temperature-softened KL to its distributions; early stopping and temperature on a held-out
        tenth of the texts."""
        import torch
        import torch.nn.functional as F

        self.warm_up()
        p, k, model = self.params, self.params.layer, self._model
        missing = [i for i, w in enumerate(words) if k not in w.hidden]
        if missing:
            raise BabybearError(f"{self._where}: texts {missing[:5]} have no hidden states at layer {k}")
        started = time.perf_counter()
        torch.manual_seed(p.seed)
        rng = np.random.default_rng(p.seed)
        self.labels_ = [model.config.id2label[i] for i in range(model.config.num_labels)]
        order = rng.permutation(len(words))
        n_held = min(max(1, round(0.1 * len(words))), len(words) - 1) if len(words) > 1 else 0
        held, train = [words[i] for i in sorted(order[:n_held])], [words[i] for i in sorted(order[n_held:])]

        def stack(part: Sequence[WordStates]) -> tuple[Any, Any]:
            x = np.concatenate([np.zeros((0, model.config.hidden_size), np.float32), *(w.hidden[k] for w in part)], dtype=np.float32)
            z = np.concatenate([np.zeros((0, len(self.labels_)), np.float32), *(w.logits for w in part)])
            return torch.from_numpy(x), torch.from_numpy(z)

        x, z = stack(train)
        x_held, z_held = stack(held)
        y, y_held = z.argmax(-1), z_held.argmax(-1)
        t = p.distill_temperature
        teacher = F.softmax(z / t, -1)
        self.head_ = _build_head(p.head, model.config.hidden_size, len(self.labels_))
        linear = self.head_[-1] if p.head == "layernorm" else self.head_
        with torch.no_grad():  # start from the mamabear's own classifier: layers share the residual stream
            linear.weight.copy_(model.classifier.weight.detach().float().cpu())
            linear.bias.copy_(model.classifier.bias.detach().float().cpu())
        optimizer = torch.optim.Adam(self.head_.parameters(), lr=p.lr)
        history: list[float] = []
        best_state, best, stale = None, -1.0, 0
        for _ in range(p.epochs):
            self.head_.train()
            for idx in torch.from_numpy(rng.permutation(len(x))).split(p.words_per_step):
                logits = self.head_(x[idx])
                hard = F.cross_entropy(logits, y[idx])
                soft = F.kl_div(F.log_softmax(logits / t, -1), teacher[idx], reduction="batchmean") * t * t
                loss = (1 - p.soft_weight) * hard + p.soft_weight * soft
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if not len(x_held):
                continue
            self.head_.eval()
            with torch.no_grad():
                agreement = float((self.head_(x_held).argmax(-1) == y_held).float().mean())
            history.append(agreement)
            if agreement > best:
                best, stale = agreement, 0
                best_state = {n: v.detach().clone() for n, v in self.head_.state_dict().items()}
            else:
                stale += 1
                if stale >= p.early_stopping_patience:
                    break
        if best_state is not None:
            self.head_.load_state_dict(best_state)
        self.head_.eval()
        with torch.no_grad():
            z_exit = self.head_(x_held).numpy()
        self.temperature_ = fit_temperature(z_exit, y_held.numpy())
        self.restart_rate_ = word_restart_rate([[self.labels_[j] for j in w.logits.argmax(-1)] for w in train])
        self.report_ = {
            "hidden_size": model.config.hidden_size,
            "layer": k,
            "n_layers": _layers.n_layers(model),
            "n_train_texts": len(train),
            "n_heldout_texts": len(held),
            "n_train_words": len(x),
            "heldout_word_agreement_per_epoch": history,
            "heldout_word_agreement": best if history else None,
            "heldout_text_agreement": self._text_agreement(held) if held else None,
            "temperature": self.temperature_,
            "ece_before": top_label_calibration_error(_align.softmax(z_exit), y_held.numpy()) if n_held else None,
            "ece_after": top_label_calibration_error(_align.softmax(z_exit / self.temperature_), y_held.numpy())
            if n_held
            else None,
            "train_seconds": time.perf_counter() - started,
        }
        self.warm_up()
        return self

    def _text_agreement(self, words: Sequence[WordStates]) -> float:
        """Fraction of texts whose decoded spans equal the mamabear's (its decoding of its final logits)."""
        import torch

        id2label = dict(enumerate(self.labels_))
        agree = []
        for w in words:
            ids = list(range(len(w.spans)))
            with torch.no_grad():
                z = self.head_(torch.from_numpy(w.hidden[self.params.layer].astype(np.float32, copy=False))).numpy()
            mine = self._decode(w.spans, ids, z)
            theirs = _align.decode(w.spans, ids, _align.softmax(w.logits), id2label)
            agree.append(mine.spans == theirs.spans)
        return float(np.mean(agree))

    # -- inference -------------------------------------------------------------------------------------------
    def _decode(self, offsets: Sequence[tuple[int, int]], word_ids: Sequence[int | None], z: np.ndarray) -> Prediction:
        transitions = (
            _transitions(tuple(self.labels_), self.restart_rate_) if self.params.decoding == "viterbi" else None
        )
        return _align.decode(
            offsets,
            word_ids,
            _align.softmax(z / self.temperature_),
            dict(enumerate(self.labels_)),
            transitions=transitions,
        )

    def predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
        return self.predict_with_state(texts)[0]

    def predict_with_state(
        self, texts: Sequence[str], states: Sequence[ExitState] | None = None
    ) -> tuple[list[Prediction], list[ExitState]]:
        """Predictions for ``texts`` and each text's state after this exit's layer, from which :func:`resume` (or a
        deeper exit) continues. ``states``: the same texts' states from a shallower exit, to continue from."""
        if not self.is_fitted:
            raise NotFittedError(f"{self._where} is not fitted: call fit(), fit_states() or from_disk() first")
        self.warm_up()
        w = self._windowing
        if states is None:
            states = start_states(self._tokenizer, texts, max_length=w["max_length"], stride=w["stride"])
        elif len(states) != len(texts):
            raise BabybearError(f"{self._where}: got {len(texts)} texts but {len(states)} states")
        states = advance(self._model, states, self.params.layer, batch_size=w["batch_size"], autocast=w["autocast"])

        def exit_head(hidden: Any, mask: Any, batch: Sequence[_align.Window]) -> list[np.ndarray]:
            import torch

            with torch.autocast(hidden.device.type, enabled=False):  # float32, as the head was trained
                return _content(states, self.head_(hidden.float()), batch)

        logits = _windowed(
            self._model, states, exit_head, batch_size=w["batch_size"], width=len(self.labels_), autocast=w["autocast"]
        )
        return [self._decode(st.offsets, st.word_ids, z) for st, z in zip(states, logits)], states

    def resume(self, states: Sequence[ExitState]) -> list[Prediction]:
        """The attached mamabear's own predictions for texts this exit handed on, finishing its forward pass from
        their states (:func:`resume_predictions` with the mamabear's batching and autocast)."""
        self.warm_up()
        w = self._windowing
        return resume_predictions(
            self._model,
            states,
            batch_size=w["batch_size"],
            autocast=w["autocast"],
            keep_token_probs=self._keep_token_probs,
        )

    # -- persistence -----------------------------------------------------------------------------------------
    def to_disk(self, path: Path) -> None:
        """Write the head as safetensors and early_exit.json (labels, temperature, restart rate, params); no pickle."""
        from safetensors.torch import save_model

        if not self.is_fitted:
            raise NotFittedError(f"{self._where} is not fitted: nothing to save")
        path = Path(path)
        save_model(self.head_, str(path / _WEIGHTS_FILE))
        config = {
            "format": _FORMAT,
            "params": self.params.model_dump(),
            "labels": self.labels_,
            "temperature": self.temperature_,
            "restart_rate": self.restart_rate_,
            "report": self.report_,
        }
        (path / _CONFIG_FILE).write_text(json.dumps(config, indent=2))

    def from_disk(self, path: Path) -> EarlyExit:
        """Load a head written by :meth:`to_disk` (its params replace this node's)."""
        from safetensors.torch import load_model

        path = Path(path)
        missing = [n for n in (_CONFIG_FILE, _WEIGHTS_FILE) if not (path / n).exists()]
        if missing:
            raise ArtifactError(f"{path}: not a saved EarlyExit; missing {', '.join(missing)}")
        try:
            config = json.loads((path / _CONFIG_FILE).read_text(encoding="utf-8"))
            if config.get("format") != _FORMAT:
                raise ArtifactError(f"{path / _CONFIG_FILE}: written by an incompatible version of EarlyExit")
            params = self.Params(**config["params"])
            labels = [str(label) for label in config["labels"]]
            temperature, rate = float(config["temperature"]), float(config["restart_rate"])
            report = dict(config["report"])
            head = _build_head(params.head, int(report["hidden_size"]), len(labels))
        except (ValueError, KeyError, TypeError) as err:  # pydantic's ValidationError is a ValueError
            raise ArtifactError(f"{path / _CONFIG_FILE}: cannot read it: {type(err).__name__}: {err}") from err
        load_model(head, str(path / _WEIGHTS_FILE))
        self.params, self.labels_, self.report_ = params, labels, report
        self.temperature_, self.restart_rate_ = temperature, rate
        self.head_ = head.eval()
        self._check_head_fits()
        return self
