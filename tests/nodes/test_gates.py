"""The calibrated gate: a text's score depends on its own evidence only, bit for bit, whatever the batch."""

from __future__ import annotations

import numpy as np
import pytest

from babybear.nodes.gates import CalibratedGate


def _evidence(n: int, seed: int) -> tuple[list[dict[str, float]], list[bool]]:
    rng = np.random.default_rng(seed)
    keys = ["log_prob", "min_marginal", "mean_marginal", "n_spans", "n_tokens", "unknown", "agree"]
    x = rng.normal(size=(n, len(keys))) * rng.uniform(0.01, 50, size=len(keys))
    evidence = [dict(zip(keys, map(float, row))) for row in x]
    agrees = (x[:, 0] + 0.3 * x[:, 1] + rng.normal(size=n) > 0).tolist()
    return evidence, agrees


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_a_score_is_the_same_bits_alone_and_in_batches_of_any_size(method):
    evidence, agrees = _evidence(1200, seed=0)
    gate = CalibratedGate(method=method).fit(evidence[:600], agrees[:600])
    whole = gate.score(evidence)
    alone = np.array([gate.score([e])[0] for e in evidence])
    assert alone.tobytes() == whole.tobytes()
    for size in (7, 512):
        batched = np.concatenate([gate.score(evidence[i : i + size]) for i in range(0, len(evidence), size)])
        assert batched.tobytes() == whole.tobytes()


def test_scores_are_calibrated_probabilities_strictly_inside_0_1():
    evidence, agrees = _evidence(2000, seed=1)
    gate = CalibratedGate().fit(evidence[:1000], agrees[:1000])
    scores = gate.score(evidence[1000:])
    assert ((scores > 0) & (scores < 1)).all()
    held = np.asarray(agrees[1000:])
    assert abs(scores.mean() - held.mean()) < 0.05  # Platt scaling: the mean score tracks the agreement rate
    assert scores[held].mean() > scores[~held].mean() + 0.2  # and it separates the two
    assert gate.score([{"log_prob": 1e6}])[0] == pytest.approx(1 - 1e-6) or gate.score([{"log_prob": -1e6}])[0] == pytest.approx(1e-6)
