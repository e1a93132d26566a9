"""Exclusion of certain false negatives: known positives, the query's own text, exact duplicates of a positive.

A candidate that is a judged positive of its query is never a negative, whatever else is configured. Duplicates
are found by a 64-bit hash of the whitespace- and case-normalised text (title included when titles are used), so
a positive copied into the corpus under another id is caught too. Work is vectorised over a chunk of candidates.
"""
from __future__ import annotations

from pathlib import Path
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negmine import schema, tables
from negmine.io import read_parquet
from negmine.progress import bar
from negmine.stage import Config, Context, Inputs, Params, Stage

VERSION = "4"  # bumped when the stage's output changes; 4: reads the ingest tables' positives, writes kept.parquet
REASONS = np.array(["", "positive", "query_text", "duplicate_of_positive"], dtype=object)
NEVER = np.int8(127)  # relax level of a row that no allowed loosening keeps


def _positive_aggregate(path: Path, query_ids: pa.Array, how: str) -> np.ndarray:
    """Per mined query (by position): min, mean or max of its positives' scores; NaN where none was scored."""
    t = read_parquet(path, columns=["query_id", "teacher_score"])
    g = t.group_by("query_id").aggregate([("teacher_score", how)])
    out = np.full(len(query_ids), np.nan, dtype=np.float32)
    idx = pc.index_in(g["query_id"], value_set=query_ids)
    valid = idx.is_valid()
    values = g[f"teacher_score_{how}"].filter(valid).to_numpy(zero_copy_only=False)
    out[idx.filter(valid).to_numpy(zero_copy_only=False).astype(np.int64)] = values
    return out


class NearDuplicates:
    """MinHash and/or embedding similarity of candidates to their query's positives."""

    def __init__(self, fparams: Mapping[str, Any], positives: tables.Positives, texts, vectors) -> None:
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


def exclude(params: Mapping[str, Any], ingest_dir: Path, candidates_path: Path, out_dir: Path, *,
            positive_scores: Path | None = None, teacher_positive_scores: Path | None = None, texts=None,
            vectors=None) -> dict[str, Any]:
    """Drop false negatives: exact exclusions first, then the configured [filter] methods.

    `params["score_column"]` names the score the filters read ("score": the retriever's, "teacher_score": the
    teacher's); `positive_scores` holds the same kind of score for every positive, `teacher_positive_scores` the
    teacher's. Kept rows get their `relax_level`.
    """
    from negmine.filters import FILTERS
    from negmine.filters.rocketqa import ce_absolute, ce_relative

    fparams, score_column = params, params["score_column"]
    positives = tables.Positives(ingest_dir)
    query_ids = positives.query_ids
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

    with pq.ParquetWriter(out_dir / schema.KEPT_FILE, schema.FILTERED) as kept_w, \
            pq.ParquetWriter(out_dir / schema.EXCLUDED_FILE, schema.EXCLUDED) as excl_w:
        for i in bar(range(pf.num_row_groups), desc="exclude", unit="chunk"):
            cand = pf.read_row_group(i)
            qidx = pc.index_in(cand["query_id"], value_set=query_ids).to_numpy(zero_copy_only=False)
            qidx = qidx.astype(np.int64)
            didx = cand["doc_idx"].to_numpy()
            reason = positives.reasons(qidx, didx, fparams["query_text"], fparams["duplicates"])
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
                f = FILTERS[method]
                level[:] = NEVER
                for lv in range(fparams["relax_steps"], -1, -1):  # the smallest level that keeps the row wins
                    ok = f.keep(s, s_pos, f.relax(fparams[f.option], fparams["relax_step"], lv))
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


def _reads(cfg: Config) -> tuple[str, ...]:
    return (("ingest", "retrieve") + (("score",) if cfg["score"]["teacher"] else ())
            + (("encode",) if cfg["filter"]["near_dup_cosine"] is not None else ()))


def _params(cfg: Config, ctx: Context) -> dict[str, Any]:
    from negmine.config import score_source

    source = score_source(cfg)
    f = {k: v for k, v in cfg["filter"].items() if k != "score_source"}
    return {**cfg["exclude"], **f, "teacher": bool(cfg["score"]["teacher"]), "score_source": source,
            "score_column": "teacher_score" if source == "teacher" else "score"}


def _run(inputs: Inputs, params: Params, out_dir: Path) -> dict[str, Any]:
    from negmine.retrieve import positive_score_files

    ingest_dir = inputs["ingest"]
    teacher_pos, positive_scores = positive_score_files(inputs, params)
    candidates = (inputs["score"] if params["teacher"] else inputs["retrieve"]) / schema.CANDIDATES_FILE
    texts = tables.Texts(ingest_dir) if params["near_dup_jaccard"] is not None else None
    vectors = None
    if params["near_dup_cosine"] is not None:
        from negmine.encode import doc_vectors

        vectors = lambda idx: doc_vectors(inputs["encode"], idx)  # noqa: E731
    return exclude(params, ingest_dir, candidates, out_dir, positive_scores=positive_scores,
                   teacher_positive_scores=teacher_pos, texts=texts, vectors=vectors)


STAGE = Stage(name="exclude", version=VERSION, command="exclude", reads=_reads, params=_params, run=_run,
              outputs=(schema.KEPT_FILE, schema.EXCLUDED_FILE), section="filter")
