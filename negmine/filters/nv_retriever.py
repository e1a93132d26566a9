"""Positive-aware false-negative filters of NV-Retriever: Moreira et al., "NV-Retriever: Improving text embedding
models with effective hard-negative mining", 2024 (arXiv:2407.15831), section 3.

Each keeps a candidate with score s against its query's positive score s_pos (min, mean or max over the query's
positives, default min) when:
- TopK-Abs:       s < tau                           (tau 0.7)
- TopK-MarginPos: s < s_pos - margin                 (margin 0.05)
- TopK-PercPos:   s < s_pos - |s_pos| * (1 - alpha)  (alpha 0.95; |s_pos| keeps it right for negative scores)
Each registers with the step by which the `relax` shortage policy loosens it: a higher tau or alpha, a smaller
margin (never below 0).
"""
from __future__ import annotations

import numpy as np

from negmine.filters import BOUNDED, WITH_POSITIVES, Filter, register


def topk_abs(s: np.ndarray, s_pos: np.ndarray, tau: float) -> np.ndarray:
    return s < tau


def topk_margin_pos(s: np.ndarray, s_pos: np.ndarray, margin: float) -> np.ndarray:
    return s < s_pos - margin


def topk_perc_pos(s: np.ndarray, s_pos: np.ndarray, alpha: float) -> np.ndarray:
    return s < s_pos - np.abs(s_pos) * (1.0 - alpha)


register(Filter("abs", topk_abs, "tau", 0.7, BOUNDED, lambda v, step, lv: v + step * lv, "keep s < tau"))
register(Filter("margin-pos", topk_margin_pos, "margin", 0.05, WITH_POSITIVES,
                lambda v, step, lv: max(0.0, v - step * lv), "keep s < s_pos - margin"))
register(Filter("perc-pos", topk_perc_pos, "alpha", 0.95, WITH_POSITIVES,
                lambda v, step, lv: min(1.0, v + step * lv), "keep s < s_pos - |s_pos| (1 - alpha)"))
