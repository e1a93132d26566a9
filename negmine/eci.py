"""A training-free score of a set of mined negatives, in the spirit of ECI (Sinha, Bansal and Seetharaman 2026,
"ECI: Effective Contrastive Information to Evaluate Hard-Negatives"): information capacity times
discriminative efficiency, where efficiency is the harmonic mean of hardness and safety, so that an unsafe
negative (one the frozen encoder puts at or above the positive) counts for nothing however hard it is.

negmine's version, on cosine scores of a frozen encoder, per mined query q with best positive score s_pos,
mean score to a seeded sample of random corpus documents s_rand, and negatives n_1..n_k scoring s_i:

    hardness  h_i = clip((s_i - s_rand) / (s_pos - s_rand), 0, 1)   # 0: as far as a random document, 1: as close
                                                                     # as the positive
    safety    m_i = clip((s_pos - s_i) / (margin * (s_pos - s_rand)), 0, 1)  # 1 once the negative sits at least
                                                                              # `margin` of that gap below the positive
    ECI(q)    = log2(1 + k) * mean_i 2 h_i m_i / (h_i + m_i)

and the run's score is the mean over every mined query, a query left without negatives counting 0 (a preset
that serves fewer queries carries less information). A query whose positive is no closer than a random document
(s_pos <= s_rand) has no scale to measure on and is left out of the mean (counted).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MARGIN = 0.1  # safety is full once a negative is 10% of the positive-random gap below the positive
RANDOM_DOCS = 256


def eci_scores(s_pos: np.ndarray, s_rand: np.ndarray, s_negs: Sequence[np.ndarray],
               margin: float = MARGIN) -> dict[str, Any]:
    """ECI from scores: s_pos and s_rand per query, the negatives' scores per query (possibly empty)."""
    if not 0 < margin <= 1:
        raise ValueError("margin must be in (0, 1]")
    per_query, hard, safe, unsafe, scaleless = [], [], [], 0, 0
    for sp, sr, sn in zip(s_pos, s_rand, s_negs):
        sn = np.asarray(sn, dtype=np.float64)
        gap = float(sp - sr)
        if not gap > 0:
            scaleless += 1
            continue
        if not len(sn):
            per_query.append(0.0)
            continue
        h = np.clip((sn - sr) / gap, 0.0, 1.0)
        m = np.clip((sp - sn) / (margin * gap), 0.0, 1.0)
        eff = np.where(h + m > 0, 2 * h * m / np.maximum(h + m, 1e-12), 0.0)
        per_query.append(float(np.log2(1 + len(sn)) * eff.mean()))
        hard.append(h)
        safe.append(m)
        unsafe += int((sn >= sp).sum())
    h_all = np.concatenate(hard) if hard else np.zeros(0)
    m_all = np.concatenate(safe) if safe else np.zeros(0)
    # None where there is nothing to average (JSON has no NaN)
    return {"eci": float(np.mean(per_query)) if per_query else None, "queries": len(per_query),
            "queries_without_scale": scaleless, "negatives": int(len(h_all)),
            "hardness_mean": float(h_all.mean()) if len(h_all) else None,
            "safety_mean": float(m_all.mean()) if len(m_all) else None,
            "unsafe_negatives": unsafe, "margin": margin}


def fmt(value: float | None, digits: int = 3) -> str:
    """A score for a table: "-" where there was nothing to average."""
    return "-" if value is None else f"{value:.{digits}f}"


def eci_from_texts(model: Any, groups: Sequence[tuple[str, Sequence[str], Sequence[str]]],
                   random_docs: Sequence[str], batch_size: int = 64, margin: float = MARGIN) -> dict[str, Any]:
    """ECI of (query, positives, negatives) text groups under a frozen sentence-transformers `model`.

    Each distinct text is encoded once; `random_docs` (a seeded sample of the corpus) give each query's
    random-document baseline."""
    texts = sorted({t for q, ps, ns in groups for t in (q, *ps, *ns)} | set(random_docs))
    index = {t: i for i, t in enumerate(texts)}
    vecs = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=False)
    rand = vecs[[index[t] for t in random_docs]]
    s_pos, s_rand, s_negs = [], [], []
    for q, ps, ns in groups:
        qv = vecs[index[q]]
        s_pos.append(float(max(vecs[[index[p] for p in ps]] @ qv)))
        s_rand.append(float((rand @ qv).mean()))
        s_negs.append(vecs[[index[n] for n in ns]] @ qv if ns else np.zeros(0))
    return eci_scores(np.array(s_pos), np.array(s_rand), s_negs, margin)


def sample_random_docs(doc_texts: Sequence[str], seed: int = 0, n: int = RANDOM_DOCS) -> list[str]:
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(doc_texts), size=min(n, len(doc_texts)), replace=False)
    return [doc_texts[i] for i in sorted(pick)]
