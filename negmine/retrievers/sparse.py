"""Learned sparse retrieval: a sentence-transformers `SparseEncoder` (SPLADE: Formal et al., "SPLADE: Sparse Lexical
and Expansion Model for First Stage Ranking", SIGIR 2021, and "SPLADE v2", arXiv:2109.10086; or an inference-free
model, as OpenSearch's, whose query side is a static weight per token) and an inverted index over its vectors.

Three stages, each cached by content:

- `sparse-encode` writes every corpus row's sparse vector (one weight a vocabulary term) in shards of `shard_size`
  documents, each a CSR matrix saved atomically as soon as it is done, through the engine's `map` (so Ray actors
  encode on a cluster); a run killed mid-encode resumes from its finished shards. The mined queries' vectors go to
  `queries.npz`. The key holds a fingerprint of the model's files and every setting that changes a vector.
- `sparse-index` turns the shards into a term-major CSR matrix (terms x documents) written term range by term
  range into .npy files, as the BM25 index is (`negmine.retrievers.bm25`): peak memory is one range's slice plus
  one shard, whatever the corpus.
- the search scores a chunk of query vectors with sparse products against the rows of the terms they use, read
  from the index files in blocks sized from `[run] memory_budget`: the code BM25 searches with
  (`negmine.retrievers.inverted`), so ties, padding and memory bounds are those of BM25. A document sharing no
  term with the query has score 0 and is not a candidate. Scores are dot products ("dot"); every positive gets
  its own.
"""
from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from negmine import schema, tables
from negmine.errors import ConfigError
from negmine.io import atomic_path
from negmine.memory import release_memory
from negmine.progress import bar
from negmine.retrievers import Retriever, register, search_stage
from negmine.retrievers.inverted import BLOCK_SHARE, InvertedIndex, index_range_entries, npy_header, term_ranges
from negmine.stage import Config, Context, Inputs, Params, Stage, reads

VERSION = "1"
log = logging.getLogger("negmine.sparse")

DEFAULTS: dict[str, Any] = {
    "model": "",  # a SparseEncoder folder (SPLADE, or inference-free SPLADE), or a Hugging Face id in the cache
    "query_prompt": "",  # "" = the model's own "query" prompt, if it saved one
    "doc_prompt": "",  # "" = the model's own "document" prompt, if it saved one
    "max_length": 0,  # tokens a text (0 = the model's own)
    "max_active_dims": 0,  # keep a vector's largest N weights (0 = the model's own setting, else all)
    "precision": "fp32",  # fp32 | bf16 | fp16 | auto, as [dense] precision (torch autocast: weights stay fp32);
    # keyed as resolved
    "batch_size": 32,  # texts a batch: speed and memory only
    "device": "",  # "" = sentence-transformers' choice (cuda when present)
    "shard_size": 4096,  # documents a shard of vectors: the unit of resume
    "workers": 2,  # [run] engine = "ray" without GPUs: encoder actors (CPU); speed only
}
# Settings that change a vector (the model's files enter the key by their fingerprint)
KEY_SETTINGS = ("query_prompt", "doc_prompt", "max_length", "max_active_dims", "shard_size")
SCORE_TYPE = "dot"


def resolve(name: str) -> Path:
    """The model's local folder; nothing is downloaded."""
    if not name.strip():
        raise ConfigError("[sparse] model is empty; give the folder of a sentence-transformers SparseEncoder "
                          "(a SPLADE model) or the id of one in the local Hugging Face cache")
    from negmine.encode import resolve_model

    return resolve_model(name, key="[sparse] model")


