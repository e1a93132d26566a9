"""Sampling keyed by document: every random choice is a function of (seed, query id, document id) only, so a draw
depends neither on the order of the candidates nor on how they are chunked, and weighted draws are exact
sampling without replacement."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import negmine
from negmine import sample as sample_mod
from negmine import schema
from negmine.hashing import seed_for
from negmine.samplers import SAMPLERS
from negmine.samplers.keys import combine, id_hashes, uniforms

RANDOMISED = ("random", "softmax", "simans", "top1-random")


def _fnv_reference(text: str) -> int:
    """FNV-1a 64 then the length mix and MurmurHash3's finaliser, one id at a time in plain Python."""
    m = (1 << 64) - 1
    h = 0xCBF29CE484222325
    raw = text.encode("utf-8")
    for b in raw:
        h = ((h ^ b) * 0x100000001B3) & m
    h ^= (len(raw) * 0x9E3779B97F4A7C15) & m
    for mult in (0xFF51AFD7ED558CCD, 0xC4CEB93FCA3D1DB5):
        h ^= h >> 33
        h = (h * mult) & m
    return h ^ (h >> 33)


def test_vectorised_id_hash_matches_the_one_at_a_time_reference():
    ids = ["", "a", "d1", "d10", "doc-ü-漢字", "x" * 70, "12345", "a\x00b"]
    assert id_hashes(ids).tolist() == [_fnv_reference(t) for t in ids]


def test_keys_do_not_depend_on_chunking_or_slicing():
    ids = pa.array([f"doc{i}" for i in range(1000)])
    whole = id_hashes(ids)
    chunked = id_hashes(pa.chunked_array([ids[:333], ids[333:700], ids[700:]]))
    pieces = np.concatenate([id_hashes(ids.slice(0, 400)), id_hashes(ids.slice(400))])
    assert np.array_equal(whole, chunked) and np.array_equal(whole, pieces)
    assert len(np.unique(whole)) == 1000
    seeds = np.repeat(np.array([seed_for(1, "q1"), seed_for(1, "q2")], dtype=np.uint64), 500)
    rows = combine(seeds, whole)
    assert np.array_equal(rows[:500], combine(seed_for(1, "q1"), whole[:500]))
    assert np.array_equal(rows[500:], combine(seed_for(1, "q2"), whole[500:]))


def _draw(name: str, ids: list[str], scores: np.ndarray, n: int, seed: int, qid: str = "q",
          ranks: np.ndarray | None = None) -> set[str]:
    ranks = np.arange(1, len(ids) + 1) if ranks is None else ranks
    opts = {"temperature": 0.5, "simans_a": 2.0, "simans_b": 0.0, "s_pos": 0.8,
            "u": uniforms(seed_for(seed, qid), ids)}
    return {ids[i] for i in SAMPLERS[name](ranks, scores, n, np.random.default_rng(0), opts)}


@pytest.mark.parametrize("name", RANDOMISED)
def test_drawn_set_is_invariant_to_the_order_of_the_candidates(name):
    rng = np.random.default_rng(3)
    ids = [f"doc{i}" for i in range(40)]
    scores = rng.random(40)
    ranks = np.arange(1, 41)
    for seed in range(20):
        perm = rng.permutation(40)  # the same candidates (id, score, rank) arriving in another order
        shuffled = [ids[i] for i in perm]
        drawn = _draw(name, ids, scores, 5, seed, ranks=ranks)
        assert len(drawn) == 5
        assert drawn == _draw(name, shuffled, scores[perm], 5, seed, ranks=ranks[perm])


@pytest.mark.parametrize("name", RANDOMISED)
def test_same_seed_same_draw_and_seeds_and_queries_differ(name):
    ids = [f"doc{i}" for i in range(30)]
    scores = np.linspace(0.9, 0.1, 30)
    assert _draw(name, ids, scores, 5, 7) == _draw(name, ids, scores, 5, 7)
    assert len({frozenset(_draw(name, ids, scores, 5, s)) for s in range(10)}) > 1
    assert len({frozenset(_draw(name, ids, scores, 5, 7, qid=f"q{i}")) for i in range(10)}) > 1


def _exact_inclusion(w: np.ndarray, n: int) -> np.ndarray:
    """Exact inclusion probabilities of successive weighted sampling without replacement (every ordered draw)."""
    p = np.zeros(len(w))
    for seq in itertools.permutations(range(len(w)), n):
        prob, left = 1.0, w.sum()
        for i in seq:
            prob *= w[i] / left
            left -= w[i]
        p[list(seq)] += prob
    return p


