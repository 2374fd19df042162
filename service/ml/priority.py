"""Review priority: which unsure item a reviewer should see first.

priority = uncertainty (1 - margin between the two best scores)
         + a boost per user report (capped) + a boost that grows with repeat arrivals
         + a fixed boost for audit items (accepted automatically, so barely uncertain: without
           it they would wait behind every unsure item and the live precision they measure
           would come too late)
         - a diversity penalty for items close to one already ahead in the queue,
so the head of the queue is not ten near-copies of the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

REPORT_BOOST = 0.5
MAX_REPORTS_COUNTED = 3
ARRIVAL_BOOST = 0.1
AUDIT_BOOST = 0.5  # level with an unsure item whose two best scores are 0.5 apart
DIVERSITY_WEIGHT = 0.5
DIVERSITY_FLOOR = 0.8  # cosine below this is "different enough": no penalty


def margin_uncertainty(scores: Mapping[str, float]) -> float:
    """1 - (best - second best): 0 when sure, 1 when the top two tie."""
    top = sorted(scores.values(), reverse=True)
    if len(top) < 2:
        return 0.0
    return float(1.0 - (top[0] - top[1]))


def entropy_uncertainty(scores: Mapping[str, float]) -> float:
    """Normalised entropy of the score distribution, in [0, 1]."""
    p = np.clip(np.array(list(scores.values()), dtype=float), 1e-12, 1.0)
    if len(p) < 2:
        return 0.0
    return float(-(p * np.log(p)).sum() / math.log(len(p)))


def diversity_penalty(embedding: np.ndarray, ahead: np.ndarray) -> float:
    """Penalty from the most similar embedding among items already ahead in the queue."""
    if ahead.size == 0:
        return 0.0
    similarity = float((ahead @ embedding).max())
    return DIVERSITY_WEIGHT * max(0.0, similarity - DIVERSITY_FLOOR) / (1.0 - DIVERSITY_FLOOR)


def priority(
    *,
    uncertainty: float,
    reports: int = 0,
    arrivals: int = 1,
    penalty: float = 0.0,
    audit: bool = False,
) -> float:
    """Combine the terms; higher is reviewed first."""
    return (
        uncertainty
        + AUDIT_BOOST * audit
        + REPORT_BOOST * min(reports, MAX_REPORTS_COUNTED)
        + ARRIVAL_BOOST * math.log1p(max(arrivals - 1, 0))
        - penalty
    )


def rank_diverse(embeddings: np.ndarray, base: np.ndarray, k: int) -> list[int]:
    """Greedy top-k: each pick penalises the rest by its similarity to what was picked.

    Used to order a batch of candidates (simulation, re-prioritisation) the way the queue
    would present them.
    """
    chosen: list[int] = []
    remaining = list(range(len(base)))
    penalty = np.zeros(len(base))
    while remaining and len(chosen) < k:
        best = max(remaining, key=lambda i: base[i] - penalty[i])
        chosen.append(best)
        remaining.remove(best)
        sims = embeddings @ embeddings[best]
        penalty = np.maximum(
            penalty,
            DIVERSITY_WEIGHT * np.clip(sims - DIVERSITY_FLOOR, 0, None) / (1 - DIVERSITY_FLOOR),
        )
    return chosen
