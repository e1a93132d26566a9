"""Reciprocal rank fusion: Cormack, Clarke & Büttcher, "Reciprocal Rank Fusion outperforms Condorcet and
individual Rank Learning Methods", SIGIR 2009.

    rrf(d) = sum over retrievers r that found d of 1 / (k + rank_r(d))

Documents are ordered by rrf score, ties by corpus row. `fuse` works on one chunk of queries at a time, fully
vectorised: all retrievers' rows are sorted by (query, document), grouped, and summed with `np.add.reduceat`.
Each fused row keeps its provenance: which retrievers found it, with their ranks and scores.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negmine import schema


def rrf_scores(ranks: np.ndarray, k: int) -> np.ndarray:
    return 1.0 / (k + ranks.astype(np.float64))


def fuse(tables: list[pa.Table], names: list[str], query_ids: pa.Array, n_docs: int, k: int,
         top_k: int | None, quota: int | None) -> pa.Table:
    """Fuse per-retriever candidate rows of the same queries into one ranked pool.

    `quota` keeps only each retriever's first `quota` ranks before fusing (a union with per-retriever quotas);
    `top_k` cuts each query's fused list (None: keep the whole union).
    """
    parts = []
    for rid, t in enumerate(tables):
        if quota is not None:
            t = t.filter(pc.less_equal(t["rank"], quota))
        parts.append((rid, t))
    qidx = np.concatenate([pc.index_in(t["query_id"], value_set=query_ids).to_numpy(zero_copy_only=False)
                           for _, t in parts]).astype(np.int64)
    didx = np.concatenate([t["doc_idx"].to_numpy() for _, t in parts])
    ranks = np.concatenate([t["rank"].to_numpy() for _, t in parts]).astype(np.int32)
    scores = np.concatenate([t["score"].to_numpy() for _, t in parts]).astype(np.float32)
    rid = np.concatenate([np.full(t.num_rows, r, dtype=np.int64) for r, t in parts])
    doc_id_col = pa.concat_arrays([t["doc_id"].combine_chunks().cast(pa.string()) for _, t in parts])
    if len(qidx) == 0:
        return schema.CANDIDATES.empty_table()
    # group rows of the same (query, document); inside a group, retrievers in config order
    order = np.lexsort((rid, didx, qidx))
    qidx, didx, ranks, scores, rid = qidx[order], didx[order], ranks[order], scores[order], rid[order]
    doc_id_col = doc_id_col.take(pa.array(order))
    new_group = np.ones(len(qidx), dtype=bool)
    new_group[1:] = (qidx[1:] != qidx[:-1]) | (didx[1:] != didx[:-1])
    starts = np.flatnonzero(new_group)
    fused = np.add.reduceat(rrf_scores(ranks, k), starts)
    g_q, g_d = qidx[starts], didx[starts]
    # rank inside each query: fused score descending, then corpus row
    g_order = np.lexsort((g_d, -fused, g_q))
    g_q_sorted = g_q[g_order]
    first_of_query = np.ones(len(g_order), dtype=bool)
    first_of_query[1:] = g_q_sorted[1:] != g_q_sorted[:-1]
    pos = np.arange(len(g_order))
    query_start = np.maximum.accumulate(np.where(first_of_query, pos, 0))
    fused_rank = (pos - query_start + 1).astype(np.int32)
    keep = fused_rank <= top_k if top_k is not None else np.ones(len(g_order), dtype=bool)
    chosen = g_order[keep]
    # provenance lists: the rows of each chosen group, gathered without a loop over groups
    ends = np.append(starts[1:], len(qidx))
    lengths = (ends - starts)[chosen]
    offsets_np = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    members = np.arange(offsets_np[-1]) - np.repeat(offsets_np[:-1], lengths) + np.repeat(starts[chosen], lengths)
    offsets = pa.array(offsets_np.astype(np.int32))
    name_arr = np.array(names, dtype=object)
    # label: the names of the retrievers that found the document, from a bit mask per group
    masks = np.bitwise_or.reduceat(np.left_shift(1, rid), starts)[chosen] if len(starts) else np.array([], int)
    label_of = np.array(["+".join(n for b, n in enumerate(names) if m >> b & 1) for m in range(1 << len(names))],
                        dtype=object)
    labels = label_of[masks].tolist()
    return pa.table({
        "query_id": pc.take(query_ids, pa.array(g_q[chosen])),
        "doc_id": doc_id_col.take(pa.array(starts[chosen])),
        "doc_idx": pa.array(g_d[chosen], pa.int64()),
        "rank": pa.array(fused_rank[keep], pa.int32()),
        "score": pa.array(fused[chosen], pa.float32()),
        "retriever": pa.array(labels, pa.string()),
        "retrievers": pa.ListArray.from_arrays(offsets, pa.array(name_arr[rid[members]].tolist(), pa.string())),
        "retriever_ranks": pa.ListArray.from_arrays(offsets, pa.array(ranks[members], pa.int32())),
        "retriever_scores": pa.ListArray.from_arrays(offsets, pa.array(scores[members], pa.float32())),
        "teacher_score": pa.nulls(len(chosen), pa.float32()),
    }, schema=schema.CANDIDATES)
