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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negmine import schema
from negmine.filters.agreement import agreement, keep_all, vetoes
from negmine.hashing import seed_for
from negmine.progress import bar
from negmine.samplers import SAMPLERS
from negmine.samplers.keys import uniforms
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


# rows of the pool (and of the teachers' scores) read at a time: memory follows this, not the pool's size
CHUNK_ROWS = 1 << 16


def _query_chunks(path: Path, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The pool in tables of whole queries, about CHUNK_ROWS rows each: a query cut by a batch boundary is carried
    into the next table, so no query is ever split, whatever the file's row groups are."""
    batches = pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS, columns=columns)
    carry: pa.Table | None = None
    t: pa.Table | None = None
    batch = next(batches, None)
    while batch is not None:
        t = pa.Table.from_batches([batch])
        if carry is not None:
            t = pa.concat_tables([carry, t])
        batch = next(batches, None)
        if batch is None:  # the last batch ends its last query
            break
        # the start of the last query's rows: everything before it is whole
        cut = t.num_rows - len(pc.indices_nonzero(pc.equal(t["query_id"], t["query_id"][-1])))
        if cut == 0:  # one query fills the table: keep reading
            carry = t
            continue
        yield t.slice(0, cut).combine_chunks()
        carry = t.slice(cut)
    if t is not None and t.num_rows:
        yield t.combine_chunks()


