"""Softmax sampling: p(d) proportional to exp(s(d) / temperature), without replacement. A low temperature leans to
the hardest candidates, a high one towards uniform."""
from __future__ import annotations

from typing import Any

import numpy as np

from negmine.samplers import Sampler, gumbel_top_k, in_rank_order, register


def sample_softmax(ranks: np.ndarray, scores: np.ndarray, n: int, rng: np.random.Generator,
                   opts: dict[str, Any]) -> np.ndarray:
    logits = np.asarray(scores, dtype=np.float64) / opts["temperature"]
    return in_rank_order(gumbel_top_k(logits - np.nanmax(logits, initial=0.0), n, opts["u"]), ranks)


register(Sampler("softmax", sample_softmax, options={"temperature": 0.1}, help="p ~ exp(s / temperature)"))
