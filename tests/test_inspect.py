"""`negmine inspect RUN QUERY_ID`: every candidate of a query with a reason, matching what the run exported."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from negmine.cli import app
from negmine.config import load_config
from negmine.pipeline import mine
from negmine.story import Run

OUTCOMES = {"sampled", "not sampled", "excluded", "removed"}


def _mine(tmp_path: Path, overrides: list[str]) -> tuple[Path, dict]:
    cfg = load_config(None, overrides)
    result = mine(cfg, cache_dir=tmp_path / "cache")
    return Path(cfg["export"]["dir"]), result.stages


# filters, rank window, shortage policies: each path a candidate can take
CASES = {
    "top": [],
    "filters-window": ["filter.method='perc-pos'", "filter.positive_score='max'", "filter.skip_top=2",
                       "filter.max_score=9.0", "sample.rank_min=3", "sample.rank_max=40"],
    "relax": ["filter.method='margin-pos'", "filter.margin=1.0", "filter.positive_score='max'",
              "filter.relax_steps=3", "filter.relax_step=0.2", "sample.shortage='relax'", "sample.rank_max=20"],
    "drop-random": ["sample.strategy='random'", "sample.num_negatives=12", "sample.rank_max=15",
                    "sample.shortage='drop'", "filter.method='perc-pos'", "filter.positive_score='max'"],
    "pad-random": ["sample.num_negatives=8", "sample.rank_max=10", "sample.shortage='pad-random'"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_candidate_has_a_reason_and_the_sampled_ones_are_the_exported_negatives(case, tmp_path,
                                                                                    sample_overrides):
    out, stages = _mine(tmp_path, sample_overrides + CASES[case])
    run = Run(out)
    exported = {r["query_id"]: r["negative_ids"] for r in pq.read_table(out / "ids.parquet").to_pylist()}
    candidates = pq.read_table(stages["retrieve"].path / "candidates.parquet",
                               columns=["query_id", "doc_id", "rank"]).to_pylist()
    by_query: dict[str, list[tuple[int, str]]] = {}
    for r in candidates:
        by_query.setdefault(r["query_id"], []).append((r["rank"], r["doc_id"]))
    removed: dict[str, int] = {}
    for st in run.stories(sorted(exported)):
        retrieved = [c for c in st.candidates if c.rank is not None]
        # every retrieved candidate, once, in rank order
        assert [(c.rank, c.doc_id) for c in retrieved] == sorted(by_query.get(st.query_id, []))
        for c in st.candidates:
            assert c.outcome in OUTCOMES and c.reason and c.code
            if c.outcome in ("excluded", "removed"):
                removed[c.code] = removed.get(c.code, 0) + 1
        # the sampled ones are exactly the exported negatives (pad-random fillers included), in order
        assert [c.doc_id for c in st.candidates if c.outcome == "sampled"] == exported[st.query_id]
    # and the removals add up to the exclude stage's counts (each candidate charged to one reason)
    stats = stages["exclude"].stats
    expected = {k: v for k, v in {**stats["excluded"], **stats["filtered"]}.items() if v}
    if case == "relax":  # rows the relaxed filter let back in are counted as filtered there, sampled here
        assert sum(removed.values()) <= sum(expected.values())
    else:
        assert removed == expected
    if case == "filters-window":
        assert {"perc-pos", "skip_top", "score_window", "positive"} <= set(removed)
        reasons = {c.reason for st in run.stories(sorted(exported)[:10]) for c in st.candidates}
        assert any("alpha = 0.95" in r for r in reasons) and any("skip_top = 2" in r for r in reasons)
        assert any("rank window" in r for r in reasons)
    if case == "drop-random":
        assert any("query_dropped" == c.code for st in run.stories(sorted(exported)) for c in st.candidates)
    if case == "pad-random":
        assert any(c.code == "pad-random" for st in run.stories(sorted(exported)) for c in st.candidates)


def test_inspect_prints_every_candidate_of_the_query_with_its_outcome(tmp_path, sample_overrides):
    out, stages = _mine(tmp_path, sample_overrides + ["filter.method='perc-pos'", "filter.positive_score='max'"])
    qid = pq.read_table(out / "ids.parquet").to_pylist()[0]["query_id"]
    res = CliRunner().invoke(app, ["inspect", str(out), qid])
    assert res.exit_code == 0, res.output
    cand = pq.read_table(stages["retrieve"].path / "candidates.parquet", columns=["query_id", "doc_id"]).to_pylist()
    docs = [r["doc_id"] for r in cand if r["query_id"] == qid]
    rows = [line.split() for line in res.stdout.splitlines() if line.startswith("  ") and len(line.split()) > 2
            and line.split()[2].rstrip(":") in ("SAMPLED", "EXCLUDED", "REMOVED", "NOT")]
    assert sorted(r[1] for r in rows) == sorted(docs)
    assert f"query {qid}:" in res.stdout and "positives (" in res.stdout


def test_inspect_refuses_an_unknown_query_or_folder_in_one_line(tmp_path, sample_overrides):
    out, _ = _mine(tmp_path, sample_overrides)
    runner = CliRunner()
    for args, words in ((["inspect", str(out), "no-such-query"], "not in this run's queries"),
                        (["inspect", str(tmp_path), "1"], "no run.json")):
        res = runner.invoke(app, args)
        assert res.exit_code == 2
        assert len(res.stderr.strip().splitlines()) == 1 and words in res.stderr and "Traceback" not in res.output
    # a run whose cache was cleared: one line naming what to do
    run_json = json.loads((out / "run.json").read_text())
    (Path(run_json["stages"]["exclude"]) / "meta.json").unlink()
    res = runner.invoke(app, ["inspect", str(out), "1"])
    assert res.exit_code == 2 and "run `negmine run` again" in res.stderr


def test_inspect_shows_the_teachers_scores_and_its_thresholds(tmp_path, sample_overrides, tiny_cross_encoder):
    """With a teacher: its score for every candidate and positive, and the RocketQA threshold in the reason."""
    base = sample_overrides + [f"score.teacher='{tiny_cross_encoder}'", "score.precision='fp32'", "retrieve.top_k=20"]
    _, first = _mine(tmp_path, base)
    # the tiny random teacher's probabilities all sit near 0.5: cut at their median (the scores come from cache)
    cut = float(np.median(pq.read_table(first["score"].path / "candidates.parquet")["teacher_score"].to_numpy()))
    out, stages = _mine(tmp_path, base + [f"filter.ce_max_probability={cut!r}"])
    exported = {r["query_id"]: r["negative_ids"] for r in pq.read_table(out / "ids.parquet").to_pylist()}
    teacher = {(r["query_id"], r["doc_id"]): r["teacher_score"] for r in
               pq.read_table(stages["score"].path / "candidates.parquet").to_pylist()}
    stories = list(Run(out).stories(sorted(exported)))
    for st in stories:
        assert [c.doc_id for c in st.candidates if c.outcome == "sampled"] == exported[st.query_id]
        assert all(c.teacher_score == teacher[(st.query_id, c.doc_id)] for c in st.candidates)
        assert all(p.teacher_score is not None for p in st.positives)
    removed = [c for st in stories for c in st.candidates if c.code == "ce_absolute"]
    assert len(removed) == stages["exclude"].stats["filtered"]["ce_absolute"] > 0
    assert all(f"ce_max_probability = {cut!r}" in c.reason and c.teacher_score >= cut for c in removed)
