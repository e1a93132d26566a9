"""Filters and samplers: every exported negative satisfies the configured filter against the exported scores,
no known positive or duplicate of one is a negative, each sampler is deterministic and follows its distribution."""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import negmine
from negmine.errors import ConfigError
from negmine.filters.near_duplicates import MinHasher, jaccard_estimate
from negmine.filters.nv_retriever import topk_abs, topk_margin_pos, topk_perc_pos
from negmine.samplers import SAMPLERS
from conftest import SAMPLE, write_beir


def _over(tmp_path: Path, *extra: str) -> list[str]:
    return [f"input.path='{SAMPLE}'", f"run.cache_dir='{tmp_path / 'c'}'", f"export.dir='{tmp_path / 'o'}'",
            "export.formats=['ids']", "retrieve.top_k=30", *extra]


def _positives(result) -> dict[str, dict[str, float]]:
    """Per query, the positive scores the filters compared with (the retriever's, or the teacher's)."""
    stage = result.stages.get("score") or result.stages["retrieve"]
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for r in pq.read_table(stage.path / "positive_scores.parquet").to_pylist():
        out[r["query_id"]][r["doc_id"]] = r["teacher_score"]
    return out


def test_nv_retriever_filters_by_hand():
    s = np.array([0.5, 0.69, 0.71, 0.9, -0.3])
    pos = np.array([0.8, 0.8, 0.8, 0.8, -0.2])
    assert topk_abs(s, pos, 0.7).tolist() == [True, True, False, False, True]
    assert topk_margin_pos(s, pos, 0.05).tolist() == [True, True, True, False, True]
    # perc-pos: 0.8 - 0.8 x 0.05 = 0.76; for a negative s_pos: -0.2 - 0.2 x 0.05 = -0.21
    assert topk_perc_pos(s, pos, 0.95).tolist() == [True, True, True, False, True]
    assert topk_perc_pos(np.array([-0.205]), np.array([-0.2]), 0.95).tolist() == [False]


@pytest.mark.parametrize("method, param, how", [("perc-pos", 0.95, "min"), ("margin-pos", 0.5, "mean"),
                                                ("perc-pos", 0.8, "max")])
def test_every_negative_satisfies_the_filter_against_the_exported_scores(tmp_path, method, param, how):
    key = {"perc-pos": "alpha", "margin-pos": "margin"}[method]
    result = negmine.mine(None, _over(tmp_path, f"filter.method='{method}'", f"filter.{key}={param}",
                                      f"filter.positive_score='{how}'", "sample.num_negatives=8"))
    positives = _positives(result)
    agg = {"min": min, "max": max, "mean": lambda v: sum(v) / len(v)}[how]
    ids = pq.read_table(tmp_path / "o" / "ids.parquet").to_pylist()
    checked = 0
    for row in ids:
        s_pos = agg(list(positives[row["query_id"]].values()))
        limit = s_pos - param if method == "margin-pos" else s_pos - abs(s_pos) * (1 - param)
        for doc, s in zip(row["negative_ids"], row["negative_scores"]):
            assert s < limit + 1e-4, (row["query_id"], doc, s, limit)
            assert doc not in positives[row["query_id"]]
            checked += 1
    assert checked > 50
    filtered = result.stages["exclude"].stats["filtered"]
    assert filtered[method] > 0  # the filter did remove something on this data


def test_filters_refuse_scores_they_were_not_meant_for(tmp_path):
    with pytest.raises(ConfigError, match="meant for cosine, probability"):
        negmine.mine(None, _over(tmp_path, "filter.method='abs'"))  # tau 0.7 on a BM25 scale
    with pytest.raises(ConfigError, match="fused"):
        negmine.mine(None, _over(tmp_path, "filter.method='perc-pos'", "retrieve.retrievers=['bm25','dense']"))
    with pytest.raises(ConfigError, match="activation \"probability\""):
        negmine.mine(None, _over(tmp_path, "filter.ce_max_probability=0.1"))
    with pytest.raises(ConfigError, match="logit"):
        negmine.mine(None, _over(tmp_path, "filter.ce_margin=3.0"))
    with pytest.raises(ConfigError, match="relax"):
        negmine.mine(None, _over(tmp_path, "sample.shortage='relax'"))


