"""The ingest entry's tables and what is derived from them, owned here once (as ranx's Qrels owns its parsing).

Every stage asks this module, never another stage, for: the entry's file names, a document's or query's text by
position or id (`Texts`, with the one title join), which queries are mined and their positives
(`positives.parquet`, written once at ingest: each mined query's own positives, best grade first, plus the
positives pooled from queries that share its normalised text), and membership tests against them (`Positives`).
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negmine.io import read_parquet

CORPUS = "corpus.parquet"
QUERIES = "queries.parquet"
QRELS = "qrels.parquet"
HOLDOUT = "holdout.parquet"
POSITIVES = "positives.parquet"
TEXT = "text.json"  # how a document's retrieval text is made: use_title, title_sep
FILES = (CORPUS, QUERIES, QRELS, HOLDOUT, POSITIVES, TEXT)

POSITIVES_SCHEMA = pa.schema([
    ("query_id", pa.string()),
    ("doc_id", pa.string()),
    ("doc_idx", pa.int64()),  # row in corpus.parquet
    ("grade", pa.int32()),
    ("pooled", pa.bool_()),  # a positive of another query with the same normalised text, not the query's own
])


def join_title(title: str | None, text: str, use_title: bool, sep: str) -> str:
    """A document's retrieval text: title + sep + text when titles are used and there is one (as BEIR does)."""
    return f"{title}{sep}{text}" if (use_title and title) else text


def text_settings(ingest_dir: Path) -> tuple[bool, str]:
    t = json.loads((ingest_dir / TEXT).read_text())
    return bool(t["use_title"]), str(t["title_sep"])


def num_docs(ingest_dir: Path) -> int:
    return pq.ParquetFile(ingest_dir / CORPUS).metadata.num_rows


def doc_ids(ingest_dir: Path) -> pa.ChunkedArray:
    return read_parquet(ingest_dir / CORPUS, columns=["doc_id"], memory_map=True).column(0)


def iter_doc_texts(ingest_dir: Path, batch: int = 50_000) -> Iterator[str]:
    """Retrieval texts of the corpus in table order, read in batches so texts never all sit in memory."""
    use_title, sep = text_settings(ingest_dir)
    # pre_buffer would keep every row group's bytes until the file is closed: the whole corpus, at the end
    pf = pq.ParquetFile(ingest_dir / CORPUS, pre_buffer=False)
    for rb in pf.iter_batches(batch_size=batch, columns=["title", "text"]):
        for title, text in zip(rb.column(0).to_pylist(), rb.column(1).to_pylist()):
            yield join_title(title, text, use_title, sep)


def write_derived(ingest_dir: Path, min_positive_score: int, use_title: bool, title_sep: str) -> None:
    """Ingest's last step: the text settings and positives.parquet, so no stage derives them again."""
    (ingest_dir / TEXT).write_text(json.dumps({"use_title": use_title, "title_sep": title_sep}) + "\n")
    qrels = read_parquet(ingest_dir / QRELS)
    qrels = qrels.filter(pc.greater_equal(qrels["score"], min_positive_score))
    qrels = qrels.sort_by([("query_id", "ascending"), ("score", "descending"), ("doc_id", "ascending")])
    didx = pc.index_in(qrels["doc_id"], value_set=doc_ids(ingest_dir).combine_chunks()).to_pylist()
    own: dict[str, list[tuple[str, int, int]]] = {}
    for q, d, i, g in zip(qrels["query_id"].to_pylist(), qrels["doc_id"].to_pylist(), didx,
                          qrels["score"].to_pylist()):
        own.setdefault(q, []).append((d, i, g))
    queries = read_parquet(ingest_dir / QUERIES, columns=["query_id", "hash"])
    mined = [(q, h) for q, h in zip(queries["query_id"].to_pylist(), queries["hash"].to_pylist()) if q in own]
    # queries with the same (normalised) text are one question: a positive of one is a positive of all, else the
    # twin would mine its sibling's positive as a negative
    twins: dict[int, list[str]] = {}
    for q, h in mined:
        twins.setdefault(h, []).append(q)
    cols: dict[str, list] = {name: [] for name in POSITIVES_SCHEMA.names}
    for q, h in mined:
        rows = [(d, i, g, False) for d, i, g in own[q]]
        mine = {d for d, _, _ in own[q]}
        for t in twins[h]:
            if t != q:
                rows += [(d, i, g, True) for d, i, g in own[t] if d not in mine]
                mine |= {d for d, _, _ in own[t]}
        for d, i, g, pooled in rows:
            for name, value in zip(("query_id", "doc_id", "doc_idx", "grade", "pooled"), (q, d, i, g, pooled)):
                cols[name].append(value)
    pq.write_table(pa.table(cols, schema=POSITIVES_SCHEMA), ingest_dir / POSITIVES)


def _own_positives(ingest_dir: Path) -> pa.Table:
    t = read_parquet(ingest_dir / POSITIVES)
    return t.filter(pc.invert(t["pooled"]))


def mined_queries(ingest_dir: Path) -> pa.Table:
    """The queries with at least one positive of their own, in the order of the queries table: the ones mined."""
    wanted = pc.unique(_own_positives(ingest_dir)["query_id"])
    queries = read_parquet(ingest_dir / QUERIES, columns=["query_id", "text"])
    return queries.filter(pc.is_in(queries["query_id"], value_set=wanted))


def mined_query_ids(ingest_dir: Path) -> pa.Array:
    return mined_queries(ingest_dir)["query_id"].combine_chunks()


