"""Agreement of several teachers: keep a candidate only if every teacher scores it below that teacher's own
positive-aware threshold.

NV-Retriever's TopK-PercPos (Moreira et al., "NV-Retriever: Improving text embedding models with effective
hard-negative mining", 2024, arXiv:2407.15831, section 3) under each teacher t of an ensemble:
s_t(d) < s_pos_t - |s_pos_t| (1 - alpha), with s_pos_t the query's positive score under t (min, mean or max over
its positives, as [filter] positive_score). Teachers score on different scales (a probability, a cosine, a BM25
sum), so each threshold is computed on its own teacher's scale; a candidate any one teacher places too close to
the positives is dropped. A query with no positive score under a teacher keeps nothing (no threshold to pass), as
with the single-teacher filter.
"""
from __future__ import annotations

import numpy as np

from negmine.filters.nv_retriever import topk_perc_pos


def agreement(scores: np.ndarray, positive_scores: np.ndarray, alpha: float) -> np.ndarray:
    """Per candidate (row) and teacher (column): whether that teacher lets the candidate through.

    `scores` and `positive_scores` are (candidates, teachers): each candidate's score and its query's positive
    score under every teacher. A candidate is kept when its whole row is true (`keep_all`)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive_scores = np.asarray(positive_scores, dtype=np.float64)
    if scores.shape != positive_scores.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and positive scores {positive_scores.shape} must be one "
                         "(candidates, teachers) shape")
    return topk_perc_pos(scores, positive_scores, alpha)


def keep_all(passes: np.ndarray) -> np.ndarray:
    """Candidates every teacher lets through."""
    return passes.all(axis=1)


def vetoes(passes: np.ndarray, names: list[str]) -> dict[str, int]:
    """How many candidates each teacher would drop (a candidate dropped by two counts for both)."""
    return {name: int((~passes[:, i]).sum()) for i, name in enumerate(names)}
