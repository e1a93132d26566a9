"""Retrieve stage: the top-k candidates of every query that has a positive, written as the candidates table.

Queries are searched `chunk_size` at a time and each chunk becomes one Parquet row group, so memory is bounded by
chunk_size x top_k rows whatever the number of queries. Documents that share no term with the query (BM25 score 0)
are not candidates: they are not hard, merely arbitrary.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negmine import schema
from negmine.bm25 import Searcher
from negmine.progress import bar

VERSION = "1"


def queries_to_mine(ingest_dir: Path, min_positive_score: int) -> pa.Table:
    """The queries with at least one positive, in the order of the queries table."""
    qrels = pq.read_table(ingest_dir / "qrels.parquet")
    positive = pc.filter(qrels, pc.greater_equal(qrels["score"], min_positive_score))
    wanted = pc.unique(positive["query_id"])
    queries = pq.read_table(ingest_dir / "queries.parquet", columns=["query_id", "text"])
    return queries.filter(pc.is_in(queries["query_id"], value_set=wanted))


def retrieve(bm25_params: dict[str, Any], params: dict[str, Any], ingest_dir: Path, index_dir: Path,
             min_positive_score: int, out_dir: Path) -> dict[str, Any]:
    queries = queries_to_mine(ingest_dir, min_positive_score)
    doc_ids = pq.read_table(ingest_dir / "corpus.parquet", columns=["doc_id"], memory_map=True).column(0)
    searcher = Searcher(bm25_params, index_dir)
    k, chunk = params["top_k"], params["chunk_size"]
    n, rows = queries.num_rows, 0
    with pq.ParquetWriter(out_dir / "candidates.parquet", schema.CANDIDATES) as writer, \
            bar(total=n, desc="retrieve", unit="query") as progress:
        for start in range(0, n, chunk):
            part = queries.slice(start, chunk)
            docs, scores = searcher.search(part["text"].to_pylist(), k)
            width = docs.shape[1]
            keep = (scores != 0).ravel()  # score 0: no query term in the document
            flat_docs = docs.ravel()[keep]
            qidx = np.repeat(np.arange(part.num_rows), width)[keep]
            ranks = np.tile(np.arange(1, width + 1, dtype=np.int32), part.num_rows)[keep]
            table = pa.table({
                "query_id": pc.take(part["query_id"], pa.array(qidx)),
                "doc_id": pc.take(doc_ids, pa.array(flat_docs)),
                "doc_idx": pa.array(flat_docs, pa.int64()),
                "rank": pa.array(ranks, pa.int32()),
                "score": pa.array(scores.ravel()[keep], pa.float32()),
                "retriever": pa.array(np.full(len(flat_docs), "bm25", dtype=object), pa.string()),
            }, schema=schema.CANDIDATES)
            writer.write_table(table)
            rows += table.num_rows
            progress.update(part.num_rows)
    return {"queries": n, "candidates": rows, "top_k": k, "candidates_per_query": rows / n if n else 0.0}
