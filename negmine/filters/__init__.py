"""False-negative filters, one method a module, registered here for the config's [filter] method.

A `Filter` carries what the rest of negmine asks about it: its threshold setting and default (which join the
[filter] section), the score types it is meant for, and how the `relax` shortage policy loosens it. Thresholds are
compared only against the score types they were meant for: an absolute threshold such as 0.7 means nothing on a
BM25 or a fused (RRF) scale; `config.validate` refuses the mismatch before any work.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BOUNDED = ("cosine", "probability")
WITH_POSITIVES = ("cosine", "dot", "probability", "logit", "bm25")


@dataclass(frozen=True)
class Filter:
    """keep(s, s_pos, threshold) -> mask of candidates kept; relax(threshold, step, level) -> loosened threshold."""

    name: str
    keep: Callable[[np.ndarray, np.ndarray, float], np.ndarray]
    option: str  # its [filter] setting
    default: float
    accepts: tuple[str, ...]  # score types the threshold is meant for
    relax: Callable[[float, float, int], float]
    help: str = ""


FILTERS: dict[str, Filter] = {}


def register(f: Filter) -> Filter:
    """Add a filter method: [filter] method, its threshold setting and --help learn it from here."""
    FILTERS[f.name] = f
    return f


from negmine.filters import nv_retriever  # noqa: E402,F401  (registers abs, margin-pos, perc-pos)
