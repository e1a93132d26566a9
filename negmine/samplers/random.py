"""Uniform sampling without replacement inside the rank window (as FlagEmbedding's hn_mine `range_for_sampling`).

Skipping the very top ranks and drawing from a wider window lowers the share of unlabeled positives among the
negatives; the draw, the n smallest keyed uniforms (`opts["u"]`, see `negmine.samplers.keys`), is returned in
rank order.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from negmine.samplers import Sampler, in_rank_order, register, smallest_keys


def sample_random(ranks: np.ndarray, scores: np.ndarray, n: int, rng: np.random.Generator,
                  opts: dict[str, Any]) -> np.ndarray:
    return in_rank_order(smallest_keys(opts["u"], n), ranks)


register(Sampler("random", sample_random, help="uniform inside the rank window"))
