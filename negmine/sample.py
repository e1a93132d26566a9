"""Sample stage: choose each query's negatives from its kept candidates inside the rank window.

The window (`rank_min`..`rank_max`) applies to the raw retrieval ranks, before exclusion: rank 3 is the third
document the retriever returned even if ranks 1 and 2 were positives. When a query has fewer eligible candidates
than `num_negatives`, the shortage policy decides: `keep-fewer` keeps what there is, `drop` leaves the query out,
`pad-random` fills up with random corpus documents that pass the same exclusions (marked source="pad-random"),
`relax` loosens the [filter] method one step at a time up to `relax_steps` (counted per level).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negmine import schema, tables
from negmine.hashing import seed_for
from negmine.progress import bar
from negmine.samplers import SAMPLERS
from negmine.samplers.keys import combine, id_hashes, to_uniform
from negmine.stage import Config, Context, Inputs, Stage

VERSION = "4"  # bumped when the stage's output changes; 3: the stage contract (keys from its own params);
# 4: draws keyed by (seed, query id, document id), not by candidate position
BASE = ("strategy", "num_negatives", "rank_min", "rank_max", "seed", "shortage")  # [sample] settings of every
# strategy; each sampler adds its own options


def _pad(positives: tables.Positives, qidx: int, query_seed: int, taken: set[int], need: int,
         corpus_hashes: np.ndarray, params: Mapping[str, Any]) -> list[int]:
    """Random corpus documents for one query that pass the exclusions and are not taken yet: those with the
    smallest keys of (seed, query id, document id), so the fillers do not depend on the candidates' order."""
    keys = combine(query_seed, corpus_hashes)
    n_docs = len(keys)
    if not need or not n_docs:
        return []
    width = min(n_docs, max(4 * need, 16))
    while True:  # widen until enough pass or the corpus is exhausted, which is then a shortage
        first = np.argpartition(keys, width - 1)[:width] if width < n_docs else np.arange(n_docs)
        first = first[np.argsort(keys[first], kind="stable")]
        reasons = positives.reasons(np.full(len(first), qidx, dtype=np.int64), first,
                                    params["query_text"], params["duplicates"])
        out = [d for d in first[reasons == 0].tolist() if d not in taken][:need]
        if len(out) == need or width == n_docs:
            return out
        width = min(n_docs, width * 4)


