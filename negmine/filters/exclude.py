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

VERSION = "3"  # bumped when the stage's output changes
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
        qidx, didx = qidx.astype(np.int64), didx.astype(np.int64)
        # queries with the same (normalised) text are one question: a positive of one is a positive of all,
        # else the twin would mine its sibling's positive as a negative
        twins: dict[int, list[int]] = {}
        for i, h in enumerate(self.query_hash.tolist()):
            twins.setdefault(h, []).append(i)
        if any(len(v) > 1 for v in twins.values()):
            extra = [(t, d) for q, d in zip(qidx.tolist(), didx.tolist())
                     for t in twins[int(self.query_hash[q])] if t != q]
            if extra:
                qidx = np.concatenate([qidx, np.array([e[0] for e in extra], dtype=np.int64)])
                didx = np.concatenate([didx, np.array([e[1] for e in extra], dtype=np.int64)])
        self.pos_qidx = qidx
        self.pos_didx = didx
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
NEVER = np.int8(127)  # relax level of a row that no allowed loosening keeps


def _positive_aggregate(path: Path, query_ids: pa.Array, how: str) -> np.ndarray:
    """Per mined query (by position): min, mean or max of its positives' scores; NaN where none was scored."""
    t = pq.read_table(path, columns=["query_id", "teacher_score"])
    g = t.group_by("query_id").aggregate([("teacher_score", how)])
    out = np.full(len(query_ids), np.nan, dtype=np.float32)
    idx = pc.index_in(g["query_id"], value_set=query_ids)
    valid = idx.is_valid()
    values = g[f"teacher_score_{how}"].filter(valid).to_numpy(zero_copy_only=False)
    out[idx.filter(valid).to_numpy(zero_copy_only=False).astype(np.int64)] = values
    return out


class NearDuplicates:
    """MinHash and/or embedding similarity of candidates to their query's positives."""

    def __init__(self, fparams: dict[str, Any], positives: "Positives", texts, vectors) -> None:
        from negmine.filters.near_duplicates import MinHasher

        self.jaccard, self.cosine = fparams["near_dup_jaccard"], fparams["near_dup_cosine"]
        self.by_query = positives.by_query()
        self.texts, self.vectors = texts, vectors
        self.hasher = MinHasher(fparams["minhash_perm"]) if self.jaccard is not None else None
        self._sig: dict[int, np.ndarray] = {}

    def _sigs(self, rows: list[int]) -> np.ndarray:
        missing = [r for r in dict.fromkeys(rows) if r not in self._sig]
        for r, text in zip(missing, self.texts.docs(missing)):
            self._sig[r] = self.hasher.signature(text)
        return np.stack([self._sig[r] for r in rows])

    def reasons(self, qidx: np.ndarray, didx: np.ndarray) -> np.ndarray:
        """Per row: 0 keep, 1 MinHash near-duplicate, 2 embedding near-duplicate of a positive."""
        from negmine.filters.near_duplicates import jaccard_estimate

        out = np.zeros(len(qidx), dtype=np.int8)
        if self.hasher is not None and len(qidx):
            cand = self._sigs(didx.tolist())
            for i, (q, d) in enumerate(zip(qidx.tolist(), didx.tolist())):
                pos = self.by_query.get(q)
                if pos is not None and jaccard_estimate(self._sigs(pos.tolist()), cand[i]).max() >= self.jaccard:
                    out[i] = 1
        if self.cosine is not None and len(qidx):
            cv = self.vectors(didx)
            cv /= np.maximum(np.linalg.norm(cv, axis=1, keepdims=True), 1e-12)
            for i, q in enumerate(qidx.tolist()):
                pos = self.by_query.get(q)
                if out[i] or pos is None:
                    continue
                pv = self.vectors(pos)
                pv /= np.maximum(np.linalg.norm(pv, axis=1, keepdims=True), 1e-12)
                if (pv @ cv[i]).max() >= self.cosine:
                    out[i] = 2
        return out


