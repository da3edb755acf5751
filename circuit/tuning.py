"""Setting thresholds on a fitted circuit from cached held-out outputs.

The per-edge rule: in topological order, each edge gets the lowest threshold at which the sentences that stop
at its source still agree with the mamabear at entity-F1 >= budget. Pooled counts of groups that each reach
an F1 are at least that F1 (a mediant), so the whole circuit meets the budget on the tuning data when every
stop does. The rule is a point estimate; the joint optimizer adds the statistical guarantee.
"""

from __future__ import annotations

import numpy as np

from .metrics import span_counts
from .routing import CachedRun, Edge


def per_edge_thresholds(run: CachedRun, min_f1: float) -> dict[Edge, float]:
    topo = run.topology
    thresholds: dict[Edge, float] = {e: 1.0 for e in topo.edges}  # 1.0: every sentence goes on
    for edge in topo.edges_in_order():
        source = edge[0]
        at_source = np.flatnonzero(run.reach(thresholds)[source])
        if not len(at_source):
            continue
        answers = run.exit_answers(source)
        scores = run.scores[edge][at_source]
        order = np.argsort(-scores, kind="stable")
        counts = np.array([span_counts(answers[i], run.reference[i].spans) for i in at_source[order]]).reshape(-1, 3)
        tp, fp, fn = (np.cumsum(counts[:, k]) for k in range(3))
        denom = 2 * tp + fp + fn
        f1 = np.where(denom == 0, 1.0, 2 * tp / np.maximum(denom, 1))
        sorted_scores = scores[order]
        # a cut after position k lets the top k+1 stop; only cut between distinct scores
        distinct = np.append(sorted_scores[:-1] > sorted_scores[1:], True)
        ok = np.flatnonzero((f1 >= min_f1) & distinct)
        if len(ok):
            thresholds[edge] = float(sorted_scores[ok[-1]])
    return thresholds
