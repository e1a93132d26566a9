"""Samplers: how `num_negatives` are chosen among a query's eligible candidates (already rank-windowed).

Each sampler is a function (ranks, scores, n, rng, opts) -> positions, in its own module, registered (with its
options and defaults) in `SAMPLERS`, from which the config's [sample] strategy, its settings and --help derive. `scores` are the scores the filters used (the teacher's
when one is configured); `opts` holds the query's positive score `s_pos`, the sampler's settings and `u`, one
uniform in (0, 1) a candidate keyed by (seed, query id, document id) (`negmine.samplers.keys`). Randomised samplers
draw from `u`, never from the candidates' positions, so a draw depends neither on the other queries nor on the
order or chunking of the candidates: a near-tie swap between two runs changes nothing else. Uniform draws take the
smallest keys; draws without replacement from weights use the Gumbel-top-k trick (Kool et al., ICML 2019) on the
keyed uniforms, which is sampling one by one in proportion to the weights. (`rng`, a generator seeded from the
seed and the query id, is still handed over, for samplers that need more than one number a candidate.)
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from negmine.samplers.keys import gumbel

SampleFn = Callable[[np.ndarray, np.ndarray, int, np.random.Generator, dict[str, Any]], np.ndarray]


@dataclass(frozen=True)
class Sampler:
    """A registered sampler: its [sample] strategy name, the function, and what the rest of negmine asks about it.

    `options` are its own [sample] settings with their defaults (they join the config and, when it is chosen,
    the sample stage's key); `needs_positive_scores`: it reads `s_pos`, which fused (RRF) scores lack.
    """

    name: str
    fn: SampleFn
    options: Mapping[str, Any] = field(default_factory=dict)
    needs_positive_scores: bool = False
    help: str = ""

    def __call__(self, ranks: np.ndarray, scores: np.ndarray, n: int, rng: np.random.Generator,
                 opts: dict[str, Any]) -> np.ndarray:
        return self.fn(ranks, scores, n, rng, opts)


SAMPLERS: dict[str, Sampler] = {}


def register(sampler: Sampler) -> Sampler:
    """Add a sampler: [sample] strategy, its options and --help learn it from here."""
    SAMPLERS[sampler.name] = sampler
    return sampler


def gumbel_top_k(logits: np.ndarray, n: int, noise: np.random.Generator | np.ndarray) -> np.ndarray:
    """n positions drawn without replacement with probability proportional to exp(logits), one after another.

    `noise`: the candidates' keyed uniforms (`opts["u"]`, order-free), or a generator (draws by position)."""
    if len(logits) <= n:
        return np.arange(len(logits))
    g = gumbel(noise) if isinstance(noise, np.ndarray) else noise.gumbel(size=len(logits))
    keys = logits + g
    keys[~np.isfinite(logits)] = -np.inf
    return np.argsort(-keys, kind="stable")[:n]


def smallest_keys(u: np.ndarray, n: int) -> np.ndarray:
    """Positions of the n smallest keyed uniforms: n drawn uniformly without replacement, order-free."""
    if len(u) <= n:
        return np.arange(len(u))
    return np.argsort(u, kind="stable")[:n]


def in_rank_order(picked: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    return picked[np.argsort(ranks[picked], kind="stable")]


# the built-in samplers register themselves (after the names above exist, which they import)
from negmine.samplers import top, random, softmax, top1_random, simans  # noqa: E402,F401,I001