def load_encoder(params: Mapping[str, Any], path: Path):
    """A `SparseEncoder` loaded by sentence-transformers' own code from a local folder; one line if it is not one."""
    from negmine.encode import quiet_hf

    quiet_hf()
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SparseAutoEncoder, SparseStaticEmbedding, SpladePooling

    try:
        model = SparseEncoder(str(path), device=params["device"] or None, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, ImportError, RuntimeError) as exc:  # a broken folder fails
        # in many ways inside transformers and sentence-transformers; each means the folder is not a usable model
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"[sparse] model {path}: sentence-transformers cannot load it as a SparseEncoder "
                          f"({reason[:300]}); give a SparseEncoder folder such as a SPLADE model") from None
    listed = path / "modules.json"
    if listed.is_file() and len(list(model.children())) != len(json.loads(listed.read_text(encoding="utf-8"))):
        # sentence-transformers "converts" a dense SentenceTransformer folder by appending an untrained sparse
        # autoencoder: random vectors, so refused
        raise ConfigError(f"[sparse] model {path} is a dense sentence-transformers model, not a SparseEncoder "
                          "(sentence-transformers would add an untrained sparse head); use it as [dense] model, "
                          "or give a SparseEncoder folder such as a SPLADE model")
    sparse_heads = (SpladePooling, SparseStaticEmbedding, SparseAutoEncoder)
    if not any(isinstance(m, sparse_heads) for m in model.modules()):
        raise ConfigError(f"[sparse] model {path} has no sparse head (SpladePooling, SparseStaticEmbedding or "
                          "SparseAutoEncoder): it makes dense vectors; use it as [dense] model instead")
    if params["max_length"]:
        model.max_seq_length = params["max_length"]
    return model


def to_csr(emb, n_rows: int):
    """A torch sparse (or dense) batch of vectors as a canonical float32 CSR matrix without explicit zeros."""
    import scipy.sparse as sp
    import torch

    if emb.is_sparse:
        emb = emb.coalesce()
        idx = emb.indices().cpu().numpy()
        vals = emb.values().float().cpu().numpy()
        rows, cols = idx[0], idx[1]
    else:
        dense = emb.float().cpu().numpy() if isinstance(emb, torch.Tensor) else np.asarray(emb, np.float32)
        rows, cols = np.nonzero(dense)
        vals = dense[rows, cols]
    keep = vals != 0
    dim = int(emb.shape[-1])  # the vocabulary: what the pooling made, whatever the model reports as its dimension
    m = sp.csr_matrix((vals[keep].astype(np.float32), (rows[keep], cols[keep])), shape=(n_rows, dim))
    m.sum_duplicates()
    m.sort_indices()
    return m


def save_csr(path: Path, m) -> None:
    """One shard, written atomically (a killed run leaves no half file under the final name)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, indptr=m.indptr.astype(np.int64), indices=m.indices.astype(np.int32),
                     data=m.data.astype(np.float32), shape=np.array(m.shape, dtype=np.int64))


def load_csr(path: Path):
    import scipy.sparse as sp

    with np.load(path) as z:
        return sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(int(x) for x in z["shape"]))


def doc_shards(encode_dir: Path) -> list[Path]:
    return sorted(encode_dir.glob("docs-*.npz"))


class SparseShardEncoder:
    """One worker's model (loaded once): encodes a shard's texts (documents or queries) and writes its CSR matrix
    atomically into the stage's work folder as soon as it is done."""

    def __init__(self, params: Mapping[str, Any], model_path: Path, work_dir: Path) -> None:
        release_memory()
        self.params, self.work_dir = params, work_dir
        self.model = load_encoder(params, model_path)

    def __call__(self, item: tuple[str, list[str], str]) -> tuple[str, int, int]:
        name, texts, side = item
        p = self.params
        prompt = (p["query_prompt"] if side == "query" else p["doc_prompt"]) or None  # None: the model's own
        fn = self.model.encode_query if side == "query" else self.model.encode_document
        from negmine.precision import autocast

        # 16-bit: the matrix products under autocast, the weights in fp32 (as [dense]); the term weights come out
        # rounded to the 16-bit type
        with autocast(p.get("precision", "fp32"), self.model.device.type):
            emb = fn(texts, prompt=prompt, batch_size=p["batch_size"], show_progress_bar=False,
                     convert_to_tensor=True, convert_to_sparse_tensor=True, save_to_cpu=True,
                     max_active_dims=p["max_active_dims"] or None)
        m = to_csr(emb, len(texts))
        save_csr(self.work_dir / name, m)
        return name, len(texts), int(m.nnz)


