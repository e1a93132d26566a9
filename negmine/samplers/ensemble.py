"""Teacher ensembles at sampling time: NV-Retriever's cross-sample and intra-sample ensembling (Moreira et al.,
"NV-Retriever: Improving text embedding models with effective hard-negative mining", 2024, arXiv:2407.15831,
section 4.3), and the agreement filter of `negmine.filters.agreement`.

The teachers (`[ensemble] teachers`) score every candidate in the `teachers` stage (`negmine.score`); here each
query's negatives are chosen from its filtered candidates inside the [sample] rank window:
- cross: one teacher a query supplies all of its negatives, chosen from the run's seed and the query id through a
  hash (`teacher_for`), not an RNG stream, so the choice does not depend on the other queries, on chunking or on
  the order of draws; the [sample] strategy then picks from that teacher's ranking (its scores, its positive
  score): "top" takes its n best.
- intra: the teachers take turns, in their configured order, each adding its best candidate not taken yet, until
  n negatives: with n at most the number of teachers, the top negative of each teacher, de-duplicated (a teacher
  whose best was already taken adds its next best).
Which teacher gave each negative is written beside the negatives (`negative_teachers.parquet`) and counted.

`stages(plain)` are the two `sample` stages: the plain one (its parameters and key unchanged) while no ensemble
is configured, this one otherwise; a config enables exactly one of them.
"""
from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import replace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negmine import schema
from negmine.filters.agreement import agreement, keep_all, vetoes
from negmine.hashing import seed_for
from negmine.samplers import SAMPLERS
from negmine.stage import Config, Context, Inputs, Params, Stage
from negmine.teachers import (NEGATIVE_TEACHERS_FILE, TEACHER_POSITIVES_FILE, TEACHERS_FILE, teacher_specs,
                              uses_teachers)

VERSION = "1"
PROVENANCE = pa.schema([("query_id", pa.string()), ("doc_id", pa.string()), ("teacher", pa.string()),
                        ("teacher_rank", pa.int32()), ("ensemble_score", pa.float32())])


def teacher_for(seed: int, query_id: str, n_teachers: int) -> int:
    """The teacher (position in [ensemble] teachers) that supplies a query's negatives under cross-sampling: a
    hash of (seed, query id), tagged so that it is not the value that seeds the query's sampler."""
    return seed_for(seed, f"ensemble-teacher\x00{query_id}") % n_teachers


def teacher_ranking(scores: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Positions of the candidates in one teacher's order: its score high to low, ties by retrieval rank."""
    return np.lexsort((ranks, -np.asarray(scores, dtype=np.float64)))


def cross_sample(ranks: np.ndarray, scores: np.ndarray, s_pos: np.ndarray, n: int, teacher: int,
                 rng: np.random.Generator, strategy: str, opts: Mapping[str, Any]) -> np.ndarray:
    """Positions of one query's negatives drawn by the [sample] strategy from `teacher`'s ranking.

    `scores` is (candidates, teachers); the strategy sees the teacher's rank order as its ranks and the teacher's
    scores and positive score as its own."""
    order = teacher_ranking(scores[:, teacher], ranks)
    teacher_rank = np.empty(len(order), dtype=np.int64)
    teacher_rank[order] = np.arange(1, len(order) + 1)
    picked = SAMPLERS[strategy](teacher_rank, scores[:, teacher], n, rng, {**opts, "s_pos": float(s_pos[teacher])})
    return np.asarray(picked, dtype=np.int64)


def intra_sample(ranks: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, the teacher of each) of one query's negatives: the teachers take turns in order, each adding its
    best candidate not taken yet, until n or none is left."""
    orders = [teacher_ranking(scores[:, t], ranks) for t in range(scores.shape[1])]
    taken: set[int] = set()
    cursor = [0] * len(orders)
    picked, by = [], []
    while len(picked) < min(n, len(ranks)):
        for t, order in enumerate(orders):
            while cursor[t] < len(order) and int(order[cursor[t]]) in taken:
                cursor[t] += 1
            if cursor[t] < len(order) and len(picked) < n:
                p = int(order[cursor[t]])
                taken.add(p)
                picked.append(p)
                by.append(t)
    return np.array(picked, dtype=np.int64), np.array(by, dtype=np.int64)


def _positive_matrix(path: Path, names: list[str], query_ids: pa.Array, how: str) -> np.ndarray:
    """(queries, teachers): each mined query's positive score under each teacher (min, mean or max over its
    positives); NaN where it has none."""
    t = pq.read_table(path, columns=["query_id", *names])
    g = t.group_by("query_id").aggregate([(n, how) for n in names])
    out = np.full((len(query_ids), len(names)), np.nan, dtype=np.float64)
    idx = pc.index_in(g["query_id"], value_set=query_ids)
    valid = idx.is_valid()
    rows = idx.filter(valid).to_numpy(zero_copy_only=False).astype(np.int64)
    for j, n in enumerate(names):
        out[rows, j] = g[f"{n}_{how}"].filter(valid).to_numpy(zero_copy_only=False)
    return out


def _teacher_matrix(pool: pa.Table, path: Path, names: list[str]) -> np.ndarray:
    """(pool rows, teachers): each teacher's score of each pooled candidate, by (query, corpus row)."""
    scores = pq.read_table(path, columns=["query_id", "doc_idx", *names])
    rows = pool.select(["query_id", "doc_idx"]).append_column("row", pa.array(np.arange(pool.num_rows), pa.int64()))
    joined = rows.join(scores, ["query_id", "doc_idx"], join_type="left outer").sort_by("row")
    if joined.num_rows != pool.num_rows:
        raise RuntimeError("a candidate appears twice in the teachers' scores; clear the cache and rerun")
    m = np.column_stack([joined[n].to_numpy(zero_copy_only=False).astype(np.float64) for n in names]) \
        if names else np.zeros((pool.num_rows, 0))
    if np.isnan(m).any():
        raise RuntimeError("a candidate has no teacher score; the teachers stage is stale: clear the cache")
    return m