def test_score_window_and_skip_top(tmp_path):
    negmine.mine(None, _over(tmp_path, "filter.min_score=3.0", "filter.max_score=12.0", "filter.skip_top=2",
                             "sample.num_negatives=10"))
    for row in pq.read_table(tmp_path / "o" / "ids.parquet").to_pylist():
        assert all(3.0 <= s <= 12.0 for s in row["negative_scores"])
        assert all(r > 2 for r in row["negative_ranks"])


def test_cross_encoder_thresholds(tmp_path, tiny_cross_encoder):
    over = _over(tmp_path, f"score.teacher='{tiny_cross_encoder}'", "sample.num_negatives=10")
    base = negmine.mine(None, over)
    probs = np.concatenate([r["negative_teacher_scores"] for r in
                            pq.read_table(tmp_path / "o" / "ids.parquet").to_pylist()])
    cut = float(np.median(probs))
    negmine.mine(None, over + [f"filter.ce_max_probability={cut}"])
    for r in pq.read_table(tmp_path / "o" / "ids.parquet").to_pylist():
        assert all(p < cut for p in r["negative_teacher_scores"])
    logit = over + ["score.activation='logit'", "filter.ce_margin=0.0"]
    negmine.mine(None, logit)
    for r in pq.read_table(tmp_path / "o" / "ids.parquet").to_pylist():
        weakest = min(r["positive_teacher_scores"])
        assert all(s <= weakest for s in r["negative_teacher_scores"])
    assert base.stages["score"].status == "computed"


def test_relax_loosens_the_filter_only_for_short_queries(tmp_path):
    strict = _over(tmp_path, "filter.method='perc-pos'", "filter.alpha=0.5", "sample.num_negatives=10")
    a = negmine.mine(None, strict)
    relaxed = negmine.mine(None, strict + ["filter.relax_steps=8", "filter.relax_step=0.05",
                                           "sample.shortage='relax'"])
    short = a.stages["sample"].stats["outcomes"].get("short", 0)
    outcomes = relaxed.stages["sample"].stats["outcomes"]
    assert short > 0 and outcomes.get("relaxed", 0) > 0
    assert sum(relaxed.stages["sample"].stats["relaxed_to_level"].values()) == outcomes["relaxed"]
    positives = _positives(relaxed)
    for row in pq.read_table(tmp_path / "o" / "ids.parquet").to_pylist():
        s_pos = min(positives[row["query_id"]].values())
        loosest = min(1.0, 0.5 + 8 * 0.05)
        assert all(s < s_pos - abs(s_pos) * (1 - loosest) + 1e-4 for s in row["negative_scores"])


def test_minhash_estimates_jaccard():
    h = MinHasher(num_perm=256)
    a = "the quick brown fox jumps over the lazy dog near the river bank today"
    b = "the quick brown fox jumps over the lazy dog near the river bank yesterday"
    c = "completely different words about aircraft wings and heat transfer in flows"
    assert jaccard_estimate(h.signature(a), h.signature(a)) == 1.0
    assert 0.7 < jaccard_estimate(h.signature(a), h.signature(b)) < 1.0
    assert jaccard_estimate(h.signature(a), h.signature(c)) < 0.1


