"""Samplers: how `num_negatives` are chosen among a query's eligible candidates (already rank-windowed).

Each sampler is a function (ranks, scores, n, rng, opts) -> positions, in its own module, registered in
`SAMPLERS`, which the config's [sample] strategy reads. `scores` are the scores the filters used (the teacher's
when one is configured); `opts` holds the query's positive score `s_pos` and the sampler's settings. Samplers get
a generator seeded from the run's seed and the query id, so a query's draw does not depend on the other queries
or on chunking. Draws without replacement from weights use the Gumbel-top-k trick (Kool et al., ICML 2019),
which is sampling one by one in proportion to the weights.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from negmine.samplers.random import sample_random
from negmine.samplers.simans import sample_simans
from negmine.samplers.softmax import sample_softmax
from negmine.samplers.top import sample_top, sample_top1_random

Sampler = Callable[[np.ndarray, np.ndarray, int, np.random.Generator, dict[str, Any]], np.ndarray]

SAMPLERS: dict[str, Sampler] = {
    "top": sample_top,
    "random": sample_random,
    "softmax": sample_softmax,
    "top1-random": sample_top1_random,
    "simans": sample_simans,
}


def gumbel_top_k(logits: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n positions drawn without replacement with probability proportional to exp(logits), one after another."""
    if len(logits) <= n:
        return np.arange(len(logits))
    keys = logits + rng.gumbel(size=len(logits))
    keys[~np.isfinite(logits)] = -np.inf
    return np.argsort(-keys, kind="stable")[:n]


def in_rank_order(picked: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    return picked[np.argsort(ranks[picked], kind="stable")]