def ensemble_sample(params: Mapping[str, Any], ingest_dir: Path, pool_path: Path, teachers_dir: Path,
                    out_dir: Path, plain: Stage) -> dict[str, Any]:
    """The agreement filter (when on), then cross- or intra-sampling, or the `plain` sample stage on the agreed
    pool (sampling "none")."""
    from negmine import tables

    names = list(params["teachers"])
    query_ids = tables.mined_query_ids(ingest_dir)
    qindex = {q: i for i, q in enumerate(query_ids.to_pylist())}
    pf = pq.ParquetFile(pool_path)
    pool = pf.read()
    scores = _teacher_matrix(pool, teachers_dir / TEACHERS_FILE, names)
    pos = _positive_matrix(teachers_dir / TEACHER_POSITIVES_FILE, names, query_ids, params["positive_score"])
    qrow = np.array([qindex[q] for q in pool["query_id"].to_pylist()], dtype=np.int64)
    # the agreement filter, over the whole pool (before the rank window), as the exclude stage's filters
    agree = np.ones(pool.num_rows, dtype=bool)
    stats_agree = None
    if params["agreement"]:
        passes = agreement(scores, pos[qrow] if len(qrow) else np.zeros((0, len(names))), params["agreement_alpha"])
        agree = keep_all(passes)
        stats_agree = {"alpha": params["agreement_alpha"], "candidates": pool.num_rows, "kept": int(agree.sum()),
                       "dropped": int((~agree).sum()), "vetoes": vetoes(passes, names)}
    if params["ensemble"] == "none":  # the agreed pool, sampled by the [sample] strategy as without teachers
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".agreed-") as tmp:
            agreed = Path(tmp) / schema.KEPT_FILE
            with pq.ParquetWriter(agreed, pf.schema_arrow) as writer:
                offset = 0
                for g in range(pf.num_row_groups):  # query-aligned row groups, as sampling expects
                    t = pool.slice(offset, pf.metadata.row_group(g).num_rows)
                    writer.write_table(t.filter(pa.array(agree[offset:offset + t.num_rows])))
                    offset += t.num_rows
            # the plain stage reads the pool as the exclude stage's kept.parquet: hand it the agreed one
            stats = plain.run(Inputs("sample", {"ingest": ingest_dir, "exclude": Path(tmp)}), params, out_dir)
        return {**stats, "agreement": stats_agree}
    return _pick(params, pool, scores, pos, qrow, agree, names, query_ids, out_dir) | (
        {"agreement": stats_agree} if stats_agree else {})


