"""False-negative filters, one method a module, registered here for the config's [filter] section.

`POSITIVE_AWARE` maps [filter] method to (function, parameter name, score types it is meant for). Thresholds are
compared only against the score types they were meant for: an absolute threshold such as 0.7 means nothing on a
BM25 or a fused (RRF) scale, and the cross-encoder thresholds need probabilities or logits.
"""
from __future__ import annotations

from negmine.filters.nv_retriever import topk_abs, topk_margin_pos, topk_perc_pos

BOUNDED = ("cosine", "probability")
WITH_POSITIVES = ("cosine", "dot", "probability", "logit", "bm25")

POSITIVE_AWARE = {
    "abs": (topk_abs, "tau", BOUNDED),
    "margin-pos": (topk_margin_pos, "margin", WITH_POSITIVES),
    "perc-pos": (topk_perc_pos, "alpha", WITH_POSITIVES),
}
