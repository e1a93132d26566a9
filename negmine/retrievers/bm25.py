"""BM25 index: bm25s (Lù, "BM25S: Orders of magnitude faster lexical search via eager sparse scoring", 2024) by
default, rank-bm25 as the slow reference backend.

Both backends see the same tokens (bm25s' tokenizer: lowercasing, English stopwords, optional Snowball stemming),
so they differ only in how they score. bm25s precomputes every (term, document) score into a sparse matrix saved
as .npy files, of which search reads the rows its queries need (`Searcher.term_rows`); rank-bm25 is pickled.
"""
from __future__ import annotations

import functools
import itertools
import json
import logging
import pickle
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from negmine import schema, tables
from negmine.errors import ConfigError
from negmine.progress import bar
from negmine.retrievers import Retriever, register, search_stage
from negmine.retrievers.inverted import (BLOCK_SHARE, InvertedIndex, index_range_entries, npy_header, term_ranges,
                                         top_k_indices)
from negmine.stage import Inputs, Params, Stage, reads

VERSION = "1"
_RANK_BM25_CLASSES = {"bm25l": "BM25L", "bm25+": "BM25Plus"}  # every other method: BM25Okapi


def _quiet_bm25s() -> None:
    """bm25s sets its logger to DEBUG on import; follow negmine's own level instead."""
    logging.getLogger("bm25s").setLevel(logging.getLogger("negmine").getEffectiveLevel())


def make_tokenizer(params: Mapping[str, Any]):
    import bm25s.tokenization

    _quiet_bm25s()

    stemmer = None
    if params["stemmer"]:
        try:
            import Stemmer
        except ImportError:
            raise ConfigError("[bm25] stemmer needs PyStemmer: pip install PyStemmer") from None
        try:
            stemmer = Stemmer.Stemmer(params["stemmer"]).stemWord
        except KeyError:
            raise ConfigError(f"[bm25] stemmer {params['stemmer']!r} is not a Snowball language; try "
                              f"one of {', '.join(Stemmer.algorithms())}") from None
    stopwords = "en" if params["stopwords"] in ("en", "english") else None
    return bm25s.tokenization.Tokenizer(lower=params["lowercase"], stopwords=stopwords, stemmer=stemmer)


# Python objects of one document's token list while a corpus chunk is tokenized (a list of ints: 8 bytes a slot
# and 28 an int beyond the small-int cache, ~150 tokens a document), rounded up: sizes the chunk from the budget
_TOKENIZED_DOC_BYTES = 16 << 10


