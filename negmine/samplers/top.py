"""Top-n: the n best-ranked eligible candidates, the classic hard-negative choice (e.g. DPR, Karpukhin et al. 2020)."""
from __future__ import annotations

import numpy as np


def sample_top(ranks: np.ndarray, scores: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.argsort(ranks, kind="stable")[:n]
