"""Top-n: the n best-ranked eligible candidates, the classic hard-negative choice (e.g. DPR, Karpukhin et al. 2020)."""
from __future__ import annotations

from typing import Any

import numpy as np

from negmine.samplers import Sampler, register


def sample_top(ranks: np.ndarray, scores: np.ndarray, n: int, rng: np.random.Generator,
               opts: dict[str, Any] | None = None) -> np.ndarray:
    return np.argsort(ranks, kind="stable")[:n]


register(Sampler("top", sample_top, help="the best-ranked eligible candidates"))