def positives_by_query(ingest_dir: Path) -> dict[str, tuple[list[str], list[int]]]:
    """Each mined query's own positives (ids, corpus rows), best grade first, then by id: a defined order."""
    t = _own_positives(ingest_dir)
    out: dict[str, tuple[list[str], list[int]]] = {}
    for q, d, i in zip(t["query_id"].to_pylist(), t["doc_id"].to_pylist(), t["doc_idx"].to_pylist()):
        ids, idx = out.setdefault(q, ([], []))
        ids.append(d)
        idx.append(i)
    return out


def positive_pairs(ingest_dir: Path, query_ids: pa.Array) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Every (query, own positive) pair of `query_ids`, in their order: query ids, doc ids, corpus rows, positions."""
    by_query = positives_by_query(ingest_dir)
    q_out, d_out, rows, qpos = [], [], [], []
    for i, q in enumerate(query_ids.to_pylist()):
        ids, idx = by_query.get(q, ([], []))
        q_out += [q] * len(ids)
        d_out += ids
        rows += idx
        qpos += [i] * len(ids)
    return q_out, d_out, np.asarray(rows, dtype=np.int64), np.asarray(qpos, dtype=np.int64)


class _ColumnStore:
    """A string column of the corpus on disk: its UTF-8 bytes in an unlinked temporary file, offsets in memory.

    Looking a row up is one `pread` of its bytes: the cost grows with the rows read, not with the corpus (a
    `take` on the memory-mapped table costs a scan of its chunks per call), and resident memory holds the offsets
    (8 bytes a row) and what was read, not the column (file pages are the kernel's to evict).
    """

    def __init__(self, folder: Path) -> None:
        # an unnamed file where the filesystem allows it, so even a killed run leaves nothing behind; beside the
        # cache (sized for corpora), else in the system's temporary folder
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

    On the first document lookup the corpus's titles and texts are copied once, streaming, into a store on disk
    beside the ingest entry (`_ColumnStore`), so a lookup costs the rows it reads and memory does not hold the
    corpus. `corpus` is the memory-mapped `doc_id` column. Use it as a context manager (or `close()`) to drop
    the store.
    """

    def __init__(self, ingest_dir: Path, batch: int = 8192) -> None:
        self.ingest_dir, self.batch = ingest_dir, batch
        self.corpus = read_parquet(ingest_dir / CORPUS, columns=["doc_id"], memory_map=True)
        self.use_title, self.title_sep = text_settings(ingest_dir)
        self._store: tuple[_ColumnStore, _ColumnStore] | None = None
        queries = read_parquet(ingest_dir / QUERIES, columns=["query_id", "text"])
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
            pf = pq.ParquetFile(self.ingest_dir / CORPUS, pre_buffer=False)
            # a row group at a time, in batches of 8,192: a batch that straddles two row groups holds both decoded
            # (batches of 65,536 peaked at 545 MiB at 1M documents, 387 at 100k; these at 318 and 285)
            for group in range(pf.num_row_groups):
                for rb in pf.iter_batches(batch_size=self.batch, row_groups=[group], columns=["title", "text"]):
                    titles.append(rb.column(0))
                    texts.append(rb.column(1))
            titles.finish()
            texts.finish()
            self._store = titles, texts
        return self._store

    def join(self, titles: list[str], texts: list[str]) -> list[str]:
        return [join_title(t, x, self.use_title, self.title_sep) for t, x in zip(titles, texts)]

    def docs(self, idx: list[int] | np.ndarray) -> list[str]:
        """Retrieval texts (title + sep + text when titles are used) of corpus rows."""
        return self.join(*self.parts(idx))

    def close(self) -> None:
        if self._store is not None:
            for store in self._store:
                store.close()
            self._store = None

    def __enter__(self) -> "Texts":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_MIX = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio multiplier: spreads query indices over 64 bits


def _pair_key(qidx: np.ndarray, h: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return h.view(np.uint64) ^ (qidx.astype(np.uint64) * _MIX)


class Positives:
    """Known positives of the mined queries (pooled over same-text queries), as integer keys for vectorised
    membership tests; query indices are positions in `mined_query_ids`."""

    def __init__(self, ingest_dir: Path) -> None:
        corpus = read_parquet(ingest_dir / CORPUS, columns=["hash", "text_hash"], memory_map=True)
        self.query_ids = mined_query_ids(ingest_dir)
        self.n_docs = corpus.num_rows
        self.doc_hash = corpus["hash"].to_numpy()
        self.doc_text_hash = corpus["text_hash"].to_numpy()
        queries = read_parquet(ingest_dir / QUERIES, columns=["query_id", "hash"])
        qpos = pc.index_in(self.query_ids, value_set=queries["query_id"]).to_numpy()
        self.query_hash = queries["hash"].to_numpy()[qpos]
        pos = read_parquet(ingest_dir / POSITIVES, columns=["query_id", "doc_idx"])
        self.pos_qidx = pc.index_in(pos["query_id"], value_set=self.query_ids).to_numpy(
            zero_copy_only=False).astype(np.int64)
        self.pos_didx = pos["doc_idx"].to_numpy().astype(np.int64)
        self.pos_keys = np.unique(self.pos_qidx * self.n_docs + self.pos_didx)
        self.dup_keys = np.unique(_pair_key(self.pos_qidx, self.doc_hash[self.pos_didx]))
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


__all__ = ["CORPUS", "QUERIES", "QRELS", "HOLDOUT", "POSITIVES", "TEXT", "Texts", "Positives", "join_title",
           "mined_queries", "mined_query_ids", "positives_by_query", "positive_pairs", "iter_doc_texts",
           "write_derived", "doc_ids", "num_docs", "text_settings"]