def test_near_duplicates_of_a_positive_are_dropped_and_counted(tmp_path):
    base = "shock waves in supersonic flow over a thin wedge at small angle of attack measured in a tunnel"
    docs = [{"_id": "pos", "text": base},
            {"_id": "near", "text": base.replace("tunnel", "wind tunnel facility")},
            {"_id": "other", "text": "shock waves and boundary layers on flat plates in hypersonic flow"}]
    docs += [{"_id": f"x{i}", "text": f"supersonic flow topic {i} with shock and wedge data"} for i in range(8)]
    data = write_beir(tmp_path / "d", docs, [{"_id": "q", "text": "shock waves supersonic wedge"}], [("q", "pos", 1)])
    over = [f"input.path='{data}'", f"run.cache_dir='{tmp_path / 'c'}'", f"export.dir='{tmp_path / 'o'}'",
            "export.formats=['ids']", "sample.num_negatives=20", "retrieve.top_k=11"]
    plain = negmine.mine(None, over)
    assert "near" in pq.read_table(tmp_path / "o" / "ids.parquet").to_pylist()[0]["negative_ids"]
    result = negmine.mine(None, over + ["filter.near_dup_jaccard=0.6"])
    negs = pq.read_table(tmp_path / "o" / "ids.parquet").to_pylist()[0]["negative_ids"]
    assert "near" not in negs and "other" in negs
    assert result.stages["exclude"].stats["filtered"] == {"near_duplicate_minhash": 1}
    assert plain.stages["retrieve"].status == "computed" and result.stages["retrieve"].status == "cached"


def test_embedding_near_duplicates(tmp_path, tiny_bi_encoders):
    docs = [{"_id": "pos", "text": "a b c d e"}, {"_id": "same", "text": "a b c d e "},
            {"_id": "o1", "text": "x y z"}, {"_id": "o2", "text": "a x"}]
    data = write_beir(tmp_path / "d", docs, [{"_id": "q", "text": "a b"}], [("q", "pos", 1)])
    over = [f"input.path='{data}'", f"run.cache_dir='{tmp_path / 'c'}'", f"export.dir='{tmp_path / 'o'}'",
            "export.formats=['ids']", "retrieve.retrievers=['dense']", f"dense.model='{tiny_bi_encoders[0]}'",
            "retrieve.top_k=4", "exclude.duplicates=false", "filter.near_dup_cosine=0.999"]
    result = negmine.mine(None, over)
    assert "same" not in pq.read_table(tmp_path / "o" / "ids.parquet").to_pylist()[0]["negative_ids"]
    assert result.stages["exclude"].stats["filtered"].get("near_duplicate_embedding") == 1


# ---- samplers: determinism and distributions -------------------------------------------------------------------

SCORES = np.array([0.9, 0.8, 0.7, 0.5, 0.3, 0.1])
RANKS = np.arange(1, 7)
OPTS = {"temperature": 0.2, "simans_a": 5.0, "simans_b": 0.0, "s_pos": 0.75}
DOC_IDS = [f"d{i}" for i in range(6)]


def _opts(seed: int) -> dict:
    """OPTS with the candidates' keyed uniforms for this seed (what the sample stage hands a sampler)."""
    from negmine.hashing import seed_for
    from negmine.samplers.keys import uniforms

    return {**OPTS, "u": uniforms(seed_for(seed, "q"), DOC_IDS)}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_each_sampler_is_deterministic_for_a_seed(name):
    draw = lambda seed: SAMPLERS[name](RANKS, SCORES, 3, np.random.default_rng(seed), _opts(seed)).tolist()  # noqa: E731
    assert draw(7) == draw(7)
    picks = draw(7)
    assert len(picks) == len(set(picks)) == 3
    assert [RANKS[i] for i in picks] == sorted(RANKS[i] for i in picks)  # returned in rank order


def _chi_square_p(observed: np.ndarray, expected_p: np.ndarray) -> float:
    from scipy.stats import chisquare

    n = observed.sum()
    return float(chisquare(observed, expected_p * n).pvalue)


@pytest.mark.parametrize("name, expected", [
    ("random", np.full(6, 1 / 6)),
    ("softmax", np.exp(SCORES / 0.2) / np.exp(SCORES / 0.2).sum()),
    ("simans", np.exp(-5.0 * (SCORES - 0.75) ** 2) / np.exp(-5.0 * (SCORES - 0.75) ** 2).sum()),
])
def test_each_sampler_follows_its_distribution(name, expected):
    draws = 6000
    counts = Counter(int(SAMPLERS[name](RANKS, SCORES, 1, np.random.default_rng(seed), _opts(seed))[0])
                     for seed in range(draws))
    observed = np.array([counts[i] for i in range(6)])
    assert _chi_square_p(observed, expected) > 0.001


