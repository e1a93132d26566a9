"""BM25 index: bm25s (Lù, "BM25S: Orders of magnitude faster lexical search via eager sparse scoring", 2024) by
default, rank-bm25 as the slow reference backend.

Both backends see the same tokens (bm25s' tokenizer: lowercasing, English stopwords, optional Snowball stemming),
so they differ only in how they score. bm25s precomputes every (term, document) score into a sparse matrix saved
as .npy files, which `load_index` memory-maps; rank-bm25 is pickled.
"""
from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from negmine import schema, tables
from negmine.errors import ConfigError
from negmine.progress import bar
from negmine.retrievers import Retriever, register, search_stage
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


def build_index(params: Mapping[str, Any], ingest_dir: Path, out_dir: Path) -> dict[str, Any]:
    n_docs = tables.num_docs(ingest_dir)
    tok = make_tokenizer(params)
    texts = bar(tables.iter_doc_texts(ingest_dir), total=n_docs, desc="bm25: tokenize", unit="doc")
    if params["backend"] == "bm25s":
        import bm25s

        tokens = tok.tokenize(texts, update_vocab=True, return_as="tuple", length=n_docs, show_progress=False)
        retriever = bm25s.BM25(k1=params["k1"], b=params["b"], delta=params["delta"], method=params["method"])
        retriever.index(tokens, show_progress=False)
        retriever.save(str(out_dir / "bm25s"), show_progress=False)
        tok.save_vocab(str(out_dir / "bm25s"))
        tok.save_stopwords(str(out_dir / "bm25s"))
        vocab = len(tokens.vocab)
    else:
        import rank_bm25

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


def top_k_indices(values: np.ndarray, k: int, ids: np.ndarray | None = None) -> np.ndarray:
    """Positions of the k largest values; among equal values at the cut, those with the lowest `ids` (default:
    the earliest positions), so which of several tied documents makes the cut is defined."""
    if len(values) <= k:
        return np.arange(len(values))
    part = np.argpartition(values, len(values) - k)[len(values) - k:]
    cut = values[part].min()
    above = np.flatnonzero(values > cut)
    ties = np.flatnonzero(values == cut)
    if ids is not None:
        ties = ties[np.argsort(ids[ties], kind="stable")]
    return np.concatenate([above, ties[:k - len(above)]])


