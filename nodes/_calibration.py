"""Temperature scaling and its measure, for the nodes whose probabilities gates read (the student, early exits)."""

from __future__ import annotations

import math

import numpy as np

from babybear.metrics import expected_calibration_error


def top_label_calibration_error(probs: np.ndarray, labels: np.ndarray) -> float:
    """ECE of the top label's probability over 15 equal-width bins (``probs``: (n, k); ``labels``: (n,))."""
    return expected_calibration_error(probs.max(axis=1), probs.argmax(axis=1) == labels, n_bins=15)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of ``labels`` under softmax(logits / T)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    if len(labels) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        z = logits / math.exp(log_t)
        return float((logsumexp(z, axis=1) - z[np.arange(len(labels)), labels]).mean())

    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(res.x))