def test_top1_random_always_keeps_the_best_and_draws_the_rest_uniformly():
    counts = Counter()
    for seed in range(3000):
        picks = SAMPLERS["top1-random"](RANKS, SCORES, 2, np.random.default_rng(seed), _opts(seed)).tolist()
        assert picks[0] == 0
        counts[picks[1]] += 1
    assert _chi_square_p(np.array([counts[i] for i in range(1, 6)]), np.full(5, 0.2)) > 0.001


def test_top_sampler_takes_the_best_ranks():
    assert SAMPLERS["top"](RANKS[::-1], SCORES, 2, np.random.default_rng(0), _opts(0)).tolist() == [5, 4]


@pytest.mark.parametrize("strategy", ["softmax", "simans", "top1-random"])
def test_score_based_samplers_run_end_to_end_deterministically(tmp_path, strategy):
    over = _over(tmp_path, f"sample.strategy='{strategy}'", "sample.temperature=2.0", "sample.simans_a=0.01")
    negmine.mine(None, over)
    first = (tmp_path / "o" / "ids.jsonl").read_text()
    negmine.mine(None, over, no_cache=True)
    assert (tmp_path / "o" / "ids.jsonl").read_text() == first
    rows = [json.loads(x) for x in first.splitlines()]
    assert all(len(r["negative_ids"]) == 5 for r in rows)


# ---- a property test over random configurations ----------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["none", "margin-pos", "perc-pos"]), param=st.floats(0.0, 1.0),
       how=st.sampled_from(["min", "mean", "max"]), strategy=st.sampled_from(sorted(SAMPLERS)),
       n=st.integers(1, 8), rank_min=st.integers(1, 5), width=st.integers(0, 25), seed=st.integers(0, 3),
       skip_top=st.integers(0, 3))
def test_property_negatives_obey_the_configuration(tmp_path_factory, method, param, how, strategy, n, rank_min,
                                                    width, seed, skip_top):
    tmp = tmp_path_factory.mktemp("prop")
    cache = tmp_path_factory.getbasetemp() / "prop-cache"  # retrieval is shared across examples
    key = {"margin-pos": "margin", "perc-pos": "alpha"}.get(method)
    over = [f"input.path='{SAMPLE}'", f"run.cache_dir='{cache}'", f"export.dir='{tmp / 'o'}'",
            "export.formats=['ids']", "retrieve.top_k=30", f"filter.method='{method}'",
            f"filter.positive_score='{how}'", f"sample.strategy='{strategy}'", f"sample.num_negatives={n}",
            f"sample.rank_min={rank_min}", f"sample.rank_max={min(30, rank_min + width)}", f"sample.seed={seed}",
            f"filter.skip_top={skip_top}", "sample.temperature=1.0", "sample.simans_a=0.05"]
    if key:
        over.append(f"filter.{key}={param * (10 if key == 'margin' else 1)}")
    result = negmine.mine(None, over)
    positives = _positives(result)
    qrels = defaultdict(set)
    for line in (SAMPLE / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        q, d, _ = line.split("\t")
        qrels[q].add(d)
    agg = {"min": min, "max": max, "mean": lambda v: sum(v) / len(v)}[how]
    for row in pq.read_table(tmp / "o" / "ids.parquet").to_pylist():
        negs = row["negative_ids"]
        assert len(negs) <= n and len(set(negs)) == len(negs)
        assert not set(negs) & qrels[row["query_id"]]
        assert all(max(rank_min, skip_top + 1) <= r <= min(30, rank_min + width) for r in row["negative_ranks"])
        if key:
            s_pos = agg(list(positives[row["query_id"]].values()))
            value = param * (10 if key == "margin" else 1)
            limit = s_pos - value if key == "margin" else s_pos - abs(s_pos) * (1 - value)
            assert all(s < limit + 1e-4 for s in row["negative_scores"])
    again = negmine.mine(None, over, no_cache=True)
    assert again.stages["sample"].stats == result.stages["sample"].stats