class _TeacherScores:
    """The teachers' scores of the pool's candidates, read alongside it: both files keep the retrieve stage's query
    order (the pool is its candidates less the excluded ones), so the scores of a chunk's queries are the rows up to
    the end of its last query's block, read once, in order."""

    def __init__(self, path: Path, names: list[str]):
        self.names = names
        self.batches = pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS, columns=["query_id", "doc_idx", *names])
        self.buf = pa.table({"query_id": pa.array([], pa.string()), "doc_idx": pa.array([], pa.int64()),
                             **{n: pa.array([], pa.float32()) for n in names}})

    def _through(self, qid: str) -> pa.Table:
        """Every row up to the end of `qid`'s block (rows of queries the pool lacks fall in it and are ignored)."""
        while True:
            hits = pc.indices_nonzero(pc.equal(self.buf["query_id"], qid))
            if len(hits) and hits[-1].as_py() < self.buf.num_rows - 1:  # the block is whole: another query follows
                cut = hits[-1].as_py() + 1
                break
            batch = next(self.batches, None)
            if batch is None:
                cut = self.buf.num_rows
                break
            self.buf = pa.concat_tables([self.buf, pa.Table.from_batches([batch]).cast(self.buf.schema)])
        out, self.buf = self.buf.slice(0, cut), self.buf.slice(cut)
        return out

    def matrix(self, pool: pa.Table) -> np.ndarray:
        """(pool rows, teachers): each teacher's score of each candidate of `pool` (whole queries, in order)."""
        names = self.names
        scores = self._through(pool["query_id"][-1].as_py()) if pool.num_rows else self.buf.slice(0, 0)
        rows = pool.select(["query_id", "doc_idx"]).append_column("row", pa.array(np.arange(pool.num_rows),
                                                                                  pa.int64()))
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
    pool (sampling "none"); the pool is read a chunk of whole queries at a time."""
    from negmine import tables

    names = list(params["teachers"])
    query_ids = tables.mined_query_ids(ingest_dir)
    qindex = {q: i for i, q in enumerate(query_ids.to_pylist())}
    pos = _positive_matrix(teachers_dir / TEACHER_POSITIVES_FILE, names, query_ids, params["positive_score"])
    teacher_scores = _TeacherScores(teachers_dir / TEACHERS_FILE, names)
    agreement_stats: Counter = Counter()
    veto_counts: Counter = Counter()

    def chunks() -> Iterator[tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]]:
        """(pool chunk, its teacher score matrix, each row's query position, the agreement filter's verdict)."""
        # what sampling reads: the agreed pool ("none") keeps every column for the plain stage
        columns = None if params["ensemble"] == "none" else [
            "query_id", "doc_id", "doc_idx", "rank", "score", "retriever", "teacher_score", "filter_score",
            "relax_level"]
        for pool in bar(_query_chunks(pool_path, columns), desc="sample", unit="chunk"):
            scores = teacher_scores.matrix(pool)
            qrow = np.array([qindex[q] for q in pool["query_id"].to_pylist()], dtype=np.int64)
            agree = np.ones(pool.num_rows, dtype=bool)
            if params["agreement"]:  # over the whole pool (before the rank window), as the exclude stage's filters
                passes = agreement(scores, pos[qrow], params["agreement_alpha"])
                agree = keep_all(passes)
                agreement_stats.update(candidates=pool.num_rows, kept=int(agree.sum()), dropped=int((~agree).sum()))
                veto_counts.update(vetoes(passes, names))
            yield pool, scores, qrow, agree

    def agreement_summary() -> dict[str, Any] | None:
        if not params["agreement"]:
            return None
        counts = {k: agreement_stats[k] for k in ("candidates", "kept", "dropped")}
        return {"alpha": params["agreement_alpha"], **counts, "vetoes": {name: veto_counts[name] for name in names}}

    if params["ensemble"] == "none":  # the agreed pool, sampled by the [sample] strategy as without teachers
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".agreed-") as tmp:
            agreed = Path(tmp) / schema.KEPT_FILE
            with pq.ParquetWriter(agreed, pq.read_schema(pool_path)) as writer:
                for pool, _, _, agree in chunks():  # whole queries a row group, as sampling expects
                    writer.write_table(pool.filter(pa.array(agree)))
            # the plain stage reads the pool as the exclude stage's kept.parquet: hand it the agreed one
            stats = plain.run(Inputs("sample", {"ingest": ingest_dir, "exclude": Path(tmp)}), params, out_dir)
        return {**stats, "agreement": agreement_summary()}
    stats = _pick(params, chunks(), pos, names, query_ids, out_dir)
    summary = agreement_summary()
    return stats | ({"agreement": summary} if summary else {})


def _pick(params: Mapping[str, Any], chunks: Iterator[tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]],
          pos: np.ndarray, names: list[str], query_ids: pa.Array, out_dir: Path) -> dict[str, Any]:
    n, seed, mode, strategy = params["num_negatives"], params["seed"], params["ensemble"], params["strategy"]
    lo, hi = params["rank_min"], params["rank_max"] or params["top_k"]
    opts = {k: params[k] for k in SAMPLERS[strategy].options}
    outcomes: Counter = Counter()
    by_teacher: Counter = Counter()
    queries_by_teacher: Counter = Counter()
    seen: set[str] = set()
    total = 0
    with pq.ParquetWriter(out_dir / schema.NEGATIVES_FILE, schema.NEGATIVES) as negatives_out, \
            pq.ParquetWriter(out_dir / NEGATIVE_TEACHERS_FILE, PROVENANCE) as teachers_out:
        for pool, scores, qrow, agree in chunks:
            ranks = pool["rank"].to_numpy()
            eligible = agree & (pool["relax_level"].to_numpy() == 0) & (ranks >= lo) & (ranks <= hi)
            qids = pool["query_id"].to_numpy(zero_copy_only=False)
            doc_ids = pool["doc_id"]
            picks: list[np.ndarray] = []
            prov: dict[str, list] = {name: [] for name in ("teacher", "teacher_rank", "ensemble_score")}
            bounds = (np.flatnonzero(qids[1:] != qids[:-1]) + 1) if len(qids) else np.array([], dtype=np.int64)
            for sl in (np.split(np.arange(len(qids)), bounds) if len(qids) else []):
                qid = str(qids[sl[0]])
                seen.add(qid)
                rows = sl[eligible[sl]]
                s = scores[rows]
                if mode == "cross":
                    t = teacher_for(seed, qid, len(names))
                    queries_by_teacher[names[t]] += 1
                    qseed = seed_for(seed, qid)
                    # the keyed uniforms of the plain sample stage: randomised strategies draw from them
                    u = uniforms(qseed, doc_ids.take(pa.array(rows, pa.int64())))
                    local = cross_sample(ranks[rows], s, pos[qrow[sl[0]]], n, t, np.random.default_rng(qseed),
                                         strategy, {**opts, "u": u})
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
            chosen = pool.take(pa.array(np.concatenate(picks) if picks else np.array([], dtype=np.int64)))
            negatives_out.write_table(pa.table(
                {"query_id": chosen["query_id"], "doc_id": chosen["doc_id"], "doc_idx": chosen["doc_idx"],
                 "rank": chosen["rank"], "score": chosen["score"], "retriever": chosen["retriever"],
                 "source": pa.array(["sample"] * chosen.num_rows, pa.string()),
                 "teacher_score": chosen["teacher_score"], "filter_score": chosen["filter_score"]},
                schema=schema.NEGATIVES))
            teachers_out.write_table(pa.table({"query_id": chosen["query_id"], "doc_id": chosen["doc_id"], **prov},
                                              schema=PROVENANCE))
            total += chosen.num_rows
    # queries with no candidate left: a shortage of all n
    for qid in query_ids.to_pylist():
        if qid not in seen:
            outcomes["dropped" if params["shortage"] == "drop" else "short"] += 1
            if mode == "cross":
                queries_by_teacher[names[teacher_for(seed, qid, len(names))]] += 1
    stats = {"negatives": total, "queries": len(query_ids), "outcomes": dict(outcomes), "window": [lo, hi],
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
