"""How :class:`~babybear.nodes.transformer.TransformerTagger` learns: the mamabear's answers as word targets (hard
BIO labels and, where it gives them, its token distributions), the fine-tuning loop with held-out early stopping,
and the temperature that calibrates the result.

The node's :meth:`fit` and :meth:`calibration_error` call :func:`fit` and :func:`calibration_error` here; what the
student runs (tokens, windows, the torch module, decoding) stays with the node in ``transformer.py``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from babybear.errors import BabybearError, NotFittedError
from babybear.types import Prediction, Span
from babybear.nodes import _align
from babybear.nodes._calibration import fit_temperature, top_label_calibration_error

if TYPE_CHECKING:
    from babybear.nodes.transformer import TransformerTagger, _Encoded


def bio_labels(references: Sequence[Prediction]) -> list[str]:
    """``O`` plus ``B-``/``I-`` for every entity type in the mamabear's spans and token distributions."""
    types = {s.label for p in references for s in p.spans}
    for p in references:
        for _, _, dist in p.token_probs or ():
            types.update(tag.partition("-")[2] for tag in dist if tag != "O")
    types.discard("")
    return ["O"] + [f"{prefix}-{t}" for t in sorted(types) for prefix in ("B", "I")]


def _word_targets(enc: _Encoded, spans: Sequence[Span], label2id: dict[str, int]) -> np.ndarray:
    """A label id on each word's first token (``B-`` on the first word a span touches, ``I-`` after), -100 elsewhere."""
    targets = np.full(len(enc.ids), -100, dtype=np.int64)
    spans = sorted(spans)
    j, prev = 0, -1
    for first, ws, we in enc.words():
        while j < len(spans) and spans[j].end <= ws:
            j += 1
        if j < len(spans) and spans[j].start < we:
            targets[first] = label2id[("I-" if j == prev else "B-") + spans[j].label]
            prev = j
        else:
            targets[first] = label2id["O"]
            prev = -1
    return targets


