"""Cross-encoder denoising of hard negatives.

- Absolute: RocketQA (Qu et al., "RocketQA: An Optimized Training Approach to Dense Passage Retrieval for
  Open-Domain Question Answering", NAACL 2021) keeps a retrieved passage as a negative only when the
  cross-encoder's probability that it is relevant is low (< 0.1 in the paper).
- Relative: drop a candidate whose cross-encoder score comes within `margin` of the query's weakest positive,
  ce > min ce(positive) - margin; 3.0 on the logit scale is the sentence-transformers MS MARCO recipe.
"""
from __future__ import annotations

import numpy as np


def ce_absolute(prob: np.ndarray, max_probability: float) -> np.ndarray:
    return prob < max_probability


def ce_relative(ce: np.ndarray, weakest_positive: np.ndarray, margin: float) -> np.ndarray:
    return ~(ce > weakest_positive - margin)