class Searcher:
    """Top-k search over a saved index, one chunk of queries at a time.

    For bm25s, a chunk of queries is scored in one sparse product (queries x terms) @ (terms x documents) on
    bm25s' precomputed score matrix: the same sums bm25s computes query by query. The product is sparse, holding
    only the documents that share a term with each query, so the top-k cut reads those alone and no dense
    queries x corpus block is made. (bm25l and bm25+ give every document a score; there, dense rows are made at
    most `max_block_bytes` of scores at a time, which with argpartition's work arrays peaks near 4x that.)
    Ties at the top-k cut keep the lower document index, as does the final order.
    """

    def __init__(self, params: Mapping[str, Any], index_dir: Path, max_block_bytes: int = 64 << 20) -> None:
        self.backend = params["backend"]
        self.max_block_bytes = max_block_bytes
        info = json.loads((index_dir / "index.json").read_text())
        self.n_docs = int(info["documents"])
        if self.backend == "bm25s":
            import bm25s
            import scipy.sparse as sp

            _quiet_bm25s()
            r = bm25s.BM25.load(str(index_dir / "bm25s"), mmap=True, show_progress=False)
            indptr = np.asarray(r.scores["indptr"])
            self.vocab_size = len(indptr) - 1
            # bm25s stores a documents x terms CSC matrix; its transpose as CSR shares the same arrays
            self.term_doc = sp.csr_matrix((np.asarray(r.scores["data"]), np.asarray(r.scores["indices"]), indptr),
                                          shape=(self.vocab_size, self.n_docs))
            self.nonoccurrence = (np.asarray(r.nonoccurrence_array, dtype=np.float32)
                                  if getattr(r, "nonoccurrence_array", None) is not None else None)
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
            q = self._query_matrix(texts)
            out = np.asarray((q @ self.term_doc)[np.arange(len(texts)), doc_idx], dtype=np.float32).reshape(-1)
            if self.nonoccurrence is not None:
                out += (q @ self.nonoccurrence).astype(np.float32)
            return out
        tokens = self.tok.tokenize(texts, update_vocab=True, return_as="string", show_progress=False)
        return np.array([self.model.get_batch_scores(t, [int(d)])[0] for t, d in zip(tokens, doc_idx)],
                        dtype=np.float32)

    def search(self, texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(doc indices, scores), each (len(texts), k), sorted by score then doc index (a defined tie order).

        bm25s rows with fewer than k matching documents end in padding: doc index -1, score -inf.
        """
        k = min(k, self.n_docs)
        docs = np.empty((len(texts), k), dtype=np.int64)
        scores = np.empty((len(texts), k), dtype=np.float32)
        if self.backend == "bm25s":
            docs.fill(-1)
            scores.fill(-np.inf)  # rows with fewer than k matching documents are padded; callers drop the padding
            q = self._query_matrix(texts)
            extra = q @ self.nonoccurrence if self.nonoccurrence is not None else None
            # worst case a block's product is dense: bound it by max_block_bytes (value + index per entry)
            step = max(1, self.max_block_bytes // (8 * self.n_docs))
            for a in range(0, len(texts), step):
                block = q[a:a + step] @ self.term_doc
                if extra is not None:
                    dense = block.toarray()
                    dense += extra[a:a + step, None]
                    for i, row in enumerate(dense):
                        top = top_k_indices(row, k)
                        docs[a + i, :len(top)], scores[a + i, :len(top)] = top, row[top]
                    continue
                indptr, indices, data = block.indptr, block.indices, block.data
                for i in range(block.shape[0]):
                    lo, hi = indptr[i], indptr[i + 1]
                    row_docs = indices[lo:hi]
                    top = top_k_indices(data[lo:hi], k, row_docs)
                    docs[a + i, :len(top)] = row_docs[top]
                    scores[a + i, :len(top)] = data[lo:hi][top]
        else:
            tokens = self.tok.tokenize(texts, update_vocab=True, return_as="string", show_progress=False)
            for i, q in enumerate(tokens):
                s = np.asarray(self.model.get_scores(q), dtype=np.float32)
                top = top_k_indices(s, k)
                docs[i], scores[i] = top, s[top]
        order = np.lexsort((docs, -scores), axis=-1)
        return np.take_along_axis(docs, order, -1), np.take_along_axis(scores, order, -1)


def retrieve_bm25(inputs: Inputs, params: Params, out_dir: Path) -> dict[str, Any]:
    """Top-k candidates of every mined query, and the BM25 score of every positive (retrieved or not)."""
    from negmine.retrieve import write_candidates, write_positive_scores

    ingest_dir = inputs["ingest"]
    searcher = Searcher(params, inputs["index"])
    queries = tables.mined_queries(ingest_dir)
    stats = write_candidates(queries, ingest_dir, lambda a, b, part: searcher.search(part["text"].to_pylist(),
                                                                                      params["top_k"]),
                             "bm25", params["chunk_size"], out_dir / schema.CANDIDATES_FILE)
    q, d, rows, qpos = tables.positive_pairs(ingest_dir, queries["query_id"].combine_chunks())
    texts = queries["text"].to_pylist()
    scores = np.concatenate([searcher.score_pairs([texts[i] for i in qpos[a:a + 4096]], rows[a:a + 4096])
                             for a in range(0, len(rows), 4096)]) if len(rows) else np.zeros(0, np.float32)
    write_positive_scores(out_dir / schema.POSITIVE_SCORES_FILE, q, d, rows, scores, "bm25")
    return {**stats, "top_k": params["top_k"], "score_type": "bm25"}


INDEX = Stage(name="index", version=VERSION, command="index", reads=reads("ingest"), section="bm25",
              params=lambda cfg, ctx: cfg["bm25"], outputs=(),  # its files depend on the backend: the folder is it
              run=lambda inputs, params, out: build_index(params, inputs["ingest"], out),
              enabled=lambda cfg: "bm25" in cfg["retrieve"]["retrievers"])

register(Retriever(
    name="bm25", section="bm25", stages=(INDEX,), score_type=lambda cfg: "bm25", help="lexical (bm25s or rank-bm25)",
    search=search_stage("bm25", "3", reads("ingest", "index"),
                        lambda cfg, ctx: {"top_k": cfg["retrieve"]["top_k"],
                                          "chunk_size": cfg["retrieve"]["chunk_size"], **cfg["bm25"]},
                        retrieve_bm25)))