def index_chunk_docs(memory_budget: int | None) -> int:
    """Documents tokenized at once: a sixteenth of the budget for their token lists (the rest of the budget is
    the reading, the unique-term sort and the index arrays themselves); past 4,096 documents bigger chunks save
    no time."""
    from negmine.memory import budget_bytes

    return max(1, min(4096, budget_bytes(memory_budget) // 16 // _TOKENIZED_DOC_BYTES))


def build_index(params: Mapping[str, Any], ingest_dir: Path, out_dir: Path) -> dict[str, Any]:
    n_docs = tables.num_docs(ingest_dir)
    memory_budget = params["memory_budget"]
    tok = make_tokenizer(params)
    texts = bar(tables.iter_doc_texts(ingest_dir, batch=4096), total=n_docs, desc="bm25: tokenize", unit="doc")
    if params["backend"] == "bm25s":
        vocab = _build_bm25s(params, tok, texts, n_docs, index_chunk_docs(memory_budget),
                             index_range_entries(memory_budget), out_dir / "bm25s")
    else:
        import rank_bm25

        # the reference backend keeps every token list (rank-bm25 needs them all): small corpora only
        tokens = tok.tokenize(texts, update_vocab=True, return_as="string", length=n_docs, show_progress=False)
        cls = getattr(rank_bm25, _RANK_BM25_CLASSES.get(params["method"], "BM25Okapi"))
        kwargs = {"k1": params["k1"], "b": params["b"]}
        if cls is not rank_bm25.BM25Okapi:
            kwargs["delta"] = params["delta"]
        model = cls(tokens, **kwargs)
        with open(out_dir / "rank_bm25.pkl", "wb") as fh:
            pickle.dump(model, fh, protocol=pickle.HIGHEST_PROTOCOL)
        vocab = len(model.idf)
    (out_dir / "index.json").write_text(json.dumps({"backend": params["backend"], "documents": n_docs}))
    return {"documents": n_docs, "vocabulary": vocab, "backend": params["backend"]}


def _build_bm25s(params: dict[str, Any], tok, texts: Iterator[str], n_docs: int, chunk_docs: int,
                 range_entries: int, save_dir: Path) -> int:
    """bm25s' index, built from corpus chunks: the files `BM25.index` + `save` write, byte for byte.

    bm25s' own `index` wants every document's token list at once (Python lists: about 1.8 GB at 300k documents).
    Here each chunk of `chunk_docs` documents is tokenized (the tokenizer's vocabulary grows as it would over the
    whole corpus), reduced to its (term, count) pairs per document, which go to an unnamed temporary file, and its
    token lists dropped. Document frequencies and the mean length need the whole corpus, so scores are computed in
    a second pass, term range by term range: for each range of at most `range_entries` entries the chunks are read
    back one at a time, their entries of those terms scored with bm25s' own idf and term-frequency functions and
    placed into that range's slice of the term-major (CSC) arrays by a counting sort, and the slice is written
    into the .npy files at its offset. Peak: one range's slice plus one chunk, whatever the corpus (the index's
    own size, 8 bytes a (document, term) entry, 867 MB at a million documents, is never in memory at once).
    """
    import bm25s
    from bm25s.scoring import _build_idf_array, _build_nonoccurrence_array, _select_idf_scorer, _select_tfc_scorer

    retriever = bm25s.BM25(k1=params["k1"], b=params["b"], delta=params["delta"], method=params["method"])
    spill = tempfile.TemporaryFile(dir=save_dir.parent)  # per chunk: terms, counts, entries per document
    chunks: list[tuple[int, int]] = []  # (entries, documents) of each chunk, in file order
    doc_len = np.zeros(n_docs, dtype=np.int64)
    df = np.zeros(0, dtype=np.int64)
    done = 0
    texts = iter(texts)  # one iterator: a progress bar's __iter__ would start a new generator per islice
    while True:
        batch = list(itertools.islice(texts, chunk_docs))
        if not batch:
            break
        ids = tok.tokenize(batch, update_vocab=True, return_as="ids", show_progress=False)
        lens = np.fromiter((len(d) for d in ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lens.sum()))
        del ids, batch
        width = int(flat.max()) + 1 if len(flat) else 1
        # one key per (document, term): unique() sorts them by document, then term, and counts repeats
        keys, tf = np.unique(np.repeat(np.arange(len(lens), dtype=np.int64), lens) * width + flat,
                             return_counts=True)
        terms, per_doc = (keys % width).astype(np.int32), np.bincount(keys // width, minlength=len(lens))
        for part in (terms, tf.astype(np.float32), per_doc):
            spill.write(part.tobytes())
        chunks.append((len(terms), len(per_doc)))
        doc_len[done:done + len(lens)] = lens
        counts = np.bincount(terms, minlength=max(width, len(df)))
        counts[:len(df)] += df
        df = counts
        done += len(lens)
    vocab = tok.get_vocab_dict()
    unique_ids = set(vocab.values())
    n_vocab = len(unique_ids)
    df = np.concatenate([df, np.zeros(max(0, n_vocab - len(df)), dtype=np.int64)])
    frequencies = {t: int(df[t]) for t in unique_ids}
    avg_doc_len = doc_len.mean()  # the same reduction over the same array as bm25s' mean
    idf_fn, tfc_fn = _select_idf_scorer(retriever.idf_method), _select_tfc_scorer(retriever.method)
    nonoccurrence = None
    if retriever.method in retriever.methods_requiring_nonoccurrence:
        nonoccurrence = _build_nonoccurrence_array(frequencies, done, idf_fn, tfc_fn, l_d=avg_doc_len,
                                                   l_avg=avg_doc_len, k1=retriever.k1, b=retriever.b,
                                                   delta=retriever.delta, dtype=retriever.dtype)
    idf = _build_idf_array(frequencies, done, idf_fn, dtype=retriever.dtype)
    indptr = np.zeros(n_vocab + 1, dtype=np.int64)
    np.cumsum(df[:n_vocab], out=indptr[1:])
    if "" not in vocab:  # as BM25.index(create_empty_token=True) does, on the tokenizer's own dict
        vocab[""] = max(vocab.values()) + 1
    # bm25s writes params, vocab, indptr and the non-occurrence array; data and indices (the index's size) are
    # streamed into their .npy files below, so they are handed to it empty and its copies removed
    retriever.scores = {"data": np.zeros(0, np.float32), "indices": np.zeros(0, np.int32), "indptr": indptr,
                        "num_docs": done}
    retriever.nonoccurrence_array = nonoccurrence
    retriever.vocab_dict = vocab
    retriever.unique_token_ids_set = set(vocab.values())
    retriever.save(str(save_dir), show_progress=False, data_name=".unused-data.npy",
                   indices_name=".unused-indices.npy")
    for name in (".unused-data.npy", ".unused-indices.npy"):
        (save_dir / name).unlink()
    with open(save_dir / "data.csc.index.npy", "wb") as data_fh, \
            open(save_dir / "indices.csc.index.npy", "wb") as indices_fh:
        data_at = npy_header(data_fh, np.float32, int(indptr[-1]))
        indices_at = npy_header(indices_fh, np.int32, int(indptr[-1]))
        for lo, hi in term_ranges(indptr, range_entries):
            data, indices = _score_terms(spill, chunks, lo, hi, indptr, idf, doc_len, avg_doc_len, tfc_fn,
                                         nonoccurrence, retriever)
            data_fh.seek(data_at + 4 * int(indptr[lo]))
            data.tofile(data_fh)
            indices_fh.seek(indices_at + 4 * int(indptr[lo]))
            indices.tofile(indices_fh)
            del data, indices
    spill.close()
    tok.save_vocab(str(save_dir))
    tok.save_stopwords(str(save_dir))
    return len(vocab)


def _score_terms(spill, chunks: list[tuple[int, int]], lo: int, hi: int, indptr: np.ndarray, idf: np.ndarray,
                 doc_len: np.ndarray, avg_doc_len: float, tfc_fn, nonoccurrence: np.ndarray | None,
                 retriever) -> tuple[np.ndarray, np.ndarray]:
    """The (data, indices) slices of terms [lo, hi) of the term-major index, from one read of every spilled chunk:
    each entry's score placed by a counting sort (within a term, documents ascending)."""
    base = int(indptr[lo])
    data = np.empty(int(indptr[hi]) - base, dtype=np.float32)
    indices = np.empty(len(data), dtype=np.int32)
    heads = indptr[lo:hi] - base
    first_doc = 0
    spill.seek(0)
    for n_entries, n_chunk_docs in chunks:
        terms = np.fromfile(spill, dtype=np.int32, count=n_entries)
        tf = np.fromfile(spill, dtype=np.float32, count=n_entries)
        per_doc = np.fromfile(spill, dtype=np.int64, count=n_chunk_docs)
        keep = np.flatnonzero((terms >= lo) & (terms < hi))
        docs = np.repeat(np.arange(first_doc, first_doc + len(per_doc), dtype=np.int64), per_doc)[keep]
        first_doc += len(per_doc)
        terms, tf = terms[keep], tf[keep]
        # bm25s' per-document arithmetic, element by element: l_d an integer, l_avg and the tfc in float64
        scores = idf[terms] * tfc_fn(tf_array=tf, l_d=doc_len[docs], l_avg=avg_doc_len, k1=retriever.k1,
                                     b=retriever.b, delta=retriever.delta)
        if nonoccurrence is not None:
            scores -= nonoccurrence[terms]
        order = np.argsort(terms, kind="stable")  # by term; within a term, documents stay ascending
        t = terms[order] - lo
        rank = np.arange(len(t)) - np.searchsorted(t, t, side="left")
        at = heads[t] + rank
        data[at] = scores[order].astype(np.float32)
        indices[at] = docs[order].astype(np.int32)
        heads += np.bincount(t, minlength=hi - lo)
    return data, indices


class Searcher(InvertedIndex):
    """Top-k search over a saved index, one chunk of queries at a time.

    For bm25s, a chunk of queries is scored in sparse products (queries x terms) @ (terms x documents) on
    bm25s' precomputed score matrix: the same sums bm25s computes query by query. The product is sparse, holding
    only the documents that share a term with each query, so the top-k cut reads those alone and no dense
    queries x corpus block is made. Products are made for as many queries at a time as fit half of
    `max_block_bytes` in the worst case, a dense product (the retrieve stage gives an eighth of its memory budget), and
    whose terms' rows of the index fit the other half: those rows alone are read from the index files (`pread`,
    so the file stays in the page cache and out of this process's memory; through a memory map, every page
    touched counted in RSS, and far more than was read: a product needing 100 MB of rows left 490 MB resident). (bm25l and bm25+ give every document a score; there dense rows are made, a quarter as many, for
    argpartition's work arrays.) Ties at the top-k cut keep the lower document index, as does the final order.
    """

    def __init__(self, params: Mapping[str, Any], index_dir: Path, max_block_bytes: int = 64 << 20) -> None:
        self._files: list = []  # first: close() must find it whatever fails below
        self.backend = params["backend"]
        self.max_block_bytes = max_block_bytes
        info = json.loads((index_dir / "index.json").read_text())
        self.n_docs = int(info["documents"])
        if self.backend == "bm25s":
            import bm25s

            _quiet_bm25s()
            r = bm25s.BM25.load(str(index_dir / "bm25s"), mmap=True, show_progress=False)
            # bm25s stores a documents x terms CSC matrix: row t of its transpose (terms x documents, CSR) is
            # term t's documents, indices[indptr[t]:indptr[t + 1]], and their scores in data
            self.indptr = np.array(r.scores["indptr"], dtype=np.int64)
            self.vocab_size = len(self.indptr) - 1
            self._files = [open(index_dir / "bm25s" / name, "rb") for name in ("data.csc.index.npy",
                                                                                  "indices.csc.index.npy")]
            self._at = [int(r.scores[name].offset) for name in ("data", "indices")]  # past the .npy headers
            self._dtypes = [np.dtype(r.scores[name].dtype) for name in ("data", "indices")]
            self.nonoccurrence = (np.asarray(r.nonoccurrence_array, dtype=np.float32)
                                  if getattr(r, "nonoccurrence_array", None) is not None else None)
            del r  # its memory maps: nothing reads the index through them
            self.tok = make_tokenizer(params)
            self.tok.load_vocab(str(index_dir / "bm25s"))
            self.tok.load_stopwords(str(index_dir / "bm25s"))
        else:
            with open(index_dir / "rank_bm25.pkl", "rb") as fh:
                self.model = pickle.load(fh)
            self.tok = make_tokenizer(params)  # a query's unknown words score 0 anyway, so no saved vocab

    def _query_matrix(self, texts: list[str]):
        import scipy.sparse as sp

        ids = self.tok.tokenize(texts, update_vocab=False, return_as="ids", show_progress=False)
        rows = np.repeat(np.arange(len(ids)), [len(q) for q in ids])
        cols = np.fromiter((t for q in ids for t in q), dtype=np.int64, count=len(rows))
        ok = cols < self.vocab_size
        # a term repeated in the query counts once per occurrence, as in bm25s
        return sp.csr_matrix((np.ones(int(ok.sum()), dtype=np.float32), (rows[ok], cols[ok])),
                             shape=(len(ids), self.vocab_size))

    def score_pairs(self, texts: list[str], doc_idx: np.ndarray) -> np.ndarray:
        """BM25 score of each (query text, corpus row) pair, retrieved or not (used for positives)."""
        if self.backend == "bm25s":
            return self.score_pairs_matrix(self._query_matrix(texts), doc_idx)
        tokens = self.tok.tokenize(texts, update_vocab=True, return_as="string", show_progress=False)
        return np.array([self.model.get_batch_scores(t, [int(d)])[0] for t, d in zip(tokens, doc_idx)],
                        dtype=np.float32)

    def search(self, texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(doc indices, scores), each (len(texts), k), sorted by score then doc index (a defined tie order).

        bm25s rows with fewer than k matching documents end in padding: doc index -1, score -inf.
        """
        if self.backend == "bm25s":
            return self.search_matrix(self._query_matrix(texts), k)
        k = min(k, self.n_docs)
        docs = np.empty((len(texts), k), dtype=np.int64)
        scores = np.empty((len(texts), k), dtype=np.float32)
        tokens = self.tok.tokenize(texts, update_vocab=True, return_as="string", show_progress=False)
        for i, q in enumerate(tokens):
            s = np.asarray(self.model.get_scores(q), dtype=np.float32)
            top = top_k_indices(s, k)
            docs[i], scores[i] = top, s[top]
        order = np.lexsort((docs, -scores), axis=-1)
        return np.take_along_axis(docs, order, -1), np.take_along_axis(scores, order, -1)

class BM25Chunks:
    """A worker for `engine.map`: the top-k of a chunk of query texts against the saved index."""

    def __init__(self, params: Mapping[str, Any], index_dir: Path, max_block_bytes: int) -> None:
        self.k = params["top_k"]
        self.searcher = Searcher(params, index_dir, max_block_bytes=max_block_bytes)

    def __call__(self, item: tuple[int, int, list[str]]) -> tuple[int, int, np.ndarray, np.ndarray]:
        a, b, texts = item
        return (a, b, *self.searcher.search(texts, self.k))


def retrieve_bm25(inputs: Inputs, params: Params, out_dir: Path) -> dict[str, Any]:
    """Top-k candidates of every mined query, and the BM25 score of every positive (retrieved or not)."""
    from negmine.retrieve import engine_search, write_candidates, write_positive_scores

    from negmine.memory import budget_bytes, query_chunk

    ingest_dir = inputs["ingest"]
    budget = budget_bytes(params["memory_budget"])
    # half the budget for the chunk's candidate rows; an eighth for the sparse products that score it
    queries = tables.mined_queries(ingest_dir)
    chunk = query_chunk(budget, params["top_k"], params["chunk_size"])
    # measured at a million documents: 1,024 queries took 12.5 CPU s in blocks of 128 MiB and 17.7 in blocks of
    # 512 MiB, with a third of the memory; larger blocks buy nothing
    blocks = BLOCK_SHARE * budget
    worker = functools.partial(BM25Chunks, params, inputs["index"].resolve(), int(blocks))
    stats = write_candidates(queries, ingest_dir, engine_search(worker, queries, chunk, with_texts=True),
                             "bm25", chunk, out_dir / schema.CANDIDATES_FILE)
    searcher = Searcher(params, inputs["index"], max_block_bytes=int(blocks))  # after the workers' (above)
    q, d, rows, qpos = tables.positive_pairs(ingest_dir, queries["query_id"].combine_chunks())
    texts = queries["text"].to_pylist()
    scores = np.concatenate([searcher.score_pairs([texts[i] for i in qpos[a:a + chunk]], rows[a:a + chunk])
                             for a in range(0, len(rows), chunk)]) if len(rows) else np.zeros(0, np.float32)
    write_positive_scores(out_dir / schema.POSITIVE_SCORES_FILE, q, d, rows, scores, "bm25")
    return {**stats, "top_k": params["top_k"], "score_type": "bm25"}


INDEX = Stage(name="index", version=VERSION, command="index", reads=reads("ingest"), section="bm25",
              params=lambda cfg, ctx: {**cfg["bm25"], "memory_budget": cfg["run"]["memory_budget"]},
              outputs=(),  # its files depend on the backend: the folder is it
              run=lambda inputs, params, out: build_index(params, inputs["ingest"], out),
              unkeyed={"memory_budget": "sizes the corpus chunks tokenized and the term ranges written at once: "
                                        "the index is the same"},
              enabled=lambda cfg: "bm25" in cfg["retrieve"]["retrievers"])


def bm25_pair_scores(entries: Mapping[str, Path], params: Mapping[str, Any], queries: list[str], qpos: np.ndarray,
                     rows: np.ndarray) -> np.ndarray:
    """The BM25 score of each (query position, corpus row) pair, from the saved index: BM25 as a teacher."""
    from negmine.memory import budget_bytes

    searcher = Searcher(params, entries["index"], int(BLOCK_SHARE * budget_bytes(params["memory_budget"])))
    out = np.zeros(len(rows), dtype=np.float32)
    try:
        for a in range(0, len(rows), 50_000):
            out[a:a + 50_000] = searcher.score_pairs([queries[q] for q in qpos[a:a + 50_000]], rows[a:a + 50_000])
    finally:
        searcher.close()
    return out


register(Retriever(
    name="bm25", section="bm25", stages=(INDEX,), score_type=lambda cfg: "bm25", help="lexical (bm25s or rank-bm25)",
    score_pairs=bm25_pair_scores, pair_reads=("index",),
    search=search_stage("bm25", "3", reads("ingest", "index"),
                        lambda cfg, ctx: {"top_k": cfg["retrieve"]["top_k"],
                                          "chunk_size": cfg["retrieve"]["chunk_size"],
                                          "memory_budget": cfg["run"]["memory_budget"], **cfg["bm25"]},
                        retrieve_bm25)))
