"""Subword token classifiers → character spans, for any tokenizer that reports offsets and word ids.

Long inputs are cut into overlapping token windows (:func:`run_windowed`, shared by the mamabears and the student);
every token takes its outputs from the window in which it sits furthest from an edge, so an entity that straddles
a window boundary is still seen whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from babybear.records import clean_text
from babybear.types import Prediction, Span

if TYPE_CHECKING:
    from tokenizers import Tokenizer

LogitsFn = Callable[[dict[str, np.ndarray]], np.ndarray]
"""A model: int64 ``input_ids``, ``attention_mask``, ``token_type_ids`` of shape (batch, length) → logits
(batch, length, n_labels)."""


Window = tuple[int, int, int]
"""One window of one text: (text index, first token, end token), tokens counted without special tokens."""


def check_stride(stride: int, max_length: int) -> None:
    """The rule for a node's ``stride``, the tokens neighbouring windows share (as in Hugging Face's tokenizers):
    at most half of ``max_length``. ValueError otherwise."""
    if not 0 <= stride <= max_length // 2:
        raise ValueError(
            f"stride ({stride}) is the number of tokens neighbouring windows share: it must be between 0 and "
            f"max_length // 2 = {max_length // 2}"
        )


def token_windows(n_tokens: int, size: int, step: int) -> list[tuple[int, int]]:
    """Half-open token ranges of at most ``size`` tokens, each starting ``step`` after the last, covering all."""
    if size <= 0 or not 0 < step <= size:
        raise ValueError(f"need 0 < step <= size, got size={size} step={step}")
    if n_tokens <= size:
        return [(0, n_tokens)]
    starts = list(range(0, n_tokens - size, step)) + [n_tokens - size]
    return [(s, s + size) for s in starts]


def stitch(n_tokens: int, windows: Sequence[tuple[int, int]], probs: Sequence[np.ndarray]) -> np.ndarray:
    """Per-token probabilities for the whole text from per-window ones (each ``(end - start, n_labels)``)."""
    out = np.zeros((n_tokens, probs[0].shape[1] if probs else 1), dtype=np.float32)
    best = np.full(n_tokens, -1.0)
    for (s, e), p in zip(windows, probs):
        idx = np.arange(s, e)
        centrality = np.minimum(idx - s, e - 1 - idx).astype(float)
        take = centrality > best[s:e]
        out[idx[take]] = p[take]
        best[s:e] = np.where(take, centrality, best[s:e])
    return out


def run_windowed(
    lengths: Sequence[int],
    run: Callable[[Sequence[Window]], Sequence[np.ndarray]],
    *,
    size: int,
    overlap: int,
    batch_size: int,
    n_labels: int,
) -> list[np.ndarray]:
    """Per-token model outputs, one ``(n_tokens, n_labels)`` array per text of ``lengths[i]`` tokens.

    Each text is cut into windows of at most ``size`` tokens that share ``overlap`` tokens (:func:`token_windows`);
    the windows of all texts go to ``run`` sorted by length, longest first (the first batch is the largest), in
    batches of ``batch_size``; ``run`` returns each window's outputs, ``(end - start, n_labels)``, and
    :func:`stitch` puts them back together.
    """
    if not 0 <= overlap < size:
        raise ValueError(f"need 0 <= overlap < {size} (the window less its special tokens), got {overlap}")
    windows = [token_windows(n, size, size - overlap) if n else [] for n in lengths]
    jobs = [(t, s, e) for t, wins in enumerate(windows) for s, e in wins]
    jobs.sort(key=lambda j: (j[2] - j[1], j[0], j[1]), reverse=True)
    outputs: dict[Window, np.ndarray] = {}
    for b in range(0, len(jobs), batch_size):
        batch = jobs[b : b + batch_size]
        outputs.update(zip(batch, run(batch)))
    return [
        stitch(n, wins, [outputs[t, s, e] for s, e in wins]) if wins else np.zeros((0, n_labels), dtype=np.float32)
        for t, (n, wins) in enumerate(zip(lengths, windows))
    ]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def bio_transitions(id2label: dict[int, str], restart_rate: float = 1.0) -> np.ndarray:
    """Log-scores of label ``b`` following label ``a`` (row ``a``; the last row is the start of a text).

    ``I-X`` may only follow ``B-X`` or ``I-X`` (score -inf elsewhere). ``B-X`` right after an ``X`` word, a new
    ``X`` entity touching the last, scores ``log(restart_rate)``: how often the teacher does that (rarely: a
    tagger that says ``B-PERSON B-PERSON`` for "Mr Blair" almost always means one person). Everything else: 0.
    """
    labels = [id2label[i] for i in range(len(id2label))]
    types = [lab.partition("-")[2] if lab != "O" else "" for lab in labels]
    scores = np.zeros((len(labels) + 1, len(labels)))
    for b, lab in enumerate(labels):
        for a in range(len(labels) + 1):
            inside = a < len(labels) and types[a] != "" and types[a] == types[b]
            if lab.startswith("I-") and not inside:
                scores[a, b] = -np.inf
            elif lab.startswith("B-") and inside:
                scores[a, b] = np.log(restart_rate)
    return scores


def viterbi(log_probs: np.ndarray, transitions: np.ndarray) -> list[int]:
    """The label sequence maximising the sum of ``log_probs`` (words, labels) and ``transitions`` (see
    :func:`bio_transitions`)."""
    n_labels = log_probs.shape[1]
    best = log_probs.argmax(axis=1)
    if not transitions[np.concatenate([[n_labels], best[:-1]]), best].any():
        return best.tolist()  # no transition score is positive: each word's best label, when all free, is optimal
    score = log_probs[0] + transitions[n_labels]
    back = []
    inner, columns = transitions[:n_labels], np.arange(n_labels)
    for row in log_probs[1:]:
        candidates = score[:, None] + inner
        pointers = candidates.argmax(axis=0)
        back.append(pointers)
        score = candidates[pointers, columns] + row  # the column maxima, read where argmax found them
    path = [int(score.argmax())]
    for pointers in reversed(back):
        path.append(int(pointers[path[-1]]))
    return path[::-1]


def decode(
    offsets: Sequence[tuple[int, int]],
    word_ids: Sequence[int | None],
    probs: np.ndarray,
    id2label: dict[int, str],
    keep_token_probs: bool = False,
    transitions: np.ndarray | None = None,
) -> Prediction:
    """BIO-decode word-level labels (each word labelled by its first subword) into character spans.

    Each word takes its most probable label, or, given ``transitions`` (from :func:`bio_transitions`), the label
    on the most probable label sequence (:func:`viterbi`). A word tagged ``I-X`` continues an ``X`` entity; so
    does a ``B-X`` word glued to it with no character in between (models that tag every piece of an e-mail
    ``B-EMAIL`` still give one span).

    ``offsets``/``word_ids`` are per token (special tokens have word id None and are skipped). Evidence: the
    log-probability of the decoded word sequence, the weakest word's probability, the mean, the weakest
    probability inside an entity, and counts.
    """
    starts: list[int] = []
    ends: list[int] = []
    first: list[int] = []  # each word's first token: the one whose probabilities label it
    last = None
    for i, (s, e), w in zip(range(len(probs)), offsets, word_ids):
        if w is None or e <= s:
            continue
        if w == last:
            ends[-1] = e
        else:
            starts.append(s)
            ends.append(e)
            first.append(i)
            last = w
    word_probs = probs[first]  # (words, labels)
    if transitions is not None and first:
        chosen = viterbi(np.log(np.clip(word_probs, 1e-12, 1)), transitions)
    else:
        chosen = word_probs.argmax(axis=1).tolist() if first else []
    word_p = word_probs[np.arange(len(first)), chosen].astype(np.float64)
    spans: list[Span] = []
    cur: list | None = None  # [start, end, type]
    ent_p: list[float] = []
    for s, e, k, p in zip(starts, ends, chosen, word_p.tolist()):
        tag = id2label[k]
        prefix, _, typ = tag.partition("-")
        if tag == "O" or not typ:
            if cur:
                spans.append(Span(*cur))
            cur = None
            continue
        ent_p.append(p)
        if cur and cur[2] == typ and (prefix == "I" or s == cur[1]):
            cur[1] = e
        else:
            if cur:
                spans.append(Span(*cur))
            cur = [s, e, typ]
    if cur:
        spans.append(Span(*cur))
    n_words = len(first)
    evidence = {
        "log_seq_prob": float(np.log(np.clip(word_p, 1e-12, 1)).sum()) if n_words else 0.0,
        "min_prob": float(word_p.min()) if n_words else 1.0,
        "mean_prob": float(word_p.mean()) if n_words else 1.0,
        "min_entity_prob": min(ent_p) if ent_p else 1.0,
        "n_words": float(n_words),
        "n_spans": float(len(spans)),
    }
    token_probs = None
    if keep_token_probs:
        names = [id2label[j] for j in range(word_probs.shape[1])] if first else []
        token_probs = [(s, e, dict(zip(names, row))) for s, e, row in zip(starts, ends, word_probs.tolist())]
    return Prediction(spans=tuple(spans), evidence=evidence, token_probs=token_probs)


def untruncated(tokenizer: Tokenizer) -> Tokenizer:
    """``tokenizer`` itself, set to neither truncate nor pad: its callers window and pad the tokens themselves."""
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def special_tokens(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after a single sequence (``[CLS]``, ``[SEP]``)."""
    enc = tokenizer.encode("a")
    content = [i for i, special in enumerate(enc.special_tokens_mask) if not special]
    return enc.ids[: content[0]], enc.ids[content[-1] + 1 :]


