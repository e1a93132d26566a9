"""Top-n: the n best-ranked eligible candidates, the classic hard-negative choice (e.g. DPR, Karpukhin et al. 2020);
and top-1 plus random: the hardest one and n - 1 drawn uniformly from the rest (a mix of hard and easier)."""
from __future__ import annotations

from typing import Any

import numpy as np


def sample_top(ranks: np.ndarray, scores: np.ndarray, n: int, rng: np.random.Generator,
               opts: dict[str, Any] | None = None) -> np.ndarray:
    return np.argsort(ranks, kind="stable")[:n]


def sample_top1_random(ranks: np.ndarray, scores: np.ndarray, n: int, rng: np.random.Generator,
                       opts: dict[str, Any] | None = None) -> np.ndarray:
    order = np.argsort(ranks, kind="stable")
    if len(order) <= n:
        return order
    rest = rng.choice(order[1:], size=n - 1, replace=False)
    picked = np.concatenate([order[:1], rest])
    return picked[np.argsort(ranks[picked], kind="stable")]
