"""`negmine eval`: recall, measured false negatives with held-out positives, hardness."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
from typer.testing import CliRunner

import negmine
from negmine.cli import app
from negmine.evaluate import bootstrap_ci, evaluate
from conftest import ROOT, SAMPLE, write_beir

runner = CliRunner()


def test_held_out_positives_are_hidden_from_the_miner_and_counted_when_mined(tmp_path):
    # q has four positives that all look alike; hiding half of them, the miner is bound to return them
    docs = [{"_id": f"p{i}", "text": f"rotor blade flutter measurement {i}"} for i in range(4)]
    docs += [{"_id": f"n{i}", "text": f"rotor noise item {i}"} for i in range(6)]
    data = write_beir(tmp_path / "d", docs, [{"_id": "q", "text": "rotor blade flutter"}],
                      [("q", f"p{i}", 1) for i in range(4)])
    over = [f"input.path='{data}'", f"run.cache_dir='{tmp_path / 'c'}'", f"export.dir='{tmp_path / 'o'}'",
            "input.holdout_frac=0.5", "retrieve.top_k=10", "sample.num_negatives=3", "export.formats=['ids']"]
    result = negmine.mine(None, over)
    hidden = pq.read_table(result.stages["ingest"].path / "holdout.parquet").to_pylist()
    assert len(hidden) == 2 and result.stages["ingest"].stats["held_out_positives"] == 2
    ev = evaluate(tmp_path / "o")
    fn = ev["false_negatives"]
    assert fn["held_out_positives"] == 2 and fn["false_negatives"] == 2
    assert fn["rate_among_negatives"] == 2 / 3
    assert ev["candidate_recall"]["recall"] == 1.0  # hidden ones count among the positives to find
    negs = pq.read_table(tmp_path / "o" / "ids.parquet").to_pylist()[0]["negative_ids"]
    assert {h["doc_id"] for h in hidden} <= set(negs)


def test_holdout_is_seeded_and_keeps_at_least_one_positive(tmp_path):
    docs = [{"_id": f"d{i}", "text": f"doc {i} words"} for i in range(10)]
    qrels = [("a", "d0", 1), ("a", "d1", 1), ("b", "d2", 1), ("c", "d3", 1), ("c", "d4", 1), ("c", "d5", 1)]
    data = write_beir(tmp_path / "d", docs, [{"_id": q, "text": f"query {q} doc"} for q in "abc"], qrels)

    def hidden(seed):
        r = negmine.mine(None, [f"input.path='{data}'", f"run.cache_dir='{tmp_path / 'c'}'",
                                "input.holdout_frac=0.9", f"input.holdout_seed={seed}"], until="ingest")
        return sorted((h["query_id"], h["doc_id"]) for h in
                      pq.read_table(r.stages["ingest"].path / "holdout.parquet").to_pylist())

    h = hidden(0)
    assert h == hidden(0)
    assert [q for q, _ in h] == ["a", "c", "c"]  # b has one positive; a keeps one, c keeps one
    assert any(hidden(s) != h for s in range(1, 6))


def test_eval_command_on_a_config_writes_json_and_a_table(tmp_path, tiny_bi_encoders):
    shutil.copytree(SAMPLE, tmp_path / "data" / "sample")
    (tmp_path / "configs").mkdir()
    cfg = tmp_path / "configs" / "s.toml"
    cfg.write_text((ROOT / "configs" / "sample-bm25.toml").read_text())
    result = runner.invoke(app, ["eval", str(cfg), "--holdout-frac", "0.3", "-q",
                                 "--eci-model", str(tiny_bi_encoders[0])])
    assert result.exit_code == 0, result.output
    assert "false negatives:" in result.stdout and "candidate recall:" in result.stdout
    assert "ECI (" in result.stdout
    out = tmp_path / "out" / "sample-bm25-holdout0.3"
    data = json.loads((out / "eval.json").read_text())
    fn = data["false_negatives"]
    assert fn["false_negatives"] == sum(q["false_negatives"] for q in fn["per_query"])
    assert 0 <= fn["rate_among_negatives_ci95"][0] <= fn["rate_among_negatives"] <= fn["rate_among_negatives_ci95"][1]
    eci = data["eci"]  # every mined query with a known positive is scored, its negatives all counted
    assert eci["model"] == str(tiny_bi_encoders[0]) and eci["queries"] + eci["queries_without_scale"] > 0
    assert 0 <= eci["eci"] <= np.log2(1 + 5)  # at most 5 negatives a query, each worth at most 1
    assert not (tmp_path / "out" / "sample-bm25").exists()  # the holdout run never overwrites the real outputs
    again = runner.invoke(app, ["eval", str(out), "--qrels", str(SAMPLE / "qrels" / "train.tsv"), "--no-eci"])
    assert again.exit_code == 0 and "candidate recall:" in again.stdout and "ECI" not in again.stdout
    assert "eci" not in json.loads((out / "eval.json").read_text())
    bad = runner.invoke(app, ["eval", str(tmp_path)])
    assert bad.exit_code == 2 and "run.json" in bad.stderr


def test_bootstrap_interval_covers_the_ratio():
    num = np.array([1, 0, 2, 0, 1, 0, 0, 3], dtype=float)
    den = np.array([5, 5, 5, 5, 5, 5, 5, 5], dtype=float)
    lo, hi = bootstrap_ci(num, den)
    assert lo <= num.sum() / den.sum() <= hi and 0 <= lo < hi <= 1


def test_holdout_eval_is_an_api_function_and_takes_any_output_path(tmp_path):
    from negmine.evaluate import evaluate_run

    docs = [{"_id": f"p{i}", "text": f"rotor blade flutter measurement {i}"} for i in range(4)]
    docs += [{"_id": f"n{i}", "text": f"rotor noise item {i}"} for i in range(6)]
    data = write_beir(tmp_path / "d", docs, [{"_id": "q", "text": "rotor blade flutter"}],
                      [("q", f"p{i}", 1) for i in range(4)])
    out = tmp_path / "it's \"odd\""  # both quote characters: no TOML text is built from it
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[input]\npath = {json.dumps(str(data))}\n[export]\ndir = {json.dumps(str(out))}\n"
                   "formats = ['ids']\n[retrieve]\ntop_k = 10\n[sample]\nnum_negatives = 3\n")
    folder, result = evaluate_run(cfg, holdout_frac=0.5, overrides=["sample.seed=3"], cache_dir=tmp_path / "cache")
    assert folder == tmp_path / "it's \"odd\"-holdout0.5" and (folder / "ids.parquet").is_file()
    assert not out.exists()  # never over the config's own outputs
    assert result["false_negatives"]["held_out_positives"] == 2
    assert json.loads((folder / "provenance.json").read_text())["config"]["sample"]["seed"] == 3


def test_eci_of_a_run_matches_the_score_computed_from_its_texts(tmp_path, tiny_bi_encoders):
    """negmine eval's ECI is eci_from_texts over (query, known positives, sampled negatives) of every mined
    query, with the same seeded random documents: no query or negative is lost on the way."""
    from sentence_transformers import SentenceTransformer

    from negmine import tables
    from negmine.eci import RANDOM_DOCS, eci_from_texts
    from negmine.evaluate import eci_of_run

    over = [f"input.path='{SAMPLE}'", f"run.cache_dir='{tmp_path / 'c'}'", f"export.dir='{tmp_path / 'o'}'",
            "export.formats=['ids']", "bm25.stemmer='english'"]
    r = negmine.mine(None, over)
    stages = {k: v.path for k, v in r.stages.items()}
    got = eci_of_run(stages, str(tiny_bi_encoders[0]))
    ids = pq.read_table(tmp_path / "o" / "ids.parquet").to_pylist()
    texts = tables.Texts(stages["ingest"])
    corpus = tables.doc_ids(stages["ingest"]).to_pylist()
    row = {d: i for i, d in enumerate(corpus)}
    by_query = tables.positives_by_query(stages["ingest"])
    negs = {}
    for rec in ids:
        negs.setdefault(rec["query_id"], set()).update(rec["negative_ids"])
    groups = [(texts.queries[q], texts.docs(rows), texts.docs(sorted(row[d] for d in negs.get(q, ()))))
              for q, (_, rows) in sorted(by_query.items())]
    rand = sorted(np.random.default_rng(0).choice(len(corpus), size=min(RANDOM_DOCS, len(corpus)),
                                                  replace=False).tolist())
    want = eci_from_texts(SentenceTransformer(str(tiny_bi_encoders[0]), device="cpu"), groups, texts.docs(rand))
    assert got["queries"] + got["queries_without_scale"] == len(by_query)  # every mined query is considered
    assert {k: v for k, v in got.items() if k != "model"} == want
