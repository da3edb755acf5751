"""Calibrated confidence gates: P(the source node's answer equals the mamabear's), from its evidence."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from babybear.errors import NotFittedError
from babybear.metrics import calibration_report
from babybear.node import Gate
from babybear.node import Params as NodeParams

EPS = 1e-6


class CalibratedGate(Gate):
    """Logistic regression over standardised evidence (Platt scaling), optionally followed by isotonic.

    Scores lie strictly inside (0, 1), so a threshold of 1 sends every sentence on and 0 sends none.
    """

    class Params(NodeParams):
        """``method``: Platt scaling alone, or followed by isotonic regression; ``C``: inverse L2 strength."""

        method: Literal["platt", "isotonic"] = "platt"
        C: float = 1.0

    params: CalibratedGate.Params

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.state_: dict[str, Any] | None = None

    def _features(self, evidence: Sequence[dict[str, float]]) -> np.ndarray:
        assert self.state_ is not None
        keys = self.state_["features"]
        x = np.array([[float(e.get(k, 0.0)) for k in keys] for e in evidence], dtype=float).reshape(len(evidence), len(keys))
        return (x - np.array(self.state_["mean"])) / np.array(self.state_["scale"])

    def fit(self, evidence: Sequence[dict[str, float]], agrees: Sequence[bool]) -> CalibratedGate:
        """Fit on held-out evidence and whether the source agreed with the mamabear; the report gets the ECE on
        these same rows (the circuit also measures it on its tuning rows: ``CachedRun.calibration``)."""
        from sklearn.isotonic import IsotonicRegression
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(agrees, dtype=int)
        keys = sorted({k for e in evidence for k in e})
        x = np.array([[float(e.get(k, 0.0)) for k in keys] for e in evidence], dtype=float).reshape(len(y), len(keys))
        mean, scale = x.mean(axis=0) if len(y) else np.zeros(len(keys)), x.std(axis=0) if len(y) else np.ones(len(keys))
        scale[scale == 0] = 1.0
        state: dict[str, Any] = {"features": keys, "mean": mean.tolist(), "scale": scale.tolist(), "method": self.params.method}
        if len(set(y.tolist())) < 2 or not keys:  # nothing to separate: a constant gate at the observed rate
            state.update(coef=[0.0] * len(keys), intercept=float(np.log((y.mean() + EPS) / (1 - y.mean() + EPS))) if len(y) else 0.0)
        else:
            lr = LogisticRegression(C=self.params.C, max_iter=1000).fit((x - mean) / scale, y)
            state.update(coef=lr.coef_[0].tolist(), intercept=float(lr.intercept_[0]))
        self.state_ = state
        if self.params.method == "isotonic" and len(set(y.tolist())) == 2:
            iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(self._linear(evidence), y)
            state.update(iso_x=iso.X_thresholds_.tolist(), iso_y=iso.y_thresholds_.tolist())
        state["report"] = calibration_report(self.score(evidence), y)
        return self

    def _linear(self, evidence: Sequence[dict[str, float]]) -> np.ndarray:
        """The logistic model's linear score per row, summed feature by feature: only elementwise arithmetic,
        so a row's score is the same bits alone or in a batch of any size (a matrix product's BLAS kernel sums
        in an order that depends on the batch's shape, and thresholds sit one ulp above tuned scores)."""
        assert self.state_ is not None
        x = self._features(evidence)
        z = np.full(len(x), float(self.state_["intercept"]))
        for j, c in enumerate(self.state_["coef"]):
            z = z + x[:, j] * float(c)
        return z

    def score(self, evidence: Sequence[dict[str, float]]) -> np.ndarray:
        """P(the source agrees with the mamabear) per evidence dict, strictly inside (0, 1)."""
        if self.state_ is None:
            raise NotFittedError("gate is not fitted: call Circuit.fit first")
        if not len(evidence):
            return np.zeros(0)
        z = self._linear(evidence)
        if "iso_x" in self.state_:
            p = np.interp(z, self.state_["iso_x"], self.state_["iso_y"])
        else:
            p = np.array([1.0 / (1.0 + math.exp(-v)) if v > -700 else 0.0 for v in z.tolist()])  # libm per row, as np.exp's SIMD path may not be
        return np.clip(p, EPS, 1 - EPS)

    @property
    def report(self) -> dict[str, Any]:
        """Calibration on the rows it was fitted on: n, agree rate, ECE and reliability bins."""
        return (self.state_ or {}).get("report", {})

    def to_dict(self) -> dict[str, Any]:
        if self.state_ is None:
            raise NotFittedError("gate is not fitted: nothing to save")
        return self.state_

    def load_dict(self, state: dict[str, Any]) -> CalibratedGate:
        """Restore :meth:`to_dict`'s state; ValueError names what is missing, inconsistent or not a finite number."""
        required = ("features", "mean", "scale", "coef", "intercept")
        if not isinstance(state, dict) or any(k not in state for k in required):
            missing = [k for k in required if not isinstance(state, dict) or k not in state]
            raise ValueError(f"gate state lacks {', '.join(missing)}")
        lists = [k for k in ("features", "mean", "scale", "coef", "iso_x", "iso_y") if k in state]
        if not all(isinstance(state[k], list) for k in lists) or not all(isinstance(f, str) for f in state["features"]):
            raise ValueError(f"gate state: {', '.join(lists)} must be lists (of names for features, else of numbers)")
        if not len(state["features"]) == len(state["mean"]) == len(state["scale"]) == len(state["coef"]):
            raise ValueError("gate state: features, mean, scale and coef differ in length")
        if ("iso_x" in state) != ("iso_y" in state):
            raise ValueError("gate state: iso_x and iso_y come together")
        numbers = [(f"{k}[{i}]", v) for k in lists[1:] for i, v in enumerate(state[k])] + [("intercept", state["intercept"])]
        for where, v in numbers:  # a NaN would compare false with every threshold and route every text one way
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"gate state: {where} is {v!r}, not a finite number")
        if any(v == 0 for v in state["scale"]):
            raise ValueError("gate state: a scale of 0 (features are divided by it)")
        if state.get("method", "platt") not in ("platt", "isotonic"):
            raise ValueError(f"gate state: method {state['method']!r}; known: platt, isotonic")
        iso_x, iso_y = state.get("iso_x", []), state.get("iso_y", [])
        if len(iso_x) != len(iso_y) or any(a > b for a, b in zip(iso_x, iso_x[1:])) or any(not 0 <= v <= 1 for v in iso_y):
            raise ValueError("gate state: iso_x must rise, with one iso_y in [0, 1] for each")
        self.state_ = dict(state)
        return self
