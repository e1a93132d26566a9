"""Positive-aware false-negative filters of NV-Retriever: Moreira et al., "NV-Retriever: Improving text embedding
models with effective hard-negative mining", 2024 (arXiv:2407.15831), section 3.

Each keeps a candidate with score s against its query's positive score s_pos (min, mean or max over the query's
positives, default min) when:
- TopK-Abs:       s < tau                           (tau 0.7)
- TopK-MarginPos: s < s_pos - margin                 (margin 0.05)
- TopK-PercPos:   s < s_pos - |s_pos| * (1 - alpha)  (alpha 0.95; |s_pos| keeps it right for negative scores)
`relax(level)` gives the threshold loosened by `level` steps, for the `relax` shortage policy.
"""
from __future__ import annotations

import numpy as np


def topk_abs(s: np.ndarray, s_pos: np.ndarray, tau: float) -> np.ndarray:
    return s < tau


def topk_margin_pos(s: np.ndarray, s_pos: np.ndarray, margin: float) -> np.ndarray:
    return s < s_pos - margin


def topk_perc_pos(s: np.ndarray, s_pos: np.ndarray, alpha: float) -> np.ndarray:
    return s < s_pos - np.abs(s_pos) * (1.0 - alpha)


def relaxed(method: str, value: float, step: float, level: int) -> float:
    """The parameter loosened by `level` steps: a higher tau or alpha, a smaller margin (never below 0)."""
    if method == "abs":
        return value + step * level
    if method == "margin-pos":
        return max(0.0, value - step * level)
    return min(1.0, value + step * level)