@pytest.mark.parametrize("name", ["random", "softmax", "simans"])
def test_inclusion_frequencies_over_seeds_match_exact_weighted_sampling_without_replacement(name):
    ids = [f"doc{i}" for i in range(5)]
    scores = np.array([0.95, 0.8, 0.6, 0.3, 0.1])
    weights = {"random": np.ones(5), "softmax": np.exp(scores / 0.5),
               "simans": np.exp(-2.0 * (scores - 0.8) ** 2)}[name]
    n, draws = 2, 4000
    expected = _exact_inclusion(weights, n)
    counts = np.zeros(5)
    for seed in range(draws):  # fixed seeds: the outcome is the same every run
        for d in _draw(name, ids, scores, n, seed):
            counts[ids.index(d)] += 1
    freq = counts / draws
    sd = np.sqrt(expected * (1 - expected) / draws)
    assert np.all(np.abs(freq - expected) <= 4 * sd), (freq, expected)
    if name == "softmax":  # the weights are unequal enough that uniform inclusion would fail the same bound
        assert not np.all(np.abs(freq - n / 5) <= 4 * sd)


def _rewrite(kept: Path, out: Path, rows_per_group: int, shuffle_seed: int | None) -> Path:
    """The exclude stage's kept candidates again, each query's rows shuffled and cut into other row groups
    (a query's rows stay together, as the stage reads them)."""
    table = pq.read_table(kept)
    qids = table["query_id"].to_pylist()
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(qids):
        groups.setdefault(q, []).append(i)
    rng = np.random.default_rng(shuffle_seed)
    order = list(groups)
    if shuffle_seed is not None:
        order = [order[i] for i in rng.permutation(len(order))]
    with pq.ParquetWriter(out, table.schema) as writer:
        for start in range(0, len(order), rows_per_group):
            idx = [i for q in order[start:start + rows_per_group] for i in groups[q]]
            if shuffle_seed is not None:
                idx = [idx[i] for i in rng.permutation(len(idx))]
                # grouped by query again, each query's rows in shuffled order
                idx.sort(key=lambda i: order.index(qids[i]))
            writer.write_table(table.take(pa.array(idx, pa.int64())))
    return out


@pytest.mark.parametrize("strategy,shortage,n", [("softmax", "keep-fewer", 3), ("simans", "keep-fewer", 3),
                                                  ("random", "pad-random", 40), ("top1-random", "drop", 4)])
def test_sample_stage_output_is_invariant_to_candidate_order_and_chunking(tmp_path, sample_overrides, strategy,
                                                                          shortage, n):
    result = negmine.mine(None, sample_overrides + ["retrieve.top_k=30"], until="exclude")
    ingest, kept = result.stages["ingest"].path, result.stages["exclude"].path / schema.KEPT_FILE
    params = {"strategy": strategy, "num_negatives": n, "rank_min": 1, "rank_max": 0, "seed": 11,
              "shortage": shortage, "top_k": 30, "temperature": 1.0, "simans_a": 0.5, "simans_b": 0.0,
              "query_text": True, "duplicates": True}
    params = {k: v for k, v in params.items() if k in sample_mod.BASE or k in SAMPLERS[strategy].options
              or k == "top_k" or (shortage == "pad-random" and k in ("query_text", "duplicates"))}

    def negatives(filtered: Path, name: str) -> dict[str, set[str]]:
        out = tmp_path / name
        out.mkdir()
        sample_mod.sample(params, ingest, filtered, out)
        t = pq.read_table(out / schema.NEGATIVES_FILE)
        got: dict[str, set[str]] = {}
        for q, d in zip(t["query_id"].to_pylist(), t["doc_id"].to_pylist()):
            got.setdefault(q, set()).add(d)
        return got

    base = negatives(kept, "base")
    assert base and any(len(v) > 0 for v in base.values())
    assert negatives(_rewrite(kept, tmp_path / "a.parquet", 1, 5), "shuffled-1") == base
    assert negatives(_rewrite(kept, tmp_path / "b.parquet", 3, 9), "shuffled-3") == base
    assert negatives(_rewrite(kept, tmp_path / "c.parquet", 1000, None), "one-group") == base
    if shortage == "pad-random":  # the fillers were needed, and are keyed too
        t = pq.read_table(tmp_path / "base" / schema.NEGATIVES_FILE)
        assert pc.sum(pc.equal(t["source"], "pad-random")).as_py() > 0
