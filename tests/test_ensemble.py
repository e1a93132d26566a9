"""Teacher ensembles: several teachers scored once each, NV-Retriever's cross- and intra-sample ensembling, the
agreement filter, which teacher gave each negative, and a bad [ensemble] setting refused in one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import negmine
from negmine.cli import app
from negmine.filters.agreement import agreement, keep_all, vetoes
from negmine.samplers.ensemble import cross_sample, intra_sample, teacher_for
from conftest import SAMPLE, count_teacher_pairs


# ---------------------------------------------------------------------------------------- hand-built cases

# five candidates (retrieval ranks 1..5) scored by two teachers on different scales
RANKS = np.array([1, 2, 3, 4, 5])
SCORES = np.array([[0.90, 3.0],   # teacher 0's best, teacher 1's 3rd
                   [0.10, 9.0],   # teacher 1's best
                   [0.80, 8.0],   # teacher 0's 2nd, teacher 1's 2nd
                   [0.70, 1.0],
                   [0.20, 2.0]])


def test_intra_sample_takes_each_teachers_best_in_turn_without_repeats():
    picked, by = intra_sample(RANKS, SCORES, 2)
    assert picked.tolist() == [0, 1] and by.tolist() == [0, 1]  # the top negative of each teacher
    picked, by = intra_sample(RANKS, SCORES, 4)
    # round 2: teacher 0's 2nd (row 2) is taken first, so teacher 1 adds its next untaken one (row 0 is taken
    # too: its 3rd is row 0, so row 4, its 4th)
    assert picked.tolist() == [0, 1, 2, 4] and by.tolist() == [0, 1, 0, 1]


def test_intra_sample_skips_a_best_candidate_another_teacher_already_took():
    same_top = np.array([[0.9, 9.0], [0.5, 1.0], [0.1, 5.0]])
    picked, by = intra_sample(np.array([1, 2, 3]), same_top, 2)
    assert picked.tolist() == [0, 2] and by.tolist() == [0, 1]  # teacher 1's best is row 0: it gives its next


def test_intra_sample_stops_when_candidates_run_out():
    picked, _ = intra_sample(RANKS[:2], SCORES[:2], 5)
    assert sorted(picked.tolist()) == [0, 1]


def test_cross_sample_takes_the_chosen_teachers_top_n():
    rng = np.random.default_rng(0)
    s_pos = np.array([0.95, 10.0])
    assert cross_sample(RANKS, SCORES, s_pos, 2, 0, rng, "top", {}).tolist() == [0, 2]
    assert cross_sample(RANKS, SCORES, s_pos, 2, 1, rng, "top", {}).tolist() == [1, 2]


def test_cross_sample_ties_in_a_teachers_scores_go_to_the_better_retrieval_rank():
    tied = np.array([[0.5, 0.0], [0.5, 0.0], [0.9, 0.0]])
    picked = cross_sample(np.array([2, 1, 3]), tied, np.array([1.0, 1.0]), 2, 0, np.random.default_rng(0), "top", {})
    assert picked.tolist() == [2, 1]


def test_the_cross_sample_teacher_comes_from_a_hash_of_seed_and_query_id():
    ids = [f"q{i}" for i in range(400)]
    first = [teacher_for(42, q, 3) for q in ids]
    assert first == [teacher_for(42, q, 3) for q in reversed(ids)][::-1]  # order of asking changes nothing
    counts = np.bincount(first, minlength=3)
    assert (counts > 100).all()  # every teacher supplies queries
    assert first != [teacher_for(7, q, 3) for q in ids]  # another seed, other choices


def test_agreement_keeps_only_candidates_every_teacher_scores_below_its_own_threshold():
    # positives: teacher 0 (probability) 0.8 -> threshold 0.76; teacher 1 (bm25) 20 -> threshold 19
    s = np.array([[0.50, 10.0],   # both below: kept
                  [0.77, 10.0],   # teacher 0 objects
                  [0.50, 19.5],   # teacher 1 objects
                  [0.79, 25.0]])  # both object
    pos = np.tile([0.8, 20.0], (4, 1))
    passes = agreement(s, pos, 0.95)
    assert keep_all(passes).tolist() == [True, False, False, False]
    assert vetoes(passes, ["ce", "bm25"]) == {"ce": 2, "bm25": 2}


def test_agreement_thresholds_hold_for_negative_positive_scores():
    # a logit teacher whose positive scores -2: threshold -2 - 2 * 0.05 = -2.1
    passes = agreement(np.array([[-2.05], [-2.2]]), np.array([[-2.0], [-2.0]]), 0.95)
    assert keep_all(passes).tolist() == [False, True]


def test_agreement_keeps_nothing_of_a_query_without_a_positive_score():
    assert not keep_all(agreement(np.array([[0.1]]), np.array([[np.nan]]), 0.95)).any()


# ---------------------------------------------------------------------------------------- runs on the sample


def _over(tmp_path: Path, *extra: str) -> list[str]:
    return [f"input.path='{SAMPLE}'", f"run.cache_dir='{tmp_path / 'cache'}'", f"export.dir='{tmp_path / 'out'}'",
            "retrieve.top_k=20", "sample.num_negatives=3", "export.formats=['ids','triplet']", *extra]


def _teacher(path: Path, name: str, **extra: str) -> str:
    fields = ", ".join([f"name = {json.dumps(name)}", f"model = {json.dumps(str(path))}",
                        *(f"{k} = {json.dumps(v)}" for k, v in extra.items())])
    return "{" + fields + "}"


def _stage_table(result, stage: str, name: str):
    return pq.read_table(result.stages[stage].path / name)


def test_cross_sampling_gives_each_query_the_hashed_teachers_top_n_of_its_filtered_candidates(
        tmp_path, tiny_cross_encoder):
    teachers = f"ensemble.teachers=['bm25', {_teacher(tiny_cross_encoder, 'ce')}]"
    result = negmine.mine(None, _over(tmp_path, teachers, "ensemble.sampling='cross'", "sample.rank_max=15"))
    kept = _stage_table(result, "exclude", "kept.parquet").to_pandas()
    scores = _stage_table(result, "teachers", "teacher_scores.parquet").to_pandas()
    kept = kept.merge(scores, on=["query_id", "doc_idx"])
    kept = kept[(kept["relax_level"] == 0) & (kept["rank"] <= 15)]
    negs = _stage_table(result, "sample", "negatives.parquet").to_pandas()
    prov = _stage_table(result, "sample", "negative_teachers.parquet").to_pandas()
    assert len(negs) == len(prov) > 0 and (negs["doc_id"].values == prov["doc_id"].values).all()
    names = ["bm25", "ce"]
    for qid, group in kept.groupby("query_id"):
        t = names[teacher_for(42, qid, 2)]
        best = group.sort_values([t, "rank"], ascending=[False, True])["doc_id"].tolist()[:3]
        assert negs[negs["query_id"] == qid]["doc_id"].tolist() == best, qid
        assert set(prov[prov["query_id"] == qid]["teacher"]) == {t}
    stats = result.stages["sample"].stats
    assert set(stats["queries_by_teacher"]) == set(names) and min(stats["queries_by_teacher"].values()) > 0
    assert sum(stats["by_teacher"].values()) == len(negs)
    # provenance: the ids output names each negative's teacher, the report counts them
    ids = pq.read_table(tmp_path / "out" / "ids.parquet").to_pylist()
    given = {(r["query_id"], d): t for r in ids for d, t in zip(r["negative_ids"], r["negative_teachers"])}
    assert given == {(q, d): t for q, d, t in zip(prov["query_id"], prov["doc_id"], prov["teacher"])}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Negatives by teacher" in report
    for name in names:
        assert f"| {name} | {stats['by_teacher'][name]} |" in report
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Negatives by teacher" in page and "cross-sample ensembling: teacher" in page  # the examples say who


def test_intra_sampling_with_agreement_on_the_sample(tmp_path, tiny_cross_encoder):
    teachers = f"ensemble.teachers=[{_teacher(tiny_cross_encoder, 'ce')}, 'bm25']"
    result = negmine.mine(None, _over(tmp_path, teachers, "ensemble.sampling='intra'", "ensemble.agreement=true",
                                      "ensemble.agreement_alpha=0.99"))
    stats = result.stages["sample"].stats
    agree = stats["agreement"]
    assert agree["kept"] + agree["dropped"] == agree["candidates"] and agree["dropped"] > 0
    kept = _stage_table(result, "exclude", "kept.parquet").to_pandas()
    kept = kept.merge(_stage_table(result, "teachers", "teacher_scores.parquet").to_pandas(),
                      on=["query_id", "doc_idx"])
    pos = _stage_table(result, "teachers", "teacher_positive_scores.parquet").to_pandas()
    weakest = pos.groupby("query_id")[["ce", "bm25"]].min()
    negs = _stage_table(result, "sample", "negatives.parquet").to_pandas()
    prov = _stage_table(result, "sample", "negative_teachers.parquet").to_pandas()
    for qid, group in negs.groupby("query_id", sort=False):
        for t in ("ce", "bm25"):  # every negative below every teacher's own threshold
            s = kept.set_index(["query_id", "doc_id"]).loc[[(qid, d) for d in group["doc_id"]], t].to_numpy()
            limit = weakest.loc[qid, t] - abs(weakest.loc[qid, t]) * 0.01
            assert (s < limit).all(), (qid, t)
        # the teachers took turns: ce, bm25, ce (or fewer when the pool ran short)
        assert prov[prov["query_id"] == qid]["teacher"].tolist() == ["ce", "bm25", "ce"][:len(group)]
    assert set(stats["by_teacher"]) == {"ce", "bm25"}


def test_agreement_alone_filters_the_pool_for_the_configured_strategy(tmp_path, tiny_cross_encoder):
    teachers = f"ensemble.teachers=['bm25', {_teacher(tiny_cross_encoder, 'ce')}]"
    plain = negmine.mine(None, _over(tmp_path, "sample.strategy='top'"))
    agreed = negmine.mine(None, _over(tmp_path, teachers, "ensemble.agreement=true", "sample.strategy='top'"))
    assert agreed.stages["exclude"].key == plain.stages["exclude"].key  # the filter is not an exclude setting
    a = _stage_table(agreed, "sample", "negatives.parquet")
    p = _stage_table(plain, "sample", "negatives.parquet")
    assert a.num_rows < p.num_rows
    assert set(zip(a["query_id"].to_pylist(), a["doc_id"].to_pylist())) - set(
        zip(_stage_table(agreed, "exclude", "kept.parquet")["query_id"].to_pylist(),
            _stage_table(agreed, "exclude", "kept.parquet")["doc_id"].to_pylist())) == set()
    assert agreed.stages["sample"].stats["agreement"]["dropped"] > 0
    assert not (agreed.stages["sample"].path / "negative_teachers.parquet").exists()


def test_a_teacher_added_later_reuses_the_other_teachers_pair_stores(tmp_path, tiny_cross_encoder, monkeypatch):
    scored = count_teacher_pairs(monkeypatch)
    ce = _teacher(tiny_cross_encoder, "ce")
    first = negmine.mine(None, _over(tmp_path, f"ensemble.teachers=[{ce}, 'bm25']", "ensemble.sampling='cross'"))
    n_first = first.stages["teachers"].stats["teachers"]["ce"]["distinct_pairs"]
    assert sum(scored) == n_first
    scored.clear()
    logit = _teacher(tiny_cross_encoder, "ce-logit", activation="logit")  # another store: other scores
    second = negmine.mine(None, _over(tmp_path, f"ensemble.teachers=[{ce}, 'bm25', {logit}]",
                                      "ensemble.sampling='cross'"))
    stats = second.stages["teachers"].stats["teachers"]
    assert stats["ce"]["scored_now"] == 0 and stats["ce"]["from_store"] == n_first
    assert sum(scored) == stats["ce-logit"]["scored_now"] == stats["ce-logit"]["distinct_pairs"]
    assert second.stages["retrieve"].status == "cached" and second.stages["exclude"].status == "cached"
    # the same model as the single [score] teacher shares the store too
    scored.clear()
    single = negmine.mine(None, _over(tmp_path, f"score.teacher='{tiny_cross_encoder}'"))
    assert scored == [] and single.stages["score"].stats["scored_now"] == 0


def test_changing_the_sampling_or_the_alpha_reuses_the_teachers_scores(tmp_path, tiny_cross_encoder):
    teachers = f"ensemble.teachers=['bm25', {_teacher(tiny_cross_encoder, 'ce')}]"
    a = negmine.mine(None, _over(tmp_path, teachers, "ensemble.sampling='cross'"))
    b = negmine.mine(None, _over(tmp_path, teachers, "ensemble.sampling='intra'", "ensemble.agreement=true"))
    c = negmine.mine(None, _over(tmp_path, teachers, "ensemble.sampling='intra'", "ensemble.agreement=true",
                                 "ensemble.agreement_alpha=0.5"))
    assert b.stages["teachers"].status == c.stages["teachers"].status == "cached"
    assert len({a.stages["sample"].key, b.stages["sample"].key, c.stages["sample"].key}) == 3
    again = negmine.mine(None, _over(tmp_path, teachers, "ensemble.sampling='cross'"))
    assert again.stages["sample"].status == "cached"
    assert (_stage_table(again, "sample", "negatives.parquet").equals(_stage_table(a, "sample", "negatives.parquet")))


def test_a_config_runs_one_sample_stage_the_plain_one_unchanged_without_teachers():
    from negmine import sample
    from negmine.config import load_config
    from negmine.pipeline import plan
    from negmine.stage import Context

    ctx = Context(Path("/nonexistent"), lambda p: "fp")
    cfg = load_config(None, [f"input.path='{SAMPLE}'"])
    [alone] = [s for s in plan(cfg) if s.name == "sample"]
    assert alone.params(cfg, ctx) == sample.STAGE.params(cfg, ctx)  # so its cache key is what it was
    assert alone.reads(cfg) == sample.STAGE.reads(cfg) and alone.version == sample.STAGE.version
    assert "teachers" not in [s.name for s in plan(cfg)]
    cfg = load_config(None, [f"input.path='{SAMPLE}'", "ensemble.teachers=['bm25']", "ensemble.agreement=true"])
    [ens] = [s for s in plan(cfg) if s.name == "sample"]
    assert "teachers" in ens.reads(cfg) and ens.params(cfg, ctx)["teachers"] == ["bm25"]
    assert [s.name for s in plan(cfg)].index("teachers") < [s.name for s in plan(cfg)].index("sample")


# ---------------------------------------------------------------------------------------- bad settings


@pytest.mark.parametrize("settings,fragment", [
    (["ensemble.teachers=['bm25','splade']"], "'splade'"),
    (["ensemble.teachers=['bm25','dense']", "ensemble.sampling='cross'"], "not among [retrieve] retrievers"),
    (["ensemble.sampling='cross'"], "needs teachers"),
    (["ensemble.agreement=true"], "needs teachers"),
    (["ensemble.teachers=['bm25']"], "nothing uses them"),
    (["ensemble.teachers=['bm25','bm25']", "ensemble.sampling='cross'"], "twice"),
    (["ensemble.teachers=['teacher']", "ensemble.sampling='cross'"], "no [score] teacher"),
    (["ensemble.teachers=[{model='x', colour='red'}]", "ensemble.sampling='cross'"], "unknown key 'colour'"),
    (["ensemble.teachers=[{name='a'}]", "ensemble.sampling='cross'"], "has no model"),
    (["ensemble.teachers=[{model='x', max_length=-1}]", "ensemble.sampling='cross'"], "max_length"),
    (["ensemble.teachers=[{model='x', kind='llm'}]", "ensemble.sampling='cross'"], "kind is 'llm'"),
    (["ensemble.teachers=[{model='x', name='doc_id'}]", "ensemble.sampling='cross'"], "'doc_id'"),
    (["ensemble.teachers=7"], "must be a list"),
    (["ensemble.teachers=['bm25']", "ensemble.sampling='both'"], "choose one of none, cross, intra"),
    (["ensemble.teachers=['bm25']", "ensemble.agreement=true", "ensemble.agreement_alpha=nan"], "finite"),
    (["ensemble.teachers=['bm25']", "ensemble.agreement=true", "ensemble.agreement_alpha=1.5"], "in [0, 1]"),
    (["ensemble.teachers=['bm25']", "ensemble.agreement=true", "ensemble.agreement_alpha=-inf"], "finite"),
    (["ensemble.teachers=['bm25']", "ensemble.sampling='intra'", "sample.strategy='softmax'"], "must be \"top\""),
    (["ensemble.teachers=['bm25']", "ensemble.sampling='cross'", "sample.shortage='pad-random'"], "pad-random"),
    (["ensemble.teachers=[{model='/nonexistent/model'}]", "ensemble.sampling='cross'"], "neither a local folder"),
])
def test_a_bad_ensemble_setting_is_refused_in_one_line_before_any_work(tmp_path, settings, fragment):
    args = ["run", "-i", str(SAMPLE), "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "-q"]
    result = CliRunner().invoke(app, [*args, *sum((["--set", s] for s in settings), [])])
    err = result.stderr.strip()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "\n" not in err and err.startswith("error:") and "Traceback" not in result.output, err
    assert fragment in err, err
    assert not (tmp_path / "out").exists()
    assert not any((tmp_path / "cache").glob("*/*/meta.json"))  # no stage entry written


@pytest.mark.parametrize("strategy", ["random", "softmax", "simans", "top1-random"])
def test_cross_sampling_with_a_randomised_strategy_draws_from_the_keyed_uniforms(tmp_path, tiny_cross_encoder,
                                                                                  strategy):
    """The [sample] strategy under cross-sampling draws from the candidates' keyed uniforms, as the plain stage
    does (they were not handed over, and every randomised strategy failed)."""
    from negmine.hashing import seed_for
    from negmine.samplers.keys import uniforms

    teachers = f"ensemble.teachers=['bm25', {_teacher(tiny_cross_encoder, 'ce')}]"
    result = negmine.mine(None, _over(tmp_path, teachers, "ensemble.sampling='cross'",
                                      f"sample.strategy='{strategy}'", "sample.rank_max=15"))
    negs = _stage_table(result, "sample", "negatives.parquet").to_pandas()
    assert len(negs) > 0 and not negs.duplicated(["query_id", "doc_id"]).any()
    if strategy == "random":  # uniform: each query's 3 smallest keyed uniforms among its eligible candidates
        kept = _stage_table(result, "exclude", "kept.parquet").to_pandas()
        kept = kept[(kept["relax_level"] == 0) & (kept["rank"] <= 15)]
        for qid, group in kept.groupby("query_id"):
            u = uniforms(seed_for(42, qid), group["doc_id"].tolist())
            assert set(negs[negs["query_id"] == qid]["doc_id"]) == set(group["doc_id"].to_numpy()[np.argsort(u)[:3]])


def test_the_ensemble_sampler_reads_the_pool_in_chunks_and_writes_the_same_data(tmp_path, tiny_cross_encoder,
                                                                                monkeypatch):
    """Bounded memory: the teachers score the candidates a chunk at a time, the sampler reads the pool and their
    scores a few rows at a time (a query never split, one longer than a chunk carried whole), and every mode
    writes what one chunk writes."""
    import shutil

    import negmine.samplers.ensemble as ensemble
    import negmine.score as score

    teachers = f"ensemble.teachers=['bm25', {_teacher(tiny_cross_encoder, 'ce')}]"
    modes = {"cross": ["ensemble.sampling='cross'", "sample.strategy='softmax'"],
             "intra": ["ensemble.sampling='intra'", "ensemble.agreement=true", "ensemble.agreement_alpha=0.99"],
             "none": ["ensemble.sampling='none'", "ensemble.agreement=true", "sample.strategy='random'"]}
    seen: dict[str, tuple] = {}
    for rows in (1 << 16, 1, 7, 45):  # 45: several queries a chunk (top_k 20), cut mid-query
        monkeypatch.setattr(ensemble, "CHUNK_ROWS", rows)
        monkeypatch.setattr(score, "TEACHER_CHUNK_ROWS", rows)
        for mode, extra in modes.items():
            for stage in ("teachers", "sample"):
                shutil.rmtree(tmp_path / "cache" / stage, ignore_errors=True)
            result = negmine.mine(None, _over(tmp_path, teachers, *extra))
            st = result.stages["sample"]
            assert st.status != "cached" and result.stages["teachers"].status != "cached"
            data = {p.name: pq.read_table(p).combine_chunks().to_pydict()
                    for stage in ("teachers", "sample") for p in sorted(result.stages[stage].path.glob("*.parquet"))}
            got = (data, st.stats, (tmp_path / "out" / "triplet.jsonl").read_bytes())
            seen.setdefault(mode, got)
            assert got == seen[mode], (rows, mode)
            if rows == 7:  # the work was cut: one query (about 19 candidates) a chunk
                assert pq.ParquetFile(st.path / "negatives.parquet").num_row_groups > 5
    assert seen["intra"][1]["agreement"]["dropped"] > 0 and seen["none"][1]["agreement"]["dropped"] > 0
