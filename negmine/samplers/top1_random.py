"""Top-1 plus random: the hardest eligible candidate and n - 1 drawn uniformly from the rest (a mix of hard and
easier negatives)."""
from __future__ import annotations

from typing import Any

import numpy as np

from negmine.samplers import Sampler, register


def sample_top1_random(ranks: np.ndarray, scores: np.ndarray, n: int, rng: np.random.Generator,
                       opts: dict[str, Any] | None = None) -> np.ndarray:
    order = np.argsort(ranks, kind="stable")
    if len(order) <= n:
        return order
    rest = rng.choice(order[1:], size=n - 1, replace=False)
    picked = np.concatenate([order[:1], rest])
    return picked[np.argsort(ranks[picked], kind="stable")]


register(Sampler("top1-random", sample_top1_random, help="the best one plus uniform draws"))
