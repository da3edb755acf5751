"""PNG figures for ``babybear report`` and the benchmarks (matplotlib, Agg backend), and the price tag they show."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def price_tag(
    cost_per_token: float, mamabear_cost_per_token: float, calls_avoided: float, tokens_per_text: float, price_per_hour: float, watts: float
) -> dict[str, dict[str, float]]:
    """Per 1M tokens, circuit vs mamabear alone: mamabear calls, compute seconds, dollars and kWh."""
    out = {}
    for name, cost, calls in [("circuit", cost_per_token, 1 - calls_avoided), ("mamabear_alone", mamabear_cost_per_token, 1.0)]:
        seconds = cost * 1e6
        out[name] = {
            "mamabear_calls": calls * 1e6 / max(tokens_per_text, 1e-9),
            "compute_seconds": seconds,
            "dollars": seconds / 3600 * price_per_hour,
            "kwh": seconds / 3600 * watts / 1000,
        }
    return out


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def frontier(
    points: Sequence[Mapping[str, float]],
    chosen: Mapping[str, float],
    budget: float,
    path: Path,
    others: Mapping[str, Mapping[str, float]] | None = None,
    cost_label: str = "seconds per token",
) -> Path:
    """The Pareto frontier of (cost per token, entity-F1), the budget line, the chosen point and optional others."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["cost_per_token"] for p in points], [p["f1"] for p in points], "o-", ms=3, color="0.5", label="Pareto frontier")
    ax.axhline(budget, ls="--", color="crimson", lw=1, label=f"budget {budget}")
    for name, p in (others or {}).items():
        ax.plot(p["cost_per_token"], p["f1"], "s", ms=7, label=name)
    ax.plot(chosen["cost_per_token"], chosen["f1"], "*", ms=14, color="black", label="chosen")
    ax.set_ylim(max(0.0, min(budget, chosen["f1"]) - 0.1), 1.005)  # the interesting part: near the budget
    ax.set_xlabel(cost_label)
    ax.set_ylabel("entity-F1 vs mamabear")
    ax.legend(fontsize=8)
    return _save(fig, path)


def answered(per_node: Mapping[str, float], path: Path) -> Path:
    """Share of texts each node answered."""
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(list(per_node), list(per_node.values()), color="tab:blue")
    ax.set_ylabel("share of texts answered")
    for i, v in enumerate(per_node.values()):
        ax.text(i, v, f"{v:.1%}", ha="center", va="bottom", fontsize=8)
    return _save(fig, path)


def calibration(gates: Mapping[str, Mapping[str, Any]], path: Path, title: str | None = None) -> Path:
    """Reliability curve of every gate from calibration bins (confidence vs observed agreement), e.g. on the
    tuning rows, which the gates did not learn from."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ":", color="0.5")
    for name, report in gates.items():
        bins = report.get("bins") or []
        ece = report.get("ece")
        label = f"{name} (ECE {ece:.3f})" if ece is not None else name
        ax.plot([b["confidence"] for b in bins], [b["observed"] for b in bins], "o-", ms=4, label=label)
    ax.set_xlabel("gate P(agree)")
    ax.set_ylabel("observed agreement")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def price(tag: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    """Dollars and kWh per 1M tokens, circuit vs mamabear alone."""
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    for ax, key, unit in zip(axes, ["mamabear_calls", "dollars", "kwh"], ["mamabear calls", "$", "kWh"]):
        ax.bar(list(tag), [tag[k][key] for k in tag], color=["tab:green", "tab:gray"])
        ax.set_title(f"{unit} per 1M tokens", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    return _save(fig, path)
