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

import functools
import json
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import numpy as np

from negmine import encode, schema, tables
from negmine.encode import doc_shards
from negmine.progress import bar
from negmine.retrievers import Retriever, register, search_stage
from negmine.stage import Config, Context, Inputs, Params, Stage, reads

VERSION = "1"


def _faiss():
    import faiss

    return faiss


def build_ann(params: Mapping[str, Any], encode_dir: Path, out_dir: Path) -> dict[str, Any]:
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

    def __init__(self, params: Mapping[str, Any], encode_dir: Path, ann_dir: Path | None = None) -> None:
        self.params = params
        self.encode_dir = encode_dir
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
        return encode.doc_vectors(self.encode_dir, doc_idx)

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


class DenseChunks:
    """A worker for `engine.map`: the top-k of a chunk of query positions (start, stop), searcher loaded once."""

    def __init__(self, params: Mapping[str, Any], encode_dir: Path, ann_dir: Path | None) -> None:
        self.k = params["top_k"]
        self.searcher = DenseSearcher(params, encode_dir, ann_dir)
        self.query_vectors = np.load(encode_dir / "queries.npy", mmap_mode="r")

    def __call__(self, item: tuple[int, int]) -> tuple[int, int, np.ndarray, np.ndarray]:
        a, b = item
        return (a, b, *self.searcher.search(self.query_vectors[a:b], self.k))


def retrieve_dense(inputs: Inputs, params: Params, out_dir: Path) -> dict[str, Any]:
    """Top-k candidates of every mined query, and the inner product of every positive (retrieved or not)."""
    from negmine.memory import budget_bytes, query_chunk
    from negmine.retrieve import engine_search, write_candidates, write_positive_scores

    ingest_dir, encode_dir = inputs["ingest"], inputs["encode"]
    ann_dir = inputs["ann"] if params["index"] != "flat" else None
    queries = tables.mined_queries(ingest_dir)
    chunk = query_chunk(budget_bytes(params["memory_budget"]), params["top_k"], params["chunk_size"])
    worker = functools.partial(DenseChunks, params, encode_dir.resolve(), ann_dir.resolve() if ann_dir else None)
    stats = write_candidates(queries, ingest_dir, engine_search(worker, queries, chunk, with_texts=False),
                             "dense", chunk, out_dir / schema.CANDIDATES_FILE)
    # built after the search's own (in the engine's workers): one index in memory at a time
    searcher = DenseSearcher(params, encode_dir, ann_dir)
    query_vectors = np.load(encode_dir / "queries.npy", mmap_mode="r")
    stype = "cosine" if params["normalize"] else "dot"
    q, d, rows, qpos = tables.positive_pairs(ingest_dir, queries["query_id"].combine_chunks())
    scores = searcher.score_pairs(query_vectors[qpos], rows)
    write_positive_scores(out_dir / schema.POSITIVE_SCORES_FILE, q, d, rows, scores, stype)
    return {**stats, "top_k": params["top_k"], "index": params["index"], "score_type": stype}


def _encode_params(cfg: Config, ctx: Context) -> dict[str, Any]:
    d = cfg["dense"]
    path = encode.resolve_model(d["model"])
    # the precision as resolved on this machine: "auto" never enters a key
    return {"model": ctx.fingerprint(path), "model_path": str(path), "batch_size": d["batch_size"],
            "batch_tokens": d["batch_tokens"], "device": d["device"], "workers": d["workers"], "devices": d["devices"],
            **encode.key_settings(d)}


def _search_params(cfg: Config, ctx: Context) -> dict[str, Any]:
    d, r = cfg["dense"], cfg["retrieve"]
    p = {"top_k": r["top_k"], "chunk_size": r["chunk_size"], "memory_budget": cfg["run"]["memory_budget"],
         "index": d["index"], "normalize": d["normalize"]}
    if d["index"] == "hnsw":
        p["hnsw_ef_search"] = d["hnsw_ef_search"]
    elif d["index"] == "ivf":
        p["ivf_nprobe"] = d["ivf_nprobe"]
    return p


def _uses_dense(cfg: Config) -> bool:
    return "dense" in cfg["retrieve"]["retrievers"]


ENCODE = Stage(
    name="encode", version=encode.VERSION, command="index", reads=reads("ingest"), section="dense",
    params=_encode_params, outputs=("queries.npy", "unique_docs.npy", "doc_to_unique.npy", "encode.json"),
    run=lambda inputs, params, out: encode.encode(params, Path(params["model_path"]), inputs["ingest"], out),
    enabled=_uses_dense, resumable=True,
    unkeyed={"model_path": "where the model is; its files enter the key by their content (model)",
             "batch_size": "speed only", "batch_tokens": "speed and memory only (vectors equal within float rounding)",
             "device": "speed only", "workers": "speed only: encoder actors on the Ray engine",
             "devices": "speed only: one encoder process a device on the local engine"})

ANN = Stage(
    name="ann", version=VERSION, command="index", reads=reads("encode"), section="dense",
    params=lambda cfg, ctx: {k: cfg["dense"][k] for k in ("index", "hnsw_m", "hnsw_ef_construction", "ivf_nlist")},
    run=lambda inputs, params, out: build_ann(params, inputs["encode"], out), outputs=("faiss.index", "ann.json"),
    enabled=lambda cfg: _uses_dense(cfg) and cfg["dense"]["index"] != "flat")


def dense_pair_scores(entries: Mapping[str, Path], params: Mapping[str, Any], queries: list[str], qpos: np.ndarray,
                      rows: np.ndarray) -> np.ndarray:
    """The inner product of each (query position, corpus row) pair's vectors (cosine when normalised): the dense
    encoder as a teacher."""
    qvec = np.load(entries["encode"] / "queries.npy", mmap_mode="r")
    out = np.zeros(len(rows), dtype=np.float32)
    for a in range(0, len(rows), 50_000):
        q = np.asarray(qvec[qpos[a:a + 50_000]], dtype=np.float32)
        out[a:a + 50_000] = np.einsum("ij,ij->i", q, encode.doc_vectors(entries["encode"], rows[a:a + 50_000]))
    return out


register(Retriever(
    name="dense", section="dense", stages=(ENCODE, ANN), help="sentence-transformers embeddings (faiss)",
    score_pairs=dense_pair_scores, pair_reads=("encode",),
    score_type=lambda cfg: "cosine" if cfg["dense"]["normalize"] else "dot",
    search=search_stage("dense", "3",
                        lambda cfg: ("ingest", "encode") + (("ann",) if cfg["dense"]["index"] != "flat" else ()),
                        _search_params, retrieve_dense)))
