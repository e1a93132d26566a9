"""SimANS: Zhou et al., "SimANS: Simple Ambiguous Negatives Sampling for Dense Text Retrieval", EMNLP 2022.

Ambiguous negatives, scored close to the positive, are sampled most: p(d) proportional to
exp(-a (s(d) - s_pos + b)^2), with a = 0.5 and b = 0 by default, without replacement.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from negmine.samplers import Sampler, gumbel_top_k, in_rank_order, register


def sample_simans(ranks: np.ndarray, scores: np.ndarray, n: int, rng: np.random.Generator,
                  opts: dict[str, Any]) -> np.ndarray:
    d = np.asarray(scores, dtype=np.float64) - opts["s_pos"] + opts["simans_b"]
    return in_rank_order(gumbel_top_k(-opts["simans_a"] * d * d, n, opts["u"]), ranks)


register(Sampler("simans", sample_simans, options={"simans_a": 0.5, "simans_b": 0.0}, needs_positive_scores=True,
                 help="p ~ exp(-a (s - s_pos + b)^2)"))
