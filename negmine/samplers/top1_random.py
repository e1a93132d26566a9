"""Top-1 plus random: the hardest eligible candidate and n - 1 drawn uniformly from the rest (a mix of hard and
easier negatives). The rest are the n - 1 smallest keyed uniforms (`opts["u"]`)."""
from __future__ import annotations

from typing import Any

import numpy as np

from negmine.samplers import Sampler, in_rank_order, register, smallest_keys


def sample_top1_random(ranks: np.ndarray, scores: np.ndarray, n: int, rng: np.random.Generator,
                       opts: dict[str, Any]) -> np.ndarray:
    order = np.argsort(ranks, kind="stable")
    if len(order) <= n:
        return order
    rest = order[1:]
    picked = np.concatenate([order[:1], rest[smallest_keys(opts["u"][rest], n - 1)]])
    return in_rank_order(picked, ranks)


register(Sampler("top1-random", sample_top1_random, help="the best one plus uniform draws"))
