"""Exclusion of certain false negatives: known positives, the query's own text, exact duplicates of a positive.

A candidate that is a judged positive of its query is never a negative, whatever else is configured. Duplicates
are found by a 64-bit hash of the whitespace- and case-normalised text (title included when titles are used), so
a positive copied into the corpus under another id is caught too. Work is vectorised over a chunk of candidates.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negmine import schema
from negmine.progress import bar

VERSION = "1"
_MIX = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio multiplier: spreads query indices over 64 bits


def _pair_key(qidx: np.ndarray, h: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return h.view(np.uint64) ^ (qidx.astype(np.uint64) * _MIX)


class Positives:
    """Known positives of the mined queries, as integer keys for vectorised membership tests."""

    def __init__(self, ingest_dir: Path, query_ids: pa.ChunkedArray | pa.Array, min_positive_score: int) -> None:
        corpus = pq.read_table(ingest_dir / "corpus.parquet", columns=["doc_id", "hash", "text_hash"],
                               memory_map=True)
        self.query_ids = query_ids
        self.n_docs = corpus.num_rows
        self.doc_hash = corpus["hash"].to_numpy()
        self.doc_text_hash = corpus["text_hash"].to_numpy()
        queries = pq.read_table(ingest_dir / "queries.parquet", columns=["query_id", "hash"])
        qpos = pc.index_in(query_ids, value_set=queries["query_id"]).to_numpy()
        self.query_hash = queries["hash"].to_numpy()[qpos]
        qrels = pq.read_table(ingest_dir / "qrels.parquet")
        qrels = qrels.filter(pc.greater_equal(qrels["score"], min_positive_score))
        qidx = pc.index_in(qrels["query_id"], value_set=query_ids).to_numpy(zero_copy_only=False)
        didx = pc.index_in(qrels["doc_id"], value_set=corpus["doc_id"]).to_numpy(zero_copy_only=False)
        self.pos_qidx = qidx.astype(np.int64)
        self.pos_didx = didx.astype(np.int64)
        self.pos_keys = np.unique(self.pos_qidx * self.n_docs + self.pos_didx)
        dup = _pair_key(self.pos_qidx, self.doc_hash[self.pos_didx])
        self.dup_keys = np.unique(dup)
        self.dup_exact = set(zip(self.pos_qidx.tolist(), self.doc_hash[self.pos_didx].tolist()))

    def by_query(self) -> dict[int, np.ndarray]:
        """Positive doc indices per query index."""
        order = np.argsort(self.pos_qidx, kind="stable")
        q, d = self.pos_qidx[order], self.pos_didx[order]
        bounds = np.flatnonzero(np.diff(q)) + 1
        return {int(qs[0]): ds for qs, ds in zip(np.split(q, bounds), np.split(d, bounds)) if len(qs)}

    def reasons(self, qidx: np.ndarray, didx: np.ndarray, query_text: bool, duplicates: bool) -> np.ndarray:
        """Per candidate: 0 keep, 1 positive, 2 the query's own text, 3 duplicate of a positive."""
        out = np.zeros(len(qidx), dtype=np.int8)
        is_pos = np.isin(qidx * self.n_docs + didx, self.pos_keys)
        out[is_pos] = 1
        if query_text:
            qh = self.query_hash[qidx]
            same = (qh == self.doc_hash[didx]) | (qh == self.doc_text_hash[didx])
            out[(out == 0) & same] = 2
        if duplicates:
            h = self.doc_hash[didx]
            maybe = np.flatnonzero((out == 0) & np.isin(_pair_key(qidx, h), self.dup_keys))
            # the mixed key may collide; confirm the few hits exactly
            hits = [i for i in maybe.tolist() if (int(qidx[i]), int(h[i])) in self.dup_exact]
            out[hits] = 3
        return out


REASONS = np.array(["", "positive", "query_text", "duplicate_of_positive"], dtype=object)


def exclude(params: dict[str, Any], ingest_dir: Path, candidates_path: Path, query_ids: pa.ChunkedArray,
            min_positive_score: int, out_dir: Path) -> dict[str, Any]:
    positives = Positives(ingest_dir, query_ids, min_positive_score)
    pf = pq.ParquetFile(candidates_path)
    counts = {"positive": 0, "query_text": 0, "duplicate_of_positive": 0}
    kept_rows = 0
    kept_queries: set[str] = set()
    with pq.ParquetWriter(out_dir / "candidates.parquet", schema.CANDIDATES) as kept_w, \
            pq.ParquetWriter(out_dir / "excluded.parquet", schema.EXCLUDED) as excl_w:
        for i in bar(range(pf.num_row_groups), desc="exclude", unit="chunk"):
            cand = pf.read_row_group(i)
            qidx = pc.index_in(cand["query_id"], value_set=query_ids).to_numpy(zero_copy_only=False)
            reason = positives.reasons(qidx.astype(np.int64), cand["doc_idx"].to_numpy(),
                                       params["query_text"], params["duplicates"])
            keep = reason == 0
            kept = cand.filter(pa.array(keep))
            kept_w.write_table(kept)
            kept_rows += kept.num_rows
            kept_queries.update(pc.unique(kept["query_id"]).to_pylist())
            if not keep.all():
                dropped = cand.filter(pa.array(~keep))
                excl_w.write_table(pa.table({
                    "query_id": dropped["query_id"], "doc_id": dropped["doc_id"], "rank": dropped["rank"],
                    "score": dropped["score"], "reason": pa.array(REASONS[reason[~keep]], pa.string()),
                }, schema=schema.EXCLUDED))
                for code, name in enumerate(REASONS[1:], 1):
                    counts[name] += int((reason == code).sum())
    return {"excluded": counts, "kept": kept_rows, "queries_without_candidates": len(query_ids) - len(kept_queries)}