def encode(params: Mapping[str, Any], model_path: Path, ingest_dir: Path, work_dir: Path) -> dict[str, Any]:
    """Fill `work_dir` with document shards (corpus rows in order) and the mined queries' vectors; resumable."""
    from negmine import engine

    n_docs = tables.num_docs(ingest_dir)
    query_texts = tables.mined_queries(ingest_dir)["text"].to_pylist()
    size = params["shard_size"]
    n_shards = (n_docs + size - 1) // size
    todo = [i for i in range(n_shards) if not (work_dir / f"docs-{i:05d}.npz").is_file()]
    texts_of = tables.Texts(ingest_dir)

    def items() -> Iterator[tuple[str, list[str], str]]:  # texts read as the work goes, shard by shard
        for i in todo:
            yield f"docs-{i:05d}.npz", texts_of.docs(list(range(i * size, min((i + 1) * size, n_docs)))), "document"
        if query_texts and not (work_dir / "queries.npz").is_file():
            yield "queries.npz", query_texts, "query"

    worker = functools.partial(SparseShardEncoder, params, Path(model_path).resolve(), Path(work_dir).resolve())
    with bar(total=n_docs, initial=n_docs - sum(min(size, n_docs - i * size) for i in todo),
             desc="sparse: encode documents", unit="doc") as progress:
        for name, n, _ in engine.current().map(worker, items(), workers=params["workers"], gpu=True):
            if name != "queries.npz":
                progress.update(n)
                log.debug("%s written", name)
    shards = doc_shards(work_dir)
    dim = int(load_csr(shards[0]).shape[1])
    if not (work_dir / "queries.npz").is_file():  # no mined queries
        import scipy.sparse as sp

        save_csr(work_dir / "queries.npz", sp.csr_matrix((0, dim), dtype=np.float32))
    doc_nnz = sum(int(load_csr(s).nnz) for s in shards)
    query_vectors = load_csr(work_dir / "queries.npz")
    if query_vectors.shape[1] != dim:  # a router whose two sides name different vocabularies
        raise ConfigError(f"[sparse] model {model_path}: its query vectors have {query_vectors.shape[1]} "
                          f"dimensions and its document vectors {dim}; both sides must share one vocabulary")
    q_nnz = int(query_vectors.nnz)
    info = {"documents": n_docs, "shards": n_shards, "dim": dim, "queries": len(query_texts),
            "doc_entries": doc_nnz, "doc_active_dims": doc_nnz / n_docs if n_docs else 0.0,
            "query_active_dims": q_nnz / len(query_texts) if query_texts else 0.0,
            "score_type": SCORE_TYPE, "encoded_shards_this_run": len(todo)}
    (work_dir / "encode.json").write_text(json.dumps(info))
    return info