def _soft_targets(
    enc: _Encoded, token_probs: Sequence[tuple[int, int, dict[str, float]]], label2id: dict[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The mamabear's distribution on each word whose start matches one of its tokens', and where there is one."""
    by_start = {s: dist for s, _, dist in token_probs}
    soft = np.zeros((len(enc.ids), len(label2id)), dtype=np.float32)
    mask = np.zeros(len(enc.ids), dtype=bool)
    for first, ws, _ in enc.words():
        dist = by_start.get(ws)
        if not dist:
            continue
        for tag, p in dist.items():
            if tag in label2id:
                soft[first, label2id[tag]] = p
        total = soft[first].sum()
        if total > 0:
            soft[first] /= total
            mask[first] = True
    return soft, mask


def restart_rate(encs: Sequence[_Encoded], reference: Sequence[Prediction], label2id: dict[str, int]) -> float:
    """How often a word right after an ``X`` entity starts a new ``X`` entity rather than continuing it, in the
    mamabear's labels (add-one smoothed): the one learned score of :func:`_align.bio_transitions`."""
    id2label = {i: label for label, i in label2id.items()}
    restarts = continues = 0
    for enc, ref in zip(encs, reference):
        targets = _word_targets(enc, [s for s in ref.spans if f"B-{s.label}" in label2id], label2id)
        tags = [id2label[int(t)] for t in targets if t != -100]
        for a, b in zip(tags[:-1], tags[1:]):
            if a != "O" and b != "O" and a[2:] == b[2:]:
                restarts += b.startswith("B-")
                continues += b.startswith("I-")
    return (restarts + 1) / (restarts + continues + 2)


def _length_bucketed(lengths: Sequence[int], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of indices whose members have similar lengths (less padding on CPU)."""
    order = rng.permutation(len(lengths))
    pool = batch_size * 50
    batches = []
    for i in range(0, len(order), pool):
        chunk = sorted(order[i : i + pool], key=lambda k: lengths[k])
        batches += [np.array(chunk[j : j + batch_size]) for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


# -- the fine-tuning loop ----------------------------------------------------------------------------------------
def fit(student: TransformerTagger, texts: Sequence[str], reference: Sequence[Prediction]) -> TransformerTagger:
    """Fine-tune on the mamabear's answers; early-stop on held-out exact-sentence agreement; calibrate."""
    import torch
    from tqdm.auto import tqdm

    if len(texts) != len(reference):
        raise BabybearError(
            f"TransformerTagger.fit got {len(texts)} texts but {len(reference)} reference predictions"
        )
    p = student.params
    started = time.perf_counter()
    torch.manual_seed(p.seed)
    rng = np.random.default_rng(p.seed)
    student._load_pretrained_tokenizer()
    student._session, student._onnx_dir, student._tmp = None, None, None  # ONNX graphs of an earlier model are stale
    student.labels_ = bio_labels(reference)
    label2id = {label: i for i, label in enumerate(student.labels_)}
    student.temperature_ = 1.0
    student.model_ = student._build_model(pretrained=True)
    device = student._torch_device()
    student.model_.to(device)

    order = rng.permutation(len(texts))
    n_held = min(max(1, round(0.1 * len(texts))), len(texts) - 1) if len(texts) > 1 else 0
    held, train = sorted(order[:n_held]), sorted(order[n_held:])
    encs = student._encode(texts)
    examples = _training_examples(student, [encs[i] for i in train], [reference[i] for i in train], label2id)
    held_encs = [encs[i] for i in held]
    held_ref = [reference[i] for i in held]
    student.restart_rate_ = restart_rate([encs[i] for i in train], [reference[i] for i in train], label2id)

    trainable = [w for w in student.model_.parameters() if w.requires_grad]  # the word embeddings are frozen
    optimizer = torch.optim.AdamW(trainable, lr=p.lr, weight_decay=0.01)
    steps = p.epochs * math.ceil(len(examples) / p.batch_size)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    scaler = torch.amp.GradScaler("cuda", enabled=device == "cuda" and student._amp_dtype() == torch.float16)
    lengths = [len(ex["input_ids"]) for ex in examples]
    history: list[float] = []
    best_state, best, stale = None, -1.0, 0
    for epoch in range(p.epochs):
        student.model_.train()
        batches = _length_bucketed(lengths, p.batch_size, rng)
        for idx in tqdm(batches, desc=f"student epoch {epoch + 1}/{p.epochs}", unit="batch", disable=None):
            _step(student, _collate_training(student, [examples[k] for k in idx], device), optimizer, scaler)
            schedule.step()
        if not held_encs:
            continue
        agreement = _agreement(student, held_encs, held_ref)
        history.append(agreement)
        if agreement > best:
            best, stale = agreement, 0
            best_state = {k: v.detach().clone() for k, v in student.model_.state_dict().items()}
        else:
            stale += 1
            if stale >= p.early_stopping_patience:
                break
    if best_state is not None:
        student.model_.load_state_dict(best_state)
    student.model_.eval()
    _calibrate(student, held_encs, held_ref)
    student.report_.update(
        n_train_texts=len(train),
        n_heldout_texts=len(held),
        n_train_windows=len(examples),
        heldout_agreement_per_epoch=history,
        heldout_agreement=best if history else None,
        epochs_run=len(history) if history else p.epochs,
        train_seconds=time.perf_counter() - started,
    )
    return student


def _step(student: TransformerTagger, batch: dict[str, Any], optimizer: Any, scaler: Any) -> None:
    """One optimisation step (mixed precision on CUDA, gradients clipped to norm 1)."""
    import torch

    with student._autocast():
        loss = _loss(student, batch)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_([w for group in optimizer.param_groups for w in group["params"]], 1.0)
    scaler.step(optimizer)
    scaler.update()


def _training_examples(
    student: TransformerTagger, encs: Sequence[_Encoded], reference: Sequence[Prediction], label2id: dict[str, int]
) -> list[dict[str, np.ndarray]]:
    """One example per token window: model inputs, hard targets and (where given) soft targets."""
    size = student.params.max_length - 2
    examples = []
    for enc, ref in zip(encs, reference):
        targets = _word_targets(enc, ref.spans, label2id)
        soft = _soft_targets(enc, ref.token_probs, label2id) if ref.token_probs else None
        for s, e in _align.token_windows(len(enc.ids), size, size - student.params.stride):
            if e <= s:
                continue
            ex = student._inputs(enc, s, e)
            ex["targets"] = np.concatenate([[-100], targets[s:e], [-100]])
            if soft is not None:
                pad = np.zeros((1, len(label2id)), dtype=np.float32)
                ex["soft"] = np.concatenate([pad, soft[0][s:e], pad])
                ex["soft_mask"] = np.concatenate([[False], soft[1][s:e], [False]])
            examples.append(ex)
    return examples


def _collate_training(
    student: TransformerTagger, examples: Sequence[dict[str, np.ndarray]], device: str
) -> dict[str, Any]:
    import torch

    batch = {k: torch.from_numpy(v).to(device) for k, v in student._pad(examples).items()}
    n = batch["input_ids"].shape[1]
    targets = np.full((len(examples), n), -100, dtype=np.int64)
    for row, ex in enumerate(examples):
        targets[row, : len(ex["targets"])] = ex["targets"]
    batch["targets"] = torch.from_numpy(targets).to(device)
    if any("soft" in ex for ex in examples):
        soft = np.zeros((len(examples), n, len(student.labels_)), dtype=np.float32)
        mask = np.zeros((len(examples), n), dtype=bool)
        for row, ex in enumerate(examples):
            if "soft" in ex:
                soft[row, : len(ex["soft"])] = ex["soft"]
                mask[row, : len(ex["soft_mask"])] = ex["soft_mask"]
        batch["soft"] = torch.from_numpy(soft).to(device)
        batch["soft_mask"] = torch.from_numpy(mask).to(device)
    return batch


def _loss(student: TransformerTagger, batch: dict[str, Any]) -> Any:
    """Cross-entropy on hard labels, mixed with temperature-softened KL to the mamabear where it gave any."""
    import torch.nn.functional as F

    soft, mask = batch.pop("soft", None), batch.pop("soft_mask", None)
    targets = batch.pop("targets")
    logits = student.model_(**batch).float()
    hard = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    if soft is None or not mask.any():
        return hard
    t = student.params.distill_temperature
    teacher = soft[mask].clamp_min(1e-8) ** (1 / t)
    teacher = teacher / teacher.sum(-1, keepdim=True)
    kl = F.kl_div(F.log_softmax(logits[mask] / t, -1), teacher, reduction="batchmean") * t * t
    w = student.params.soft_weight
    return (1 - w) * hard + w * kl


def _agreement(student: TransformerTagger, encs: Sequence[_Encoded], reference: Sequence[Prediction]) -> float:
    """Fraction of texts whose decoded spans equal the mamabear's exactly."""
    student.model_.eval()
    preds = student._decode(encs, student._logits(encs))
    return float(np.mean([p.spans == r.spans for p, r in zip(preds, reference)]))


def _calibration_data(
    student: TransformerTagger, encs: Sequence[_Encoded], reference: Sequence[Prediction]
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and the mamabear's label on every word's first token, over all texts."""
    label2id = {label: i for i, label in enumerate(student.labels_)}
    zs, ys = [np.zeros((0, len(student.labels_)), dtype=np.float32)], [np.zeros(0, dtype=np.int64)]
    for enc, ref, logits in zip(encs, reference, student._logits(encs)):
        targets = _word_targets(enc, [s for s in ref.spans if f"B-{s.label}" in label2id], label2id)
        keep = targets != -100
        zs.append(logits[keep])
        ys.append(targets[keep])
    return np.concatenate(zs), np.concatenate(ys)


def _calibrate(student: TransformerTagger, encs: Sequence[_Encoded], reference: Sequence[Prediction]) -> None:
    """Fit the temperature on held-out first-subword tokens; record ECE before and after."""
    z, y = _calibration_data(student, encs, reference)
    student.temperature_ = fit_temperature(z, y)
    student.report_ = {
        "temperature": student.temperature_,
        "calibration_tokens": int(len(y)),
        "ece_before": top_label_calibration_error(_align.softmax(z), y),
        "ece_after": top_label_calibration_error(_align.softmax(z / student.temperature_), y),
    }


def calibration_error(
    student: TransformerTagger, texts: Sequence[str], reference: Sequence[Prediction]
) -> dict[str, float]:
    """ECE of the word probabilities against the mamabear on ``texts``, without and with the temperature."""
    if not student.is_fitted:
        raise NotFittedError("TransformerTagger is not fitted: call fit() or from_disk() first")
    student.warm_up()
    z, y = _calibration_data(student, student._encode(texts), reference)
    return {
        "ece_unscaled": top_label_calibration_error(_align.softmax(z), y),
        "ece_scaled": top_label_calibration_error(_align.softmax(z / student.temperature_), y),
        "tokens": float(len(y)),
    }
