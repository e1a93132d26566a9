"""Dense search with faiss over the encode stage's shards: exact inner product, or an approximate index.

Exact search (`index = "flat"`, the default) never loads the corpus at once: for each chunk of queries it runs
`faiss.knn` against one memory-mapped shard at a time and merges the running top-k. Peak memory, in bytes, is about

    4 x dim x (shard_size + chunk_size)          one shard and the query chunk
  + 24 x chunk_size x top_k                       running and new top-k (scores and ids), merged
  + faiss' fixed tiles (a few tens of MB)

whatever the number of documents or queries. Approximate indexes (HNSW: Malkov & Yashunin 2018; IVF: Jégou et al.
2011) are built once in their own cached stage and hold the corpus vectors in memory, as faiss requires.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from negmine.encode import doc_shards
from negmine.progress import bar

VERSION = "1"


def _faiss():
    import faiss

    return faiss


def build_ann(params: dict[str, Any], encode_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Build an HNSW or IVF inner-product index over the unique document vectors, shard by shard."""
    faiss = _faiss()
    shards = doc_shards(encode_dir)
    dim = int(np.load(shards[0], mmap_mode="r").shape[1])
    n = sum(int(np.load(s, mmap_mode="r").shape[0]) for s in shards)
    if params["index"] == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["hnsw_ef_construction"]
    else:
        nlist = params["ivf_nlist"] or max(1, int(4 * np.sqrt(n)))
        nlist = min(nlist, n)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        # train on an evenly spread sample: faiss wants about 39 points a list, more only costs time
        want = min(n, max(nlist * 39, 10_000))
        step = max(1, n // want)
        sample = np.concatenate([np.asarray(np.load(s, mmap_mode="r")[::step]) for s in shards])
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    for s in bar(shards, desc=f"{params['index']} index", unit="shard"):
        index.add(np.ascontiguousarray(np.load(s, mmap_mode="r"), dtype=np.float32))
    faiss.write_index(index, str(out_dir / "faiss.index"))
    (out_dir / "ann.json").write_text(json.dumps({"type": params["index"], "vectors": n, "dim": dim}))
    return {"type": params["index"], "vectors": n, "dim": dim}


class DenseSearcher:
    """Top-k documents (corpus rows) for query vectors, exact over shards or through an ANN index."""

    def __init__(self, params: dict[str, Any], encode_dir: Path, ann_dir: Path | None = None) -> None:
        self.params = params
        self.encode_dir = encode_dir
        self.doc_to_unique = None
        self.unique_docs = np.load(encode_dir / "unique_docs.npy")
        self.shards = doc_shards(encode_dir)
        self.index = None
        if ann_dir is not None:
            faiss = _faiss()
            self.index = faiss.read_index(str(ann_dir / "faiss.index"))
            if params["index"] == "hnsw":
                self.index.hnsw.efSearch = max(params["hnsw_ef_search"], 1)
            else:
                self.index.nprobe = params["ivf_nprobe"]

    def doc_vectors(self, doc_idx: np.ndarray) -> np.ndarray:
        """The vectors of corpus rows, read shard by shard from the memory-mapped files."""
        if self.doc_to_unique is None:
            self.doc_to_unique = np.load(self.encode_dir / "doc_to_unique.npy", mmap_mode="r")
        unique = np.asarray(self.doc_to_unique[np.asarray(doc_idx, dtype=np.int64)])
        sizes = [int(np.load(s, mmap_mode="r").shape[0]) for s in self.shards]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        shard_of = np.searchsorted(starts, unique, side="right") - 1
        out = None
        for i in np.unique(shard_of):
            rows = np.flatnonzero(shard_of == i)
            vecs = np.load(self.shards[i], mmap_mode="r")[unique[rows] - starts[i]]
            if out is None:
                out = np.empty((len(unique), vecs.shape[1]), dtype=np.float32)
            out[rows] = vecs
        return out if out is not None else np.zeros((0, 1), dtype=np.float32)

    def score_pairs(self, queries: np.ndarray, doc_idx: np.ndarray) -> np.ndarray:
        """Inner product of each (query vector, corpus row) pair, retrieved or not (used for positives)."""
        if len(doc_idx) == 0:
            return np.zeros(0, dtype=np.float32)
        return np.einsum("ij,ij->i", np.asarray(queries, dtype=np.float32), self.doc_vectors(doc_idx))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(corpus rows, scores), each (n_queries, k'), best first; k' = min(k, unique texts). Ties: lower row."""
        faiss = _faiss()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, len(self.unique_docs))
        if self.index is not None:
            scores, ids = self.index.search(queries, k)
        else:
            scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
            ids = np.full((len(queries), k), -1, dtype=np.int64)
            offset = 0
            for shard in self.shards:
                xb = np.load(shard, mmap_mode="r")
                kk = min(k, xb.shape[0])
                s, i = faiss.knn(queries, np.ascontiguousarray(xb), kk, metric=faiss.METRIC_INNER_PRODUCT)
                both_s = np.concatenate([scores, s.astype(np.float32)], axis=1)
                both_i = np.concatenate([ids, i.astype(np.int64) + offset], axis=1)
                top = np.argpartition(-both_s, k - 1, axis=1)[:, :k]
                scores, ids = np.take_along_axis(both_s, top, 1), np.take_along_axis(both_i, top, 1)
                offset += xb.shape[0]
        valid = ids >= 0  # an ANN index may return fewer than k (-1)
        rows = np.where(valid, self.unique_docs[np.where(valid, ids, 0)], -1)
        scores = np.where(valid, scores, -np.inf).astype(np.float32)
        order = np.lexsort((np.where(valid, rows, np.iinfo(np.int64).max), -scores), axis=-1)
        return np.take_along_axis(rows, order, -1), np.take_along_axis(scores, order, -1)