def build_index(params: Mapping[str, Any], encode_dir: Path, out_dir: Path) -> dict[str, Any]:
    """The term-major (terms x documents) CSR matrix of the document vectors, as `indptr.npy`, `data.npy`
    (float32 weights) and `indices.npy` (int32 corpus rows, ascending within a term).

    Document frequencies come from one pass over the shards; then for each range of terms holding at most a
    quarter of the memory budget of entries, every shard is read again and its entries of those terms placed by a
    counting sort into the range's slice, which is written into the files at its offset (BM25's build, on the
    encoder's weights instead of BM25's)."""
    info = json.loads((encode_dir / "encode.json").read_text())
    n_docs, dim = int(info["documents"]), int(info["dim"])
    shards = doc_shards(encode_dir)
    df = np.zeros(dim, dtype=np.int64)
    for s in shards:
        df += np.bincount(load_csr(s).indices, minlength=dim)
    indptr = np.zeros(dim + 1, dtype=np.int64)
    np.cumsum(df, out=indptr[1:])
    np.save(out_dir / "indptr.npy", indptr)
    total = int(indptr[-1])
    ranges = term_ranges(indptr, index_range_entries(params["memory_budget"]))
    with open(out_dir / "data.npy", "wb") as data_fh, open(out_dir / "indices.npy", "wb") as indices_fh:
        data_at = npy_header(data_fh, np.float32, total)
        indices_at = npy_header(indices_fh, np.int32, total)
        for lo, hi in bar(ranges, desc="sparse: index", unit="range"):
            base = int(indptr[lo])
            data = np.empty(int(indptr[hi]) - base, dtype=np.float32)
            docs = np.empty(len(data), dtype=np.int32)
            fill = indptr[lo:hi] - base  # where each term's next entry goes
            offset = 0
            for s in shards:  # corpus order: within a term, documents ascending
                m = load_csr(s)
                rows = np.repeat(np.arange(m.shape[0], dtype=np.int64) + offset, np.diff(m.indptr))
                sel = (m.indices >= lo) & (m.indices < hi)
                terms = m.indices[sel].astype(np.int64) - lo
                order = np.argsort(terms, kind="stable")
                terms, rows_sel, vals = terms[order], rows[sel][order], m.data[sel][order]
                counts = np.bincount(terms, minlength=hi - lo)
                first = np.concatenate([[0], np.cumsum(counts)[:-1]])
                dest = fill[terms] + (np.arange(len(terms)) - first[terms])
                data[dest], docs[dest] = vals, rows_sel
                fill += counts
                offset += m.shape[0]
            data_fh.seek(data_at + 4 * base)
            data.tofile(data_fh)
            indices_fh.seek(indices_at + 4 * base)
            docs.tofile(indices_fh)
    index_bytes = sum((out_dir / n).stat().st_size for n in ("indptr.npy", "data.npy", "indices.npy"))
    out = {"documents": n_docs, "terms": dim, "entries": total, "used_terms": int((df > 0).sum()),
           "index_bytes": index_bytes}
    (out_dir / "index.json").write_text(json.dumps(out))
    return out


class SparseSearcher(InvertedIndex):
    """The shared inverted-index search (BM25's: pread of term rows, budgeted blocks, sparse products, top-k with
    ties to the lower corpus row, positive scores) over the sparse index, with query vectors from the encoder."""

    def __init__(self, index_dir: Path, max_block_bytes: int = 64 << 20) -> None:
        self._files: list = []
        self.backend = "sparse"
        self.max_block_bytes = max_block_bytes
        self.n_docs = int(json.loads((index_dir / "index.json").read_text())["documents"])
        self.indptr = np.load(index_dir / "indptr.npy")
        self.vocab_size = len(self.indptr) - 1
        self.nonoccurrence = None
        names = ("data.npy", "indices.npy")
        maps = [np.load(index_dir / n, mmap_mode="r") for n in names]
        self._at = [int(m.offset) for m in maps]  # past the .npy headers
        self._dtypes = [np.dtype(m.dtype) for m in maps]
        del maps  # nothing reads the index through memory maps: term rows are pread
        self._files = [open(index_dir / n, "rb") for n in names]


class SparseChunks:
    """A worker for `engine.map`: the top-k of a chunk of query positions (start, stop) against the saved index."""

    def __init__(self, k: int, encode_dir: Path, index_dir: Path, max_block_bytes: int) -> None:
        self.k = k
        self.searcher = SparseSearcher(index_dir, max_block_bytes=max_block_bytes)
        self.queries = load_csr(encode_dir / "queries.npz")

    def __call__(self, item: tuple[int, int]) -> tuple[int, int, np.ndarray, np.ndarray]:
        a, b = item
        return (a, b, *self.searcher.search_matrix(self.queries[a:b], self.k))


