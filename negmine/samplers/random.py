"""Uniform sampling without replacement inside the rank window (as FlagEmbedding's hn_mine `range_for_sampling`).

Skipping the very top ranks and drawing from a wider window lowers the share of unlabeled positives among the
negatives; the draw is returned in rank order.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from negmine.samplers import Sampler, register


def sample_random(ranks: np.ndarray, scores: np.ndarray, n: int, rng: np.random.Generator,
                  opts: dict[str, Any] | None = None) -> np.ndarray:
    if len(ranks) <= n:
        return np.argsort(ranks, kind="stable")
    picked = rng.choice(len(ranks), size=n, replace=False)
    return picked[np.argsort(ranks[picked], kind="stable")]


register(Sampler("random", sample_random, help="uniform inside the rank window"))
