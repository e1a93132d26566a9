"""Export stage: mined negatives as the files trainers read, in Parquet and JSONL.

Text formats hold only the columns a trainer consumes, so sentence-transformers trains on them without renaming
or dropping a column (it feeds every column but `label`/`score` to the model):
- `triplet` (anchor, positive, negative): one row per (query, positive, negative);
- `n-tuple` (anchor, positive, negative_1..negative_n): one row per (query, positive); a query with fewer than n
  negatives has no row here (counted), since the trainer needs every column;
- `flagembedding` (query, pos, neg): one row per query with at least one negative (FlagEmbedding's layout);
- `ids` (query_id, positive_ids, negative_ids, negative_ranks, negative_scores): one row per query, for audits.
Provenance (version, every parameter, input fingerprints, stage keys) goes into each Parquet file's metadata and
into provenance.json. Writers stream query chunk by query chunk.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negmine.progress import bar

VERSION = "1"


def format_schema(fmt: str, n: int, teacher: bool = False) -> pa.Schema:
    """Columns of a format; with a teacher, `ids` and `flagembedding` carry the teacher's scores too."""
    s, f = pa.string(), pa.list_(pa.float32())
    if fmt == "triplet":
        return pa.schema([("anchor", s), ("positive", s), ("negative", s)])
    if fmt == "n-tuple":
        return pa.schema([("anchor", s), ("positive", s)] + [(f"negative_{i}", s) for i in range(1, n + 1)])
    if fmt == "flagembedding":
        cols = [("query", s), ("pos", pa.list_(s)), ("neg", pa.list_(s))]
        return pa.schema(cols + ([("pos_scores", f), ("neg_scores", f)] if teacher else []))
    if fmt == "ids":
        cols = [("query_id", s), ("positive_ids", pa.list_(s)), ("negative_ids", pa.list_(s)),
                ("negative_ranks", pa.list_(pa.int32())), ("negative_scores", f)]
        return pa.schema(cols + ([("positive_teacher_scores", f), ("negative_teacher_scores", f)] if teacher else []))
    raise ValueError(fmt)


class Texts:
    """Document and query texts by position / id, read from the memory-mapped ingest tables."""

    def __init__(self, ingest_dir: Path, use_title: bool, title_sep: str) -> None:
        self.corpus = pq.read_table(ingest_dir / "corpus.parquet", columns=["doc_id", "title", "text"],
                                    memory_map=True)
        self.use_title, self.title_sep = use_title, title_sep
        queries = pq.read_table(ingest_dir / "queries.parquet", columns=["query_id", "text"])
        self.queries = dict(zip(queries["query_id"].to_pylist(), queries["text"].to_pylist()))

    def docs(self, idx: list[int]) -> list[str]:
        if not idx:
            return []
        rows = self.corpus.take(pa.array(idx, pa.int64()))
        titles, texts = rows["title"].to_pylist(), rows["text"].to_pylist()
        if not self.use_title:
            return texts
        return [f"{t}{self.title_sep}{x}" if t else x for t, x in zip(titles, texts)]


def positives_by_query(ingest_dir: Path, corpus_ids: pa.ChunkedArray, min_positive_score: int
                       ) -> dict[str, tuple[list[str], list[int]]]:
    """Each query's positives (ids, corpus rows), best grade first, then by id: a defined order."""
    qrels = pq.read_table(ingest_dir / "qrels.parquet")
    qrels = qrels.filter(pc.greater_equal(qrels["score"], min_positive_score))
    qrels = qrels.sort_by([("query_id", "ascending"), ("score", "descending"), ("doc_id", "ascending")])
    didx = pc.index_in(qrels["doc_id"], value_set=corpus_ids.combine_chunks()).to_pylist()
    out: dict[str, tuple[list[str], list[int]]] = {}
    for q, d, i in zip(qrels["query_id"].to_pylist(), qrels["doc_id"].to_pylist(), didx):
        ids, idx = out.setdefault(q, ([], []))
        ids.append(d)
        idx.append(i)
    return out


def _query_groups(negatives_path: Path) -> Iterator[list[tuple[str, dict[str, list]]]]:
    """Chunks of (query id, its negative rows), in the order sampling wrote them."""
    pf = pq.ParquetFile(negatives_path)
    for g in range(pf.num_row_groups):
        t = pf.read_row_group(g)
        if t.num_rows == 0:
            continue
        qids = t["query_id"].to_numpy(zero_copy_only=False)
        cols = {n: t[n].to_pylist() for n in ("doc_id", "doc_idx", "rank", "score", "teacher_score")}
        bounds = [0] + (np.flatnonzero(qids[1:] != qids[:-1]) + 1).tolist() + [len(qids)]
        yield [(str(qids[a]), {n: v[a:b] for n, v in cols.items()}) for a, b in zip(bounds[:-1], bounds[1:])]


