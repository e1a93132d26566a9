"""Samplers: how `num_negatives` are chosen among a query's eligible candidates (already rank-windowed).

Each sampler is a function (ranks, scores, n, rng) -> positions, in its own module, registered in `SAMPLERS`,
which the config's [sample] strategy reads. Samplers receive a generator seeded from the run's seed and the query
id, so a query's draw does not depend on the order or chunking of the others.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from negmine.samplers.random import sample_random
from negmine.samplers.top import sample_top

Sampler = Callable[[np.ndarray, np.ndarray, int, np.random.Generator], np.ndarray]

SAMPLERS: dict[str, Sampler] = {
    "top": sample_top,
    "random": sample_random,
}
