"""What ``babybear report`` says of a fitted circuit, on its held-out tuning split: thresholds, F1, calls and tokens
avoided, who answered, the (cost, F1) frontier, the price tag and each gate's calibration; and its plots."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import plots
from .errors import BabybearError
from .tuning.optimizer import optimize

if TYPE_CHECKING:
    from .circuit import Circuit


def held_out_report(circuit: Circuit, price_per_hour: float, watts: float) -> dict[str, Any]:
    """The figures of a fitted circuit on its held-out tuning split (no model is run)."""
    if circuit.heldout_ is None:
        raise BabybearError("no held-out cache (heldout.json): refit the circuit to report on it")
    run = circuit.heldout_.tuning
    thresholds = circuit.thresholds
    now = run.evaluate(thresholds)
    # The frontier is in the units the circuit was tuned in: prices where tune had a cost override, else seconds.
    override = circuit.report_.get("cost_override") or {}
    tuned_on = circuit.report_.get("tuned_on") or {}
    # the stored frontier is of the run tuned on: shown beside the held-out figures only if that run was the held-out one
    stored = circuit.report_.get("optimizer") if tuned_on.get("source") == "held-out tuning split" else None
    mama = run.topology.mamabear
    return {
        "thresholds": thresholds,
        "tuned_elsewhere": tuned_on.get("texts") if tuned_on.get("source") == "given run" else None,
        "texts": run.n,
        "now": now,
        "unit": "price per token (cost_override)" if override else "seconds per token",
        "tuned_cost": replace(run, costs={**run.costs, **override}).evaluate(thresholds)["cost_per_token"],
        "optimizer": stored or optimize(run, circuit.budget, method="per_edge").to_dict(),
        "price_tag": plots.price_tag(now["cost_per_token"], run.costs.get(mama, 0.0), now["mamabear_calls_avoided"], float(run.tokens.mean()), price_per_hour, watts),
        "calibration": {f"{s}->{t}": run.calibration((s, t)) for s, t in circuit.graph.edges},
    }


def write_plots(report: dict[str, Any], min_f1: float, out: Path) -> list[Path]:
    """The report's PNGs in ``out``: frontier with the chosen point, texts answered per node, gate calibration,
    price tag."""
    chosen = {"cost_per_token": report["tuned_cost"], "f1": report["now"]["f1"]}
    return [
        plots.frontier(report["optimizer"]["frontier"], chosen, min_f1, out / "frontier.png", cost_label=report["unit"]),
        plots.answered(report["now"]["answered"], out / "answered.png"),
        plots.calibration(report["calibration"], out / "calibration.png", f"on the {report['texts']} tuning texts (the gates learned on others)"),
        plots.price(report["price_tag"], out / "price.png"),
    ]