class _Sink:
    """One output file (Parquet or JSONL) of one format, written under a temporary name."""

    def __init__(self, path: Path, schema: pa.Schema, metadata: dict[bytes, bytes]) -> None:
        self.path, self.schema = path, schema.with_metadata(metadata)
        self.parquet = path.suffix == ".parquet"
        self.rows = 0
        if self.parquet:
            self.writer = pq.ParquetWriter(path, self.schema)
        else:
            self.fh = open(path, "w", encoding="utf-8")

    def write(self, rows: dict[str, list]) -> None:
        n = len(next(iter(rows.values()))) if rows else 0
        if n == 0:
            return
        self.rows += n
        if self.parquet:
            self.writer.write_table(pa.table(rows, schema=self.schema))
        else:
            names = list(rows)
            for values in zip(*(rows[k] for k in names)):
                self.fh.write(json.dumps(dict(zip(names, values)), ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self.parquet:
            self.writer.close()
        else:
            self.fh.close()


def _rows(fmt: str, n: int, qid: str, qtext: str, pos_ids: list[str], pos_texts: list[str],
          neg: dict[str, list], neg_texts: list[str], rows: dict[str, list], skipped: dict[str, int],
          pos_scores: list[float] | None) -> None:
    if fmt == "triplet":
        for p in pos_texts:
            rows["anchor"] += [qtext] * len(neg_texts)
            rows["positive"] += [p] * len(neg_texts)
            rows["negative"] += neg_texts
    elif fmt == "n-tuple":
        if len(neg_texts) < n:
            skipped["n-tuple"] += 1
            return
        for p in pos_texts:
            rows["anchor"].append(qtext)
            rows["positive"].append(p)
            for i in range(n):
                rows[f"negative_{i + 1}"].append(neg_texts[i])
    elif fmt == "flagembedding":
        if not neg_texts:
            skipped["flagembedding"] += 1
            return
        rows["query"].append(qtext)
        rows["pos"].append(pos_texts)
        rows["neg"].append(neg_texts)
        if pos_scores is not None:
            rows["pos_scores"].append(pos_scores)
            rows["neg_scores"].append(neg["teacher_score"])
    elif fmt == "ids":
        rows["query_id"].append(qid)
        rows["positive_ids"].append(pos_ids)
        rows["negative_ids"].append(neg["doc_id"])
        rows["negative_ranks"].append(neg["rank"])
        rows["negative_scores"].append(neg["score"])
        if pos_scores is not None:
            rows["positive_teacher_scores"].append(pos_scores)
            rows["negative_teacher_scores"].append(neg["teacher_score"])


def export(params: dict[str, Any], num_negatives: int, ingest_dir: Path, negatives_path: Path,
           query_ids: pa.ChunkedArray, min_positive_score: int, use_title: bool, title_sep: str,
           provenance: dict[str, Any], out_dir: Path, positive_scores: Path | None = None) -> dict[str, Any]:
    texts = Texts(ingest_dir, use_title, title_sep)
    positives = positives_by_query(ingest_dir, texts.corpus["doc_id"], min_positive_score)
    teacher = positive_scores is not None
    pos_teacher: dict[tuple[str, str], float] = {}
    if teacher:
        t = pq.read_table(positive_scores, columns=["query_id", "doc_id", "teacher_score"])
        pos_teacher = dict(zip(zip(t["query_id"].to_pylist(), t["doc_id"].to_pylist()),
                               t["teacher_score"].to_pylist()))

    def pos_scores(qid: str) -> list[float] | None:
        return [pos_teacher[(qid, d)] for d in positives[qid][0]] if teacher else None

    metadata = {b"negmine": json.dumps(provenance, sort_keys=True).encode("utf-8")}
    sinks = {(fmt, ft): _Sink(out_dir / f"{fmt}.{ft}", format_schema(fmt, num_negatives, teacher), metadata)
             for fmt in params["formats"] for ft in params["file_types"]}
    skipped = {fmt: 0 for fmt in params["formats"]}
    written: set[str] = set()
    try:
        for chunk in bar(_query_groups(negatives_path), desc="export", unit="chunk"):
            batch = {fmt: {name: [] for name in format_schema(fmt, num_negatives, teacher).names}
                     for fmt in params["formats"]}
            for qid, neg in chunk:
                written.add(qid)
                pos_ids, pos_idx = positives[qid]
                pos_texts = texts.docs(pos_idx)
                neg_texts = texts.docs(neg["doc_idx"])
                for fmt in params["formats"]:
                    _rows(fmt, num_negatives, qid, texts.queries[qid], pos_ids, pos_texts, neg, neg_texts,
                          batch[fmt], skipped, pos_scores(qid))
            for (fmt, _), sink in sinks.items():
                sink.write(batch[fmt])
        # queries whose sampling gave no negative: only the ids format lists them (with an empty list)
        if "ids" in params["formats"]:
            batch = {name: [] for name in format_schema("ids", num_negatives, teacher).names}
            empty = {"doc_id": [], "rank": [], "score": [], "teacher_score": []}
            for qid in query_ids.to_pylist():
                if qid not in written and qid in positives:
                    _rows("ids", num_negatives, qid, "", positives[qid][0], [], empty, [], batch, skipped,
                          pos_scores(qid))
            for (fmt, _), sink in sinks.items():
                if fmt == "ids":
                    sink.write(batch)
    finally:
        for sink in sinks.values():
            sink.close()
    files = {sink.path.name: sink.rows for sink in sinks.values()}
    return {"files": files, "queries_with_negatives": len(written),
            "queries_left_out": {k: v for k, v in skipped.items() if v}}
