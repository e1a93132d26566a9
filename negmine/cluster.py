"""Cluster stage: topic clusters of the mined queries, for batches whose in-batch negatives are hard too.

TAS-B (Hofstätter et al., "Efficiently Teaching an Effective Dense Retriever with Balanced Topic Aware Sampling",
SIGIR 2021) composes each training batch from the queries of one k-means cluster of the query embeddings, so the
other rows of a batch, which contrastive losses use as extra negatives, are about the same topic. This stage runs
seeded k-means (faiss) over the query vectors, then merges every cluster smaller than `batch_size` queries into
the cluster with the nearest centroid, until each holds at least a batch (a trainer that keeps a batch inside one
cluster would otherwise meet batches of one topic smaller than asked). It writes one `cluster_id` a mined query;
the export writes the per-cluster layouts trainers honour (`negmine.formats.clustered`).

The vectors: with the dense retriever on, the encode stage's query vectors (no extra work). Without it, the
queries alone are encoded here with `[dense] model` through the same encode code (the corpus is not), and the
model's fingerprint and every setting that changes a query vector enter this stage's key.

    [cluster]
    on = true
    clusters = 0        # k of k-means; 0 = mined queries / (4 x batch_size), at least 1
    batch_size = 32     # the trainer's batch size: clusters are merged until each has at least this many queries
    seed = 42
    niter = 20          # k-means iterations
"""
from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from negmine import tables
from negmine.formats.clustered import CLUSTERS_FILE
from negmine.stage import Config, Context, Inputs, Params, Stage

VERSION = "1"
SCHEMA = pa.schema([("query_id", pa.string()), ("cluster_id", pa.int32())])
# the query-vector settings of [dense] (negmine.encode.KEY_SETTINGS less the documents' own)
QUERY_SETTINGS = ("query_prompt", "max_seq_length", "normalize", "precision", "backend")


def auto_clusters(n_queries: int, batch_size: int) -> int:
    """k when `clusters = 0`: about four batches a cluster before merging."""
    return max(1, n_queries // (4 * batch_size))


def kmeans(x: np.ndarray, k: int, seed: int, niter: int, spherical: bool) -> tuple[np.ndarray, np.ndarray]:
    """(labels, centroids) of seeded faiss k-means: the same vectors and seed give the same clusters."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    k = max(1, min(k, len(x)))
    # min_points_per_centroid=1: few queries a cluster is the point here, not a reason to warn
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=spherical, verbose=False,
                      min_points_per_centroid=1)
    km.train(x)
    _, labels = km.index.search(x, 1)
    return labels[:, 0].astype(np.int64), np.asarray(km.centroids, dtype=np.float64)


def merge_small(labels: np.ndarray, x: np.ndarray, min_size: int) -> np.ndarray:
    """Merge clusters smaller than `min_size` into the one with the nearest centroid (inner product), smallest
    first (ties: the lower label), until every cluster has at least `min_size` members or one is left; then
    relabel 0.. in the order of each cluster's first member, so labels are a pure function of the input."""
    ids = sorted(set(labels.tolist()))
    members = {c: np.flatnonzero(labels == c) for c in ids}
    cent = {c: x[m].mean(axis=0, dtype=np.float64) for c, m in members.items()}
    while len(members) > 1:
        small = min(members, key=lambda c: (len(members[c]), c))
        if len(members[small]) >= min_size:
            break
        others = [c for c in members if c != small]
        sims = np.array([float(cent[small] @ cent[c]) for c in others])
        into = others[int(np.argmax(sims))]  # argmax: the first (lowest label) among equals
        na, nb = len(members[into]), len(members[small])
        cent[into] = (cent[into] * na + cent[small] * nb) / (na + nb)
        members[into] = np.sort(np.concatenate([members[into], members.pop(small)]))
        cent.pop(small)
    out = np.empty(len(labels), dtype=np.int32)
    for new, c in enumerate(sorted(members, key=lambda c: int(members[c][0]))):
        out[members[c]] = new
    return out


def _query_vectors(params: Mapping[str, Any], inputs: Inputs, texts: list[str]) -> np.ndarray:
    if params["vectors"] == "encode":  # the dense retriever's entry
        return np.load(inputs["encode"] / "queries.npy")
    from negmine.encode import load_model, encode_texts

    settings = {**dict(params["dense"]), "device": params["device"], "batch_size": params["batch_size_encode"],
                "batch_tokens": params["batch_tokens"]}
    model = load_model(settings, Path(params["model_path"]))
    return encode_texts(model, texts, settings, settings["query_prompt"])


def cluster(inputs: Inputs, params: Params, out_dir: Path) -> dict[str, Any]:
    queries = tables.mined_queries(inputs["ingest"])
    qids = queries["query_id"].combine_chunks()
    n = len(qids)
    if n == 0:
        pq.write_table(pa.table({"query_id": qids, "cluster_id": pa.array([], pa.int32())}, schema=SCHEMA),
                       out_dir / CLUSTERS_FILE)
        return {"queries": 0, "clusters": 0}
    x = _query_vectors(params, inputs, queries["text"].to_pylist())
    if len(x) != n:
        raise RuntimeError(f"{len(x)} query vectors for {n} mined queries")  # an entry out of step: a bug
    k = params["clusters"] or auto_clusters(n, params["batch_size"])
    labels, _ = kmeans(x, k, params["seed"], params["niter"], bool(params["spherical"]))
    merged = merge_small(labels, x, params["batch_size"])
    pq.write_table(pa.table({"query_id": qids, "cluster_id": pa.array(merged, pa.int32())}, schema=SCHEMA),
                   out_dir / CLUSTERS_FILE)
    sizes = np.bincount(merged)
    stats = {"queries": n, "kmeans_clusters": int(len(set(labels.tolist()))), "clusters": int(len(sizes)),
             "smallest": int(sizes.min()), "median": float(np.median(sizes)), "largest": int(sizes.max()),
             "vectors": params["vectors"]}
    (out_dir / "cluster.json").write_text(json.dumps(stats))
    return stats


def uses_dense(cfg: Config) -> bool:
    return "dense" in cfg["retrieve"]["retrievers"]


def _params(cfg: Config, ctx: Context) -> dict[str, Any]:
    c, d = cfg["cluster"], cfg["dense"]
    p: dict[str, Any] = {k: c[k] for k in ("clusters", "batch_size", "seed", "niter")}
    p["spherical"] = d["normalize"]  # unit query vectors: centroids on the sphere too
    if uses_dense(cfg):
        p["vectors"] = "encode"  # the encode entry's key (model, settings) is in this key through reads
        return p
    from negmine import encode

    path = encode.resolve_model(d["model"])
    settings = encode.key_settings(d)
    p.update(vectors="own", model=ctx.fingerprint(path), model_path=str(path),
             dense={k: settings[k] for k in (*QUERY_SETTINGS, "precision_mode") if k in settings},
             device=d["device"], batch_size_encode=d["batch_size"], batch_tokens=d["batch_tokens"])
    return p


STAGE = Stage(
    name="cluster", version=VERSION, command="sample", section="cluster", params=_params, run=cluster,
    reads=lambda cfg: ("ingest", "encode") if uses_dense(cfg) else ("ingest",),
    outputs=(CLUSTERS_FILE, "cluster.json"), enabled=lambda cfg: bool(cfg["cluster"]["on"]),
    unkeyed={"model_path": "where the model is; its files enter the key by their content (model)",
             "device": "speed only", "batch_size_encode": "speed only",
             "batch_tokens": "speed and memory only (vectors equal within float rounding)"})