def _pick(params: Mapping[str, Any], pool: pa.Table, scores: np.ndarray, pos: np.ndarray, qrow: np.ndarray,
          agree: np.ndarray, names: list[str], query_ids: pa.Array, out_dir: Path) -> dict[str, Any]:
    n, seed, mode, strategy = params["num_negatives"], params["seed"], params["ensemble"], params["strategy"]
    lo, hi = params["rank_min"], params["rank_max"] or params["top_k"]
    opts = {k: params[k] for k in SAMPLERS[strategy].options}
    ranks = pool["rank"].to_numpy()
    eligible = agree & (pool["relax_level"].to_numpy() == 0) & (ranks >= lo) & (ranks <= hi)
    qids = pool["query_id"].to_numpy(zero_copy_only=False)
    outcomes: Counter = Counter()
    by_teacher: Counter = Counter()
    queries_by_teacher: Counter = Counter()
    picks: list[np.ndarray] = []
    prov: dict[str, list] = {name: [] for name in PROVENANCE.names}
    seen: set[str] = set()
    bounds = (np.flatnonzero(qids[1:] != qids[:-1]) + 1) if len(qids) else np.array([], dtype=np.int64)
    for sl in (np.split(np.arange(len(qids)), bounds) if len(qids) else []):
        qid = str(qids[sl[0]])
        seen.add(qid)
        rows = sl[eligible[sl]]
        s = scores[rows]
        if mode == "cross":
            t = teacher_for(seed, qid, len(names))
            queries_by_teacher[names[t]] += 1
            rng = np.random.default_rng(seed_for(seed, qid))
            local = cross_sample(ranks[rows], s, pos[qrow[sl[0]]], n, t, rng, strategy, opts)
            by = np.full(len(local), t, dtype=np.int64)
        else:
            local, by = intra_sample(ranks[rows], s, n)
        if len(local) < n and params["shortage"] == "drop":
            outcomes["dropped"] += 1
            continue
        outcomes["full" if len(local) == n else "short"] += 1
        picks.append(rows[local])
        for p, t in zip(local.tolist(), by.tolist()):
            order = teacher_ranking(s[:, t], ranks[rows])
            prov["teacher"].append(names[t])
            prov["teacher_rank"].append(int(np.flatnonzero(order == p)[0]) + 1)
            prov["ensemble_score"].append(float(s[p, t]))
            by_teacher[names[t]] += 1
    # queries with no candidate left: a shortage of all n
    for qid in query_ids.to_pylist():
        if qid not in seen:
            outcomes["dropped" if params["shortage"] == "drop" else "short"] += 1
            if mode == "cross":
                queries_by_teacher[names[teacher_for(seed, qid, len(names))]] += 1
    chosen = pool.take(pa.array(np.concatenate(picks) if picks else np.array([], dtype=np.int64)))
    negatives = pa.table({"query_id": chosen["query_id"], "doc_id": chosen["doc_id"], "doc_idx": chosen["doc_idx"],
                          "rank": chosen["rank"], "score": chosen["score"], "retriever": chosen["retriever"],
                          "source": pa.array(["sample"] * chosen.num_rows, pa.string()),
                          "teacher_score": chosen["teacher_score"], "filter_score": chosen["filter_score"]},
                         schema=schema.NEGATIVES)
    pq.write_table(negatives, out_dir / schema.NEGATIVES_FILE)
    prov["query_id"], prov["doc_id"] = chosen["query_id"], chosen["doc_id"]
    pq.write_table(pa.table(prov, schema=PROVENANCE), out_dir / NEGATIVE_TEACHERS_FILE)
    stats = {"negatives": chosen.num_rows, "queries": len(query_ids), "outcomes": dict(outcomes), "window": [lo, hi],
             "strategy": strategy, "num_negatives": n, "ensemble": mode, "teachers": names,
             "by_teacher": {name: by_teacher.get(name, 0) for name in names}}
    if mode == "cross":
        stats["queries_by_teacher"] = {name: queries_by_teacher.get(name, 0) for name in names}
    return stats


def stages(plain: Stage) -> list[Stage]:
    """The `sample` stage twice: `plain` while no ensemble is configured (its parameters, so its key, unchanged),
    and the ensemble's agreement filter and sampling, which read the `teachers` stage too, when one is."""

    def reads(cfg: Config) -> tuple[str, ...]:
        return plain.reads(cfg) + ("teachers",)

    def params(cfg: Config, ctx: Context) -> dict[str, Any]:
        e = cfg["ensemble"]
        return {**plain.params(cfg, ctx), "ensemble": e["sampling"],
                "agreement": e["agreement"], "agreement_alpha": e["agreement_alpha"],
                "positive_score": cfg["filter"]["positive_score"], "teachers": [s["name"] for s in teacher_specs(cfg)]}

    def run(inputs: Inputs, p: Params, out_dir: Path) -> dict[str, Any]:
        pool = (inputs["judge-pool"] if "judge-pool" in inputs else inputs["exclude"]) / schema.KEPT_FILE
        return ensemble_sample(p, inputs["ingest"], pool, inputs["teachers"], out_dir, plain)

    alone = replace(plain, enabled=lambda cfg: plain.enabled(cfg) and not uses_teachers(cfg))
    ensemble = Stage(name=plain.name, version=f"{plain.version}-ensemble{VERSION}", command=plain.command,
                     reads=reads, params=params, run=run, outputs=plain.outputs,
                     enabled=lambda cfg: plain.enabled(cfg) and uses_teachers(cfg), unkeyed=plain.unkeyed,
                     section=plain.section)
    return [alone, ensemble]