def sample(params: Mapping[str, Any], ingest_dir: Path, filtered_path: Path, out_dir: Path) -> dict[str, Any]:
    """Choose negatives from the exclude stage's kept candidates (FILTERED rows, grouped by query)."""
    sampler = SAMPLERS[params["strategy"]]
    n, seed, policy = params["num_negatives"], params["seed"], params["shortage"]
    lo, hi = params["rank_min"], params["rank_max"] or params["top_k"]
    padding = policy == "pad-random"
    query_ids = tables.mined_query_ids(ingest_dir)
    positives = tables.Positives(ingest_dir) if padding else None
    doc_ids = tables.doc_ids(ingest_dir) if padding else None
    corpus_hashes = id_hashes(doc_ids) if padding else None
    qindex = {q: i for i, q in enumerate(query_ids.to_pylist())} if padding else {}
    outcomes: Counter = Counter()
    seen: set[str] = set()
    pf = pq.ParquetFile(filtered_path)
    empty = np.array([], dtype=np.int64)

    relax = policy == "relax"
    opts = {k: params[k] for k in sampler.options}

    def choose(qid: str, cand: pa.Table, arrays: tuple[np.ndarray, ...], sl: np.ndarray,
               cols: dict[str, list]) -> None:
        """Append one query's negatives to `cols` (sl: its rows in `cand`, possibly none)."""
        qseed = seed_for(seed, qid)
        rng = np.random.default_rng(qseed)
        ranks, scores, didx, levels, s_pos, u = (a[sl] for a in arrays)
        # eligible: rows the filters keep as configured; `relax` loosens one level at a time while short
        level = 0
        eligible = np.flatnonzero(levels == 0)
        while relax and len(eligible) < n and level < max_level:
            level += 1
            eligible = np.flatnonzero(levels <= level)
        pick_local = eligible[sampler(ranks[eligible], scores[eligible], n, rng,
                                      {**opts, "s_pos": float(s_pos[0]) if len(s_pos) else float("nan"),
                                       "u": u[eligible]})]
        pick = sl[pick_local]
        if relax and level and len(pick) == n:
            outcomes["relaxed"] += 1
            relaxed_levels[level] = relaxed_levels.get(level, 0) + 1
            cols_add(qid, cand, pick, cols)
            return
        pads: list[int] = []
        if len(pick) < n:
            if policy == "drop":
                outcomes["dropped"] += 1
                return
            if padding:
                taken = set(didx[pick_local].tolist())
                pads = _pad(positives, qindex[qid], qseed, taken, n - len(pick), corpus_hashes, params)
        outcomes["full" if len(pick) == n else "padded" if len(pick) + len(pads) == n else "short"] += 1
        cols_add(qid, cand, pick, cols)
        if pads:
            cols["query_id"] += [qid] * len(pads)
            cols["doc_id"] += doc_ids.take(pa.array(pads, pa.int64())).to_pylist()
            cols["doc_idx"] += pads
            cols["rank"] += [None] * len(pads)
            cols["score"] += [None] * len(pads)
            cols["retriever"] += [None] * len(pads)
            cols["source"] += ["pad-random"] * len(pads)
            cols["teacher_score"] += [None] * len(pads)
            cols["filter_score"] += [None] * len(pads)

    def cols_add(qid: str, cand: pa.Table, pick: np.ndarray, cols: dict[str, list]) -> None:
        if len(pick):
            rows = cand.take(pa.array(pick))
            for name in ("doc_id", "doc_idx", "rank", "score", "retriever", "teacher_score", "filter_score"):
                cols[name] += rows[name].to_pylist()
            cols["query_id"] += [qid] * len(pick)
            cols["source"] += ["sample"] * len(pick)

    max_level = int(params["relax_steps"]) if relax else 0
    relaxed_levels: dict[int, int] = {}
    total = 0
    with pq.ParquetWriter(out_dir / schema.NEGATIVES_FILE, schema.NEGATIVES) as writer:
        def flush(cols: dict[str, list]) -> int:
            writer.write_table(pa.table(cols, schema=schema.NEGATIVES))
            return len(cols["query_id"])

        for g in bar(range(pf.num_row_groups), desc="sample", unit="chunk"):
            cand = pf.read_row_group(g)
            cand = cand.filter(pc.and_(pc.greater_equal(cand["rank"], lo), pc.less_equal(cand["rank"], hi)))
            qids = cand["query_id"].to_numpy(zero_copy_only=False)
            cols: dict[str, list] = {name: [] for name in schema.NEGATIVES.names}
            if len(qids):
                # rows are grouped by query, in rank order (retrieval writes them so); split at each new id
                bounds = np.flatnonzero(qids[1:] != qids[:-1]) + 1
                # each candidate's keyed uniform, for the whole chunk at once: the query seed repeated over its rows
                starts = np.concatenate([[0], bounds])
                qseeds = np.array([seed_for(seed, str(qids[i])) for i in starts], dtype=np.uint64)
                row_seeds = np.repeat(qseeds, np.diff(np.concatenate([starts, [len(qids)]])))
                u = to_uniform(combine(row_seeds, id_hashes(cand["doc_id"])))
                arrays = (cand["rank"].to_numpy(), cand["filter_score"].to_numpy(zero_copy_only=False),
                          cand["doc_idx"].to_numpy(), cand["relax_level"].to_numpy(),
                          cand["positive_score"].to_numpy(zero_copy_only=False), u)
                for sl in np.split(np.arange(len(qids)), bounds):
                    qid = str(qids[sl[0]])
                    seen.add(qid)
                    choose(qid, cand, arrays, sl, cols)
            total += flush(cols)
        # queries with no candidate left in the window: a shortage of all n
        cols = {name: [] for name in schema.NEGATIVES.names}
        none = (empty, np.array([], dtype=np.float32), empty, np.array([], dtype=np.int8),
                np.array([], dtype=np.float32), np.array([], dtype=np.float64))
        for qid in query_ids.to_pylist():
            if qid not in seen:
                choose(qid, pa.table({}), none, empty, cols)
        total += flush(cols)
    stats = {"negatives": total, "queries": len(query_ids), "outcomes": dict(outcomes),
             "window": [lo, hi], "strategy": params["strategy"], "num_negatives": n}
    if relax:
        stats["relaxed_to_level"] = {str(k): v for k, v in sorted(relaxed_levels.items())}
    return stats


def _params(cfg: Config, ctx: Context) -> dict[str, Any]:
    s = cfg["sample"]
    p = {k: s[k] for k in BASE}
    p.update({k: s[k] for k in SAMPLERS[s["strategy"]].options})
    p["top_k"] = cfg["retrieve"]["top_k"]  # rank_max 0 means top_k
    if s["shortage"] == "relax":
        p["relax_steps"] = cfg["filter"]["relax_steps"]
    if s["shortage"] == "pad-random":  # fillers pass the same exclusions
        p.update(query_text=cfg["exclude"]["query_text"], duplicates=cfg["exclude"]["duplicates"])
    return p


def _reads(cfg: Config) -> tuple[str, ...]:
    from negmine.config import judge_stage

    # a judge on the pool (negmine.judge) hands over the kept candidates less its false negatives
    return ("ingest", "exclude") + (("judge-pool",) if judge_stage(cfg) == "judge-pool" else ())


def _pool(inputs: Inputs) -> Path:
    return (inputs["judge-pool"] if "judge-pool" in inputs else inputs["exclude"]) / schema.KEPT_FILE


STAGE = Stage(name="sample", version=VERSION, command="sample", reads=_reads, params=_params,
              run=lambda inputs, params, out: sample(params, inputs["ingest"], _pool(inputs), out),
              outputs=(schema.NEGATIVES_FILE,), section="sample")
