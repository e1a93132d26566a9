"""The candidates table that every retriever writes: the top-k candidates of every mined query, and their fusion.

Queries are searched a chunk at a time and each chunk becomes one Parquet row group. A chunk's size comes from the
memory budget (`[run] memory_budget`, see `negmine.memory.query_chunk`), at most `[retrieve] chunk_size`, so memory
is bounded by the budget whatever the number of queries or documents; the chunking never changes an output. Rows
are grouped by query, in the order of `tables.mined_queries`, best rank first; later stages rely on that. BM25 documents
that share no term with the query (score 0) are not candidates: they are not hard, merely arbitrary.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negmine import schema, tables
from negmine.memory import budget_bytes, query_chunk
from negmine.progress import bar

VERSION = "2"  # bumped when the stage's output changes
Search = Callable[[int, int, pa.Table], tuple[np.ndarray, np.ndarray]]


def candidate_table(query_ids: pa.Array | pa.ChunkedArray, doc_ids: pa.ChunkedArray, docs: np.ndarray,
                    scores: np.ndarray, keep: np.ndarray, name: str) -> pa.Table:
    """Rows for a (queries x k) block of results; `keep` masks out non-results (score 0, missing)."""
    n_q, width = docs.shape
    keep = keep.ravel()
    flat_docs = docs.ravel()[keep]
    flat_scores = scores.ravel()[keep]
    qidx = np.repeat(np.arange(n_q), width)[keep]
    ranks = np.tile(np.arange(1, width + 1, dtype=np.int32), n_q)[keep]
    n = len(flat_docs)
    offsets = pa.array(np.arange(n + 1, dtype=np.int32))
    return pa.table({
        "query_id": pc.take(query_ids, pa.array(qidx)),
        "doc_id": pc.take(doc_ids, pa.array(flat_docs)),
        "doc_idx": pa.array(flat_docs, pa.int64()),
        "rank": pa.array(ranks, pa.int32()),
        "score": pa.array(flat_scores, pa.float32()),
        "retriever": pa.array([name] * n, pa.string()),
        "retrievers": pa.ListArray.from_arrays(offsets, pa.array([name] * n, pa.string())),
        "retriever_ranks": pa.ListArray.from_arrays(offsets, pa.array(ranks, pa.int32())),
        "retriever_scores": pa.ListArray.from_arrays(offsets, pa.array(flat_scores, pa.float32())),
        "teacher_score": pa.nulls(n, pa.float32()),
    }, schema=schema.CANDIDATES)


def engine_search(worker: Callable[[], Callable[[Any], tuple[int, int, np.ndarray, np.ndarray]]],
                  queries: pa.Table, chunk: int, with_texts: bool) -> Search:
    """A `Search` for `write_candidates` whose chunks the current engine computes with `worker()`s, ahead of the
    writer and in order: items are (start, stop) query positions, and the chunk's texts `with_texts`."""
    from negmine import engine

    n = queries.num_rows
    items = ((a, min(a + chunk, n), *((queries["text"].slice(a, chunk).to_pylist(),) if with_texts else ()))
             for a in range(0, n, chunk))
    results = engine.current().map(worker, items)

    def search(start: int, stop: int, part: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        a, b, docs, scores = next(results)
        if (a, b) != (start, stop):  # write_candidates asks for the chunks in the same order
            raise RuntimeError(f"engine returned query chunk {a}:{b} where {start}:{stop} was expected")
        return docs, scores

    return search


def write_candidates(queries: pa.Table, ingest_dir: Path, search: Search, name: str, chunk: int,
                     out_path: Path) -> dict[str, Any]:
    """Run `search(start, stop, query_chunk)` chunk by chunk and write one row group per chunk."""
    doc_ids = tables.doc_ids(ingest_dir)
    n, rows = queries.num_rows, 0
    with pq.ParquetWriter(out_path, schema.CANDIDATES) as writer, \
            bar(total=n, desc=f"retrieve {name}", unit="query") as progress:
        for start in range(0, n, chunk):
            part = queries.slice(start, chunk)
            docs, scores = search(start, start + part.num_rows, part)
            keep = (docs >= 0) & np.isfinite(scores)
            if name == "bm25":
                keep &= scores != 0  # no query term in the document
            table = candidate_table(part["query_id"], doc_ids, docs, scores, keep, name)
            writer.write_table(table)
            rows += table.num_rows
            progress.update(part.num_rows)
    return {"retriever": name, "queries": n, "candidates": rows, "candidates_per_query": rows / n if n else 0.0}


def write_positive_scores(path: Path, query_ids: list[str], doc_ids: list[str], rows: np.ndarray,
                          scores: np.ndarray, score_type: str) -> None:
    """The retriever's own score of every positive (retrieved or not): what positive-aware filters compare with."""
    table = pa.table({"query_id": pa.array(query_ids, pa.string()), "doc_id": pa.array(doc_ids, pa.string()),
                      "doc_idx": pa.array(rows, pa.int64()), "teacher_score": pa.array(scores, pa.float32())},
                     schema=schema.POSITIVE_SCORES)
    pq.write_table(table.replace_schema_metadata({b"negmine.score_type": score_type.encode()}), path)


def positive_score_files(inputs: Mapping[str, Path], params: Mapping[str, Any]) -> tuple[Path | None, Path | None]:
    """(the teacher's positive scores, the positive scores on the filters' scale) among a stage's inputs: the
    teacher's when `params["score_source"]` is "teacher", else the retriever's (None for a fused RRF pool)."""
    teacher = inputs["score"] / schema.POSITIVE_SCORES_FILE if params["teacher"] else None
    retriever = inputs["retrieve"] / schema.POSITIVE_SCORES_FILE
    source = teacher if params["score_source"] == "teacher" else (retriever if retriever.is_file() else None)
    return teacher, source


def fuse_candidates(params: Mapping[str, Any], ingest_dir: Path, paths: list[Path], names: list[str],
                    out_dir: Path) -> dict[str, Any]:
    """Fuse several retrievers' candidates (reciprocal rank fusion, or a union with per-retriever quotas)."""
    from negmine.fusion.rrf import fuse

    query_ids = tables.mined_query_ids(ingest_dir)
    n_docs = tables.num_docs(ingest_dir)
    union = params["fusion"] == "union"
    quota = (params["union_quota"] or max(1, params["top_k"] // len(names))) if union else None
    chunk = query_chunk(budget_bytes(params["memory_budget"]), params["top_k"], params["chunk_size"])
    readers = [query_chunks(p, query_ids, chunk) for p in paths]
    rows = 0
    found_by: dict[str, int] = {}
    with pq.ParquetWriter(out_dir / schema.CANDIDATES_FILE, schema.CANDIDATES) as writer:
        for parts in bar(zip(*readers), total=(len(query_ids) + chunk - 1) // chunk, desc="fuse", unit="chunk"):
            fused = fuse([t for _, _, t in parts], names, query_ids, n_docs, params["rrf_k"],
                         None if union else params["top_k"], quota)
            writer.write_table(fused)
            rows += fused.num_rows
            for label, count in zip(*np.unique(fused["retriever"].to_numpy(zero_copy_only=False), return_counts=True)):
                found_by[str(label)] = found_by.get(str(label), 0) + int(count)
    return {"retriever": "+".join(names), "fusion": params["fusion"], "score_type": "rrf",
            "queries": len(query_ids), "candidates": rows,
            "candidates_per_query": rows / len(query_ids) if len(query_ids) else 0.0, "found_by": found_by}


def query_chunks(path: Path, query_ids: pa.Array, chunk: int) -> Iterator[tuple[int, int, pa.Table]]:
    """(start, stop, rows) for consecutive ranges of query positions, from a file grouped by query in order.

    Row groups of different files need not align (chunk_size is not part of any key), so rows are re-cut here.
    """
    pf = pq.ParquetFile(path)
    pending: list[pa.Table] = []
    start = 0
    n = len(query_ids)
    for g in range(pf.num_row_groups):
        t = pf.read_row_group(g)
        if t.num_rows == 0:
            continue
        pending.append(t)
        last = pc.index_in(t["query_id"].slice(t.num_rows - 1), value_set=query_ids)[0].as_py()
        while last is not None and last >= start + chunk:
            buf = pa.concat_tables(pending)
            qidx = pc.index_in(buf["query_id"], value_set=query_ids).to_numpy(zero_copy_only=False)
            cut = int(np.searchsorted(qidx, start + chunk))
            yield start, start + chunk, buf.slice(0, cut)
            pending = [buf.slice(cut)]
            start += chunk
    while start < n:
        buf = pa.concat_tables(pending) if pending else None
        if buf is None or buf.num_rows == 0:
            yield start, min(start + chunk, n), pa.Table.from_batches([], schema=pf.schema_arrow)
            pending = []
        else:
            qidx = pc.index_in(buf["query_id"], value_set=query_ids).to_numpy(zero_copy_only=False)
            cut = int(np.searchsorted(qidx, start + chunk))
            yield start, min(start + chunk, n), buf.slice(0, cut)
            pending = [buf.slice(cut)]
        start += chunk