def retrieve_sparse(inputs: Inputs, params: Params, out_dir: Path) -> dict[str, Any]:
    """Top-k candidates of every mined query, and the sparse dot product of every positive (retrieved or not)."""
    from negmine.memory import budget_bytes, query_chunk
    from negmine.retrieve import engine_search, write_candidates, write_positive_scores

    ingest_dir, encode_dir, index_dir = inputs["ingest"], inputs["sparse-encode"], inputs["sparse-index"]
    budget = budget_bytes(params["memory_budget"])
    queries = tables.mined_queries(ingest_dir)
    chunk = query_chunk(budget, params["top_k"], params["chunk_size"])
    blocks = int(BLOCK_SHARE * budget)  # as BM25: an eighth of the budget for a chunk's product blocks
    worker = functools.partial(SparseChunks, params["top_k"], encode_dir.resolve(), index_dir.resolve(), blocks)
    stats = write_candidates(queries, ingest_dir, engine_search(worker, queries, chunk, with_texts=False),
                             "sparse", chunk, out_dir / schema.CANDIDATES_FILE)
    searcher = SparseSearcher(index_dir, max_block_bytes=blocks)  # after the workers' (above)
    query_vectors = load_csr(encode_dir / "queries.npz")
    q, d, rows, qpos = tables.positive_pairs(ingest_dir, queries["query_id"].combine_chunks())
    scores = np.concatenate([searcher.score_pairs_matrix(query_vectors[qpos[a:a + chunk]], rows[a:a + chunk])
                             for a in range(0, len(rows), chunk)]) if len(rows) else np.zeros(0, np.float32)
    searcher.close()
    write_positive_scores(out_dir / schema.POSITIVE_SCORES_FILE, q, d, rows, scores, SCORE_TYPE)
    return {**stats, "top_k": params["top_k"], "score_type": SCORE_TYPE}


def resolved_precision(s: Mapping[str, Any]) -> str:
    """What [sparse] precision means on this machine ("auto": bf16 on a CPU or GPU that multiplies it natively)."""
    from negmine import precision

    return precision.resolve(s["precision"], s["device"])


def _encode_params(cfg: Config, ctx: Context) -> dict[str, Any]:
    s = cfg["sparse"]
    path = resolve(s["model"])
    prec = resolved_precision(s)
    return {"model": ctx.fingerprint(path), "model_path": str(path), "batch_size": s["batch_size"],
            "device": s["device"], "workers": s["workers"], **{k: s[k] for k in KEY_SETTINGS},
            # fp32 keys are what they were before the setting: their vectors are unchanged
            **({"precision": prec} if prec != "fp32" else {})}


def _uses_sparse(cfg: Config) -> bool:
    return "sparse" in cfg["retrieve"]["retrievers"]


ENCODE = Stage(
    name="sparse-encode", version=VERSION, command="index", reads=reads("ingest"), section="sparse",
    params=_encode_params, outputs=("queries.npz", "encode.json"),
    run=lambda inputs, params, out: encode(params, Path(params["model_path"]), inputs["ingest"], out),
    enabled=_uses_sparse, resumable=True,
    unkeyed={"model_path": "where the model is; its files enter the key by their content (model)",
             "batch_size": "speed and memory only (vectors equal within float rounding)", "device": "speed only",
             "workers": "speed only: encoder actors on the Ray engine"})

INDEX = Stage(
    name="sparse-index", version=VERSION, command="index", reads=reads("sparse-encode"), section="sparse",
    params=lambda cfg, ctx: {"memory_budget": cfg["run"]["memory_budget"]},
    outputs=("index.json", "indptr.npy", "data.npy", "indices.npy"),
    run=lambda inputs, params, out: build_index(params, inputs["sparse-encode"], out),
    enabled=_uses_sparse,
    unkeyed={"memory_budget": "sizes the term ranges written at once: the index is the same"})

register(Retriever(
    name="sparse", section="sparse", stages=(ENCODE, INDEX), score_type=lambda cfg: SCORE_TYPE,
    help="learned sparse (a sentence-transformers SparseEncoder: SPLADE)", defaults=DEFAULTS,
    search=search_stage("sparse", VERSION, reads("ingest", "sparse-encode", "sparse-index"),
                        lambda cfg, ctx: {"top_k": cfg["retrieve"]["top_k"],
                                          "chunk_size": cfg["retrieve"]["chunk_size"],
                                          "memory_budget": cfg["run"]["memory_budget"]},
                        retrieve_sparse)))