def exclude(params: dict[str, Any], fparams: dict[str, Any], ingest_dir: Path, candidates_path: Path,
            query_ids: pa.ChunkedArray, min_positive_score: int, out_dir: Path, *,
            score_column: str = "score", positive_scores: Path | None = None,
            teacher_positive_scores: Path | None = None, texts=None, vectors=None) -> dict[str, Any]:
    """Drop false negatives: exact exclusions first, then the configured [filter] methods.

    `score_column` names the score the filters read ("score": the retriever's, "teacher_score": the teacher's);
    `positive_scores` holds the same kind of score for every positive. Kept rows get their `relax_level`.
    """
    from negmine.filters import POSITIVE_AWARE
    from negmine.filters.nv_retriever import relaxed
    from negmine.filters.rocketqa import ce_absolute, ce_relative

    query_ids = query_ids.combine_chunks() if isinstance(query_ids, pa.ChunkedArray) else query_ids
    positives = Positives(ingest_dir, query_ids, min_positive_score)
    method = fparams["method"]
    pos_agg = (_positive_aggregate(positive_scores, query_ids, fparams["positive_score"])
               if positive_scores is not None else np.full(len(query_ids), np.nan, dtype=np.float32))
    weakest_ce = (_positive_aggregate(teacher_positive_scores, query_ids, "min")
                  if teacher_positive_scores is not None else None)
    near = (NearDuplicates(fparams, positives, texts, vectors)
            if fparams["near_dup_jaccard"] is not None or fparams["near_dup_cosine"] is not None else None)
    pf = pq.ParquetFile(candidates_path)
    counts = {"positive": 0, "query_text": 0, "duplicate_of_positive": 0}
    filtered: dict[str, int] = {}
    relaxable = kept_rows = 0
    kept_queries: set[str] = set()

    def drop(table: pa.Table, mask: np.ndarray, reason: np.ndarray | str, writer: pq.ParquetWriter) -> None:
        if not mask.any():
            return
        rows = table.filter(pa.array(mask))
        names = reason[mask] if isinstance(reason, np.ndarray) else np.full(int(mask.sum()), reason, dtype=object)
        writer.write_table(pa.table({"query_id": rows["query_id"], "doc_id": rows["doc_id"], "rank": rows["rank"],
                                     "score": rows["score"], "reason": pa.array(names.tolist(), pa.string())},
                                    schema=schema.EXCLUDED))

    with pq.ParquetWriter(out_dir / "candidates.parquet", schema.FILTERED) as kept_w, \
            pq.ParquetWriter(out_dir / "excluded.parquet", schema.EXCLUDED) as excl_w:
        for i in bar(range(pf.num_row_groups), desc="exclude", unit="chunk"):
            cand = pf.read_row_group(i)
            qidx = pc.index_in(cand["query_id"], value_set=query_ids).to_numpy(zero_copy_only=False)
            qidx = qidx.astype(np.int64)
            didx = cand["doc_idx"].to_numpy()
            reason = positives.reasons(qidx, didx, params["query_text"], params["duplicates"])
            for code, name in enumerate(REASONS[1:], 1):
                counts[name] += int((reason == code).sum())
            drop(cand, reason != 0, REASONS[reason], excl_w)
            keep = reason == 0
            cand, qidx, didx = cand.filter(pa.array(keep)), qidx[keep], didx[keep]
            s = cand[score_column].to_numpy(zero_copy_only=False).astype(np.float32)
            s_pos = pos_agg[qidx]
            # hard filters, in order; a row is charged to the first that drops it
            why = np.full(cand.num_rows, "", dtype=object)
            ranks = cand["rank"].to_numpy()
            why[(why == "") & (ranks <= fparams["skip_top"])] = "skip_top"
            if fparams["min_score"] is not None:
                why[(why == "") & ~(s >= fparams["min_score"])] = "score_window"
            if fparams["max_score"] is not None:
                why[(why == "") & ~(s <= fparams["max_score"])] = "score_window"
            teacher = cand["teacher_score"].to_numpy(zero_copy_only=False).astype(np.float32)
            if fparams["ce_max_probability"] is not None:
                why[(why == "") & ~ce_absolute(teacher, fparams["ce_max_probability"])] = "ce_absolute"
            if fparams["ce_margin"] is not None:
                why[(why == "") & ~ce_relative(teacher, weakest_ce[qidx], fparams["ce_margin"])] = "ce_relative"
            if near is not None:
                open_rows = np.flatnonzero(why == "")
                nd = near.reasons(qidx[open_rows], didx[open_rows])
                why[open_rows[nd == 1]] = "near_duplicate_minhash"
                why[open_rows[nd == 2]] = "near_duplicate_embedding"
            level = np.zeros(cand.num_rows, dtype=np.int8)
            if method != "none":
                fn, key, _ = POSITIVE_AWARE[method]
                level[:] = NEVER
                for lv in range(fparams["relax_steps"], -1, -1):  # the smallest level that keeps the row wins
                    ok = fn(s, s_pos, relaxed(method, fparams[key], fparams["relax_step"], lv))
                    level[ok] = lv
                strict_drop = (why == "") & (level > 0)
                filtered[method] = filtered.get(method, 0) + int(strict_drop.sum())
                relaxable += int(((why == "") & (level > 0) & (level != NEVER)).sum())
                why[(why == "") & (level == NEVER)] = method
            for name in set(why.tolist()) - {"", method}:
                filtered[name] = filtered.get(name, 0) + int((why == name).sum())
            drop(cand, why != "", why, excl_w)
            keep = why == ""
            kept = cand.filter(pa.array(keep))
            kept = kept.append_column("filter_score", pa.array(s[keep], pa.float32())) \
                .append_column("positive_score", pa.array(s_pos[keep], pa.float32())) \
                .append_column("relax_level", pa.array(level[keep], pa.int8()))
            kept_w.write_table(kept.replace_schema_metadata(None))
            kept_rows += int(((level[keep] == 0)).sum())
            kept_queries.update(pc.unique(kept["query_id"]).to_pylist())
    return {"excluded": counts, "filtered": filtered, "kept": kept_rows, "kept_if_relaxed": relaxable,
            "score_column": score_column, "queries_without_candidates": len(query_ids) - len(kept_queries)}
