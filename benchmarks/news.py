"""The foundation figure: fit the news circuit on BBC News and measure it on unseen BBC articles.

    python benchmarks/news.py --out benchmarks/results/news.json
    python benchmarks/news.py --circuit circuits/news-student.yaml --fitted trained/news-student \
        --price rules=0 --price crf=0 --price student=0 --price mamabear=1 --out benchmarks/results/news-student-agree.json

Fits ``--circuit`` (default ``circuits/news.yaml``: learned keyword gate -> CRF -> spaCy en_core_web_md) into
``--fitted`` (default ``trained/news``; a folder that already holds a fitted circuit is reused, and the JSON's
``fit_seconds`` is then null) on the deduplicated BBC train sentences (split by article; the fit splits its
own warm-up into train / calibration / tuning parts in blocks of consecutive sentences), then for each budget re-tunes the thresholds from the cached held-out outputs and
runs ``Circuit.evaluate`` on the BBC test sentences: the circuit and the mamabear alone, side by side, same run.
``--price NODE=PRICE`` also tunes each budget on those prices (``BUDGET-priced`` in the JSON); ``--agree-with
'SOURCE->TARGET=NODE'`` refits the gates with (or, with an empty NODE, without) the agreement feature;
``--warmup N`` and ``--test-limit N`` take the first N sentences; ``--budgets`` defaults to 0.99 0.95.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from babybear import Circuit
from babybear.doors.cli import parse_costs
from babybear.corpus import bbc_sentences


def _without_bins(report: dict) -> dict:
    """A gate report without its reliability bins (they are in the plots), at every level."""
    return {k: _without_bins(v) if isinstance(v, dict) else v for k, v in report.items() if k != "bins"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--circuit", default="circuits/news.yaml", help="circuit YAML to fit when --fitted holds none")
    parser.add_argument("--fitted", default="trained/news", help="reuse this fitted folder if it exists, else fit into it")
    parser.add_argument("--warmup", type=int, default=0, help="use only the first N train sentences (0: all)")
    parser.add_argument("--test-limit", type=int, default=0, help="evaluate on the first N test sentences (0: all)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.99, 0.95])
    parser.add_argument(
        "--price",
        action="append",
        default=[],
        metavar="NODE=PRICE",
        help="also tune and evaluate with these node prices instead of the measured costs (repeatable; "
        "e.g. --price mamabear=1 --price crf=0 minimises mamabear calls, as where a GPU mamabear is the bill)",
    )
    parser.add_argument(
        "--agree-with",
        action="append",
        default=[],
        metavar="SOURCE->TARGET=NODE",
        help="give that edge's gate the agreement with NODE as evidence, refitting the gates from the fitted "
        "folder's cached outputs (no model is re-trained); e.g. --agree-with 'student->mamabear=crf'; an empty "
        "NODE takes the agreement away",
    )
    parser.add_argument("--out", default="benchmarks/results/news.json", help="JSON path")
    args = parser.parse_args()
    prices = parse_costs(args.price)

    train, test = bbc_sentences()
    train = train[: args.warmup] if args.warmup else train
    test = test[: args.test_limit] if args.test_limit else test
    fitted = Path(args.fitted)
    start = time.perf_counter()
    if (fitted / "circuit.yaml").is_file():
        circuit = Circuit.load(fitted)
        fit_seconds = None
    else:
        circuit = Circuit.from_yaml(args.circuit).fit(train)
        fit_seconds = time.perf_counter() - start
        circuit.save(fitted)
    if args.agree_with:
        circuit.set_params(**{f"{e}__agree_with": node or None for e, _, node in (a.rpartition("=") for a in args.agree_with)})
        circuit.fit_gates()
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}",
        "circuit": circuit.to_dict(),
        "warm_up": circuit.report_.get("warm_up"),
        "fit_seconds": fit_seconds,
        "babybear_f1_alone_on_tuning": circuit.report_.get("babybear_f1_alone"),
        "gates": {k: _without_bins(g) for k, g in circuit.report_.get("gates", {}).items()},
        "test_sentences": len(test),
        "budgets": {},
    }
    for budget in args.budgets:
        for key, costs in [("", None)] + ([("priced", prices)] if prices else []):
            circuit.tune(budget, costs=costs)
            report = circuit.evaluate(test)
            report["thresholds"] = {f"{s}->{t}": v for (s, t), v in circuit.thresholds.items()}
            report["enabled"] = {n: circuit.slot(n).enabled for n in circuit.graph}
            report["tuning"] = circuit.report_["tuning"]
            report["cost_override"] = circuit.report_["cost_override"]
            report["f1_lower_bound_on_tuning"] = circuit.report_.get("optimizer", {}).get("f1_lower_bound")
            result["budgets"][f"{budget}{'-' + key if key else ''}"] = report
            print(
                f"budget {budget}{' (priced ' + str(costs) + ')' if costs else ''}: test entity-F1 vs mamabear "
                f"{report['entity_f1_vs_mamabear']:.4f}, mamabear calls avoided {report['mamabear_calls_avoided']:.1%}, "
                f"wall-time ratio {report['wall_time_ratio']:.2f}"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