def classify(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    logits: LogitsFn,
    id2label: dict[int, str],
    *,
    max_length: int,
    overlap: int,
    batch_size: int,
    keep_token_probs: bool = False,
) -> list[Prediction]:
    """Run a subword token classifier over texts of any length; one Prediction per text, in order.

    Each text is tokenized once, cut into windows of at most ``max_length`` tokens (special tokens included)
    that share ``overlap`` tokens, and the windows of all texts are run sorted by length in batches of
    ``batch_size``, padded to the longest in each batch (:func:`run_windowed`). Decoding is :func:`decode`.
    """
    prefix, suffix = special_tokens(tokenizer)
    # a lone surrogate, which the tokenizer refuses, becomes U+FFFD (same length: offsets keep)
    encodings = tokenizer.encode_batch([clean_text(t) for t in texts], add_special_tokens=False)

    def run(batch: Sequence[Window]) -> list[np.ndarray]:
        width = len(prefix) + max(e - s for _, s, e in batch) + len(suffix)
        input_ids = np.zeros((len(batch), width), dtype=np.int64)  # padding id 0: masked out anyway
        attention_mask = np.zeros_like(input_ids)
        for row, (i, s, e) in enumerate(batch):
            ids = prefix + encodings[i].ids[s:e] + suffix
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": np.zeros_like(input_ids)}
        z = np.asarray(logits(inputs), dtype=np.float32)
        return [z[row, len(prefix) : len(prefix) + e - s] for row, (_, s, e) in enumerate(batch)]

    stitched = run_windowed(
        [len(enc.ids) for enc in encodings],
        run,
        size=max_length - len(prefix) - len(suffix),
        overlap=overlap,
        batch_size=batch_size,
        n_labels=len(id2label),
    )
    return [
        decode(enc.offsets, enc.word_ids, softmax(z), id2label, keep_token_probs)
        for enc, z in zip(encodings, stitched)
    ]
