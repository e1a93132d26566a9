"""Export stage: mined negatives as the files trainers read, in Parquet and JSONL (formats: `negmine.formats`).

Provenance (version, every parameter, input fingerprints, stage keys) goes into each Parquet file's metadata and
into provenance.json. Writers stream query chunk by query chunk.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negmine.formats import FORMATS, Options, QueryRecord, empty_rows
from negmine.progress import bar

VERSION = "4"  # bumped when the stage's output changes


class _ColumnStore:
    """A string column of the corpus on disk: its UTF-8 bytes in an unlinked temporary file, offsets in memory.

    Looking a row up is one `pread` of its bytes: the cost grows with the rows read, not with the corpus (a
    `take` on the memory-mapped table costs a scan of its chunks per call), and resident memory holds the offsets
    (8 bytes a row) and what was read, not the column (file pages are the kernel's to evict).
    """

    def __init__(self, folder: Path) -> None:
        # O_TMPFILE where the filesystem has it: the file has no name, so even a killed run leaves nothing behind;
        # beside the cache (sized for corpora), else in the system's temporary folder
        try:
            self.fh = tempfile.TemporaryFile(dir=folder)
        except OSError:
            self.fh = tempfile.TemporaryFile()
        self.starts: list[np.ndarray] = []
        self.valid: list[np.ndarray] = []
        self.end = 0

    def append(self, arr: pa.Array) -> None:
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            arr = arr.cast(pa.string())
        width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
        offsets = np.frombuffer(arr.buffers()[1], dtype=width)[arr.offset:arr.offset + len(arr) + 1]
        offsets = offsets.astype(np.int64)
        data = arr.buffers()[2]
        if data is not None and offsets[-1] > offsets[0]:
            self.fh.write(memoryview(data)[offsets[0]:offsets[-1]])
        self.starts.append(offsets[:-1] - offsets[0] + self.end)
        self.end += int(offsets[-1] - offsets[0])
        self.valid.append(arr.is_valid().to_numpy(zero_copy_only=False))

    def finish(self) -> None:
        self.fh.flush()
        self.offsets = np.concatenate(self.starts + [np.array([self.end], dtype=np.int64)])
        self.is_valid = np.concatenate(self.valid) if self.valid else np.zeros(0, dtype=bool)
        self.starts, self.valid = [], []
        self.fd = self.fh.fileno()

    def get(self, rows: np.ndarray) -> list[str | None]:
        """Values of `rows` (any order, repeats allowed), read in file order."""
        out: list[str | None] = [None] * len(rows)
        offsets, valid, fd = self.offsets, self.is_valid, self.fd
        for i in np.argsort(rows, kind="stable").tolist():
            r = int(rows[i])
            if valid[r]:
                a = int(offsets[r])
                out[i] = os.pread(fd, int(offsets[r + 1]) - a, a).decode("utf-8")
        return out

    def close(self) -> None:
        self.fh.close()


class Texts:
    """Document and query texts by corpus row / query id.

    On the first lookup, the corpus's titles and texts are copied once, streaming, into a store on disk beside
    the ingest entry (`_ColumnStore`), so a lookup costs the rows it reads and memory does not hold the corpus.
    `corpus` is the memory-mapped `doc_id` column.
    """

    def __init__(self, ingest_dir: Path, use_title: bool, title_sep: str, batch: int = 65_536) -> None:
        self.corpus = pq.read_table(ingest_dir / "corpus.parquet", columns=["doc_id"], memory_map=True)
        self.ingest_dir, self.use_title, self.title_sep = ingest_dir, use_title, title_sep
        self.batch = batch
        self._store: tuple[_ColumnStore, _ColumnStore] | None = None
        queries = pq.read_table(ingest_dir / "queries.parquet", columns=["query_id", "text"])
        self.queries = dict(zip(queries["query_id"].to_pylist(), queries["text"].to_pylist()))

    def parts(self, idx: list[int] | np.ndarray) -> tuple[list[str], list[str]]:
        """(titles, texts) of corpus rows."""
        if len(idx) == 0:
            return [], []
        rows = np.asarray(idx, dtype=np.int64)
        titles, texts = self._stores()
        return titles.get(rows), texts.get(rows)

    def _stores(self) -> tuple[_ColumnStore, _ColumnStore]:
        if self._store is None:
            folder = self.ingest_dir.parent
            titles, texts = _ColumnStore(folder), _ColumnStore(folder)
            # pre_buffer would keep every row group's bytes until the file is closed: the whole corpus
            pf = pq.ParquetFile(self.ingest_dir / "corpus.parquet", pre_buffer=False)
            for rb in pf.iter_batches(batch_size=self.batch, columns=["title", "text"]):
                titles.append(rb.column(0))
                texts.append(rb.column(1))
            titles.finish()
            texts.finish()
            self._store = titles, texts
        return self._store

    def join(self, titles: list[str], texts: list[str]) -> list[str]:
        if not self.use_title:
            return texts
        return [f"{t}{self.title_sep}{x}" if t else x for t, x in zip(titles, texts)]

    def docs(self, idx: list[int] | np.ndarray) -> list[str]:
        """Retrieval texts (title + sep + text when titles are used) of corpus rows."""
        return self.join(*self.parts(idx))

    def close(self) -> None:
        if self._store is not None:
            for store in self._store:
                store.close()
            self._store = None

    def __enter__(self) -> Texts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        cols = {n: t[n].to_pylist() for n in ("doc_id", "doc_idx", "rank", "score", "teacher_score",
                                               "filter_score", "retriever")}
        bounds = [0] + (np.flatnonzero(qids[1:] != qids[:-1]) + 1).tolist() + [len(qids)]
        yield [(str(qids[a]), {n: v[a:b] for n, v in cols.items()}) for a, b in zip(bounds[:-1], bounds[1:])]


# json.dumps(..., ensure_ascii=False) builds a new encoder per call; one encoder writes the same bytes
_JSON = json.JSONEncoder(ensure_ascii=False)


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
            names, encode = list(rows), _JSON.encode
            self.fh.writelines(encode(dict(zip(names, values))) + "\n" for values in zip(*(rows[k] for k in names)))

    def close(self) -> None:
        if self.parquet:
            self.writer.close()
        else:
            self.fh.close()


def _scores_by_pair(path: Path | None) -> dict[tuple[str, str], float]:
    if path is None:
        return {}
    t = pq.read_table(path, columns=["query_id", "doc_id", "teacher_score"])
    return dict(zip(zip(t["query_id"].to_pylist(), t["doc_id"].to_pylist()), t["teacher_score"].to_pylist()))


def _only_positives(rec: QueryRecord, keep: list[int]) -> QueryRecord | None:
    """The record with only the positives at `keep` (None when none is left)."""
    if not keep:
        return None

    def pick(values: list | None) -> list | None:
        return None if values is None else [values[i] for i in keep]

    return QueryRecord(rec.qid, rec.text, pick(rec.pos_ids), pick(rec.pos_titles), pick(rec.pos_bodies),
                       pick(rec.pos_texts), pick(rec.pos_teacher), pick(rec.pos_scores), rec.neg, rec.neg_titles,
                       rec.neg_bodies, rec.neg_texts)


def export(params: dict[str, Any], num_negatives: int, ingest_dir: Path, negatives_path: Path,
           query_ids: pa.ChunkedArray, min_positive_score: int, use_title: bool, title_sep: str,
           provenance: dict[str, Any], out_dir: Path, teacher_positives: Path | None = None,
           source_positives: Path | None = None) -> dict[str, Any]:
    """Write every configured format. `teacher_positives` / `source_positives` hold the positives' teacher
    scores and the scores on the filters' scale (teacher's or retriever's; None for fused RRF scores)."""
    with Texts(ingest_dir, use_title, title_sep) as texts:
        return _export(texts, params, num_negatives, negatives_path, query_ids, min_positive_score, out_dir,
                       provenance, teacher_positives, source_positives)


def _export(texts: Texts, params: dict[str, Any], num_negatives: int, negatives_path: Path,
            query_ids: pa.ChunkedArray, min_positive_score: int, out_dir: Path, provenance: dict[str, Any],
            teacher_positives: Path | None, source_positives: Path | None) -> dict[str, Any]:
    positives = positives_by_query(texts.ingest_dir, texts.corpus["doc_id"], min_positive_score)
    teacher, source = _scores_by_pair(teacher_positives), _scores_by_pair(source_positives)
    opts = Options(num_negatives, teacher_positives is not None, params["scores"])
    formats = {fmt: FORMATS[fmt] for fmt in params["formats"]}
    schemas = {fmt: schema_fn(opts) for fmt, (schema_fn, _) in formats.items()}
    metadata = {b"negmine": json.dumps(provenance, sort_keys=True).encode("utf-8")}
    sinks = {(fmt, ft): _Sink(out_dir / f"{fmt}.{ft}", schemas[fmt], metadata)
             for fmt in formats for ft in params["file_types"]}
    skipped: dict[str, int] = {}
    written: set[str] = set()
    seen_pairs: set[tuple[str, str]] = set()
    repeated: dict[str, int] = {}

    def lookup(groups: list[tuple[str, dict[str, list]]]) -> dict[int, tuple[str, str]]:
        """(title, text) of every corpus row a chunk's records name, read in one batch."""
        rows = sorted({i for qid, neg in groups for i in (*positives[qid][1], *neg["doc_idx"])})
        return dict(zip(rows, zip(*texts.parts(rows)))) if rows else {}

    def record(qid: str, neg: dict[str, list], found: dict[int, tuple[str, str]]) -> QueryRecord:
        pos_ids, pos_idx = positives[qid]
        pt, pb = [found[i][0] for i in pos_idx], [found[i][1] for i in pos_idx]
        nt, nb = [found[i][0] for i in neg["doc_idx"]], [found[i][1] for i in neg["doc_idx"]]
        return QueryRecord(qid, texts.queries[qid], pos_ids, pt, pb, texts.join(pt, pb),
                           [teacher[(qid, d)] for d in pos_ids] if opts.teacher else None,
                           [source[(qid, d)] for d in pos_ids] if source else None,
                           neg, nt, nb, texts.join(nt, nb))

    try:
        for chunk in bar(_query_groups(negatives_path), desc="export", unit="chunk"):
            batch = {fmt: empty_rows(schemas[fmt]) for fmt in formats}
            found = lookup(chunk)
            for qid, neg in chunk:
                written.add(qid)
                rec = record(qid, neg, found)
                # ids that share a query text are one question (their positives are pooled at exclusion): a
                # (text, positive) pair already written under another id would only repeat training rows
                fresh = [i for i, d in enumerate(rec.pos_ids) if (rec.text, d) not in seen_pairs]
                seen_pairs.update((rec.text, d) for d in rec.pos_ids)
                text_rec = rec if len(fresh) == len(rec.pos_ids) else _only_positives(rec, fresh)
                for fmt, (_, rows_fn) in formats.items():
                    if fmt == "ids":
                        rows_fn(rec, opts, batch[fmt], skipped)
                    elif text_rec is None:
                        repeated[fmt] = repeated.get(fmt, 0) + 1
                    else:
                        rows_fn(text_rec, opts, batch[fmt], skipped)
            for (fmt, _), sink in sinks.items():
                sink.write(batch[fmt])
        # queries whose sampling gave no negative: the ids format lists them with empty lists, others skip them
        empty = {n: [] for n in ("doc_id", "doc_idx", "rank", "score", "teacher_score", "filter_score",
                                 "retriever")}
        batch = {fmt: empty_rows(schemas[fmt]) for fmt in formats}
        left = [(qid, empty) for qid in query_ids.to_pylist() if qid not in written and qid in positives]
        for a in range(0, len(left), 4096):
            part = left[a:a + 4096]
            found = lookup(part)
            for qid, neg in part:
                rec = record(qid, neg, found)
                for fmt, (_, rows_fn) in formats.items():
                    if fmt == "ids":
                        rows_fn(rec, opts, batch[fmt], skipped)
                    else:
                        skipped[fmt] = skipped.get(fmt, 0) + 1
        for (fmt, _), sink in sinks.items():
            sink.write(batch[fmt])
    finally:
        for sink in sinks.values():
            sink.close()
    files = {sink.path.name: sink.rows for sink in sinks.values()}
    return {"files": files, "queries_with_negatives": len(written), "queries_left_out": skipped,
            "repeated_queries_written_once": repeated}
