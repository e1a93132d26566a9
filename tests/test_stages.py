"""The stage contract: keys come from exactly the parameters a stage is handed, the stage list is data, stage
modules do not import each other, and a sampler, filter or format defined in one file joins the whole program."""
from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import sys
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import negmine
from negmine import pipeline
from negmine.errors import ConfigError
from negmine.stage import Params, thaw

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


def _over(tmp_path: Path, *extra: str) -> list[str]:
    return [f"input.path='{SAMPLE}'", f"run.cache_dir='{tmp_path / 'c'}'", f"export.dir='{tmp_path / 'o'}'",
            "export.formats=['ids']", "retrieve.top_k=30", *extra]


def test_stage_params_are_frozen_and_refuse_a_name_they_were_not_given():
    p = Params({"top_k": 10, "formats": ["ids"], "nested": {"a": 1}}, "sample")
    with pytest.raises(TypeError, match="frozen"):
        p["top_k"] = 11
    with pytest.raises(TypeError, match="frozen"):
        p.top_k = 11
    with pytest.raises(TypeError, match="frozen"):
        del p["top_k"]
    with pytest.raises(TypeError):
        p["nested"]["a"] = 2  # frozen all the way down
    assert p["formats"] == ("ids",)  # a list is handed over as a tuple: no append behind the key's back
    with pytest.raises(KeyError, match="'seed' is not a parameter of stage 'sample'"):
        p["seed"]
    assert thaw(p) == {"top_k": 10, "formats": ["ids"], "nested": {"a": 1}}


def _recording(monkeypatch) -> dict[str, Params]:
    """Run every stage through a wrapper that records the parameters object it is handed."""
    handed: dict[str, Params] = {}
    real_plan = pipeline.plan

    def plan(cfg, until="export"):
        out = []
        for stage in real_plan(cfg, until):
            def run(inputs, params, out_dir, stage=stage):
                handed[stage.name] = params
                return stage.run(inputs, params, out_dir)
            out.append(dataclasses.replace(stage, run=run))
        return out

    monkeypatch.setattr(pipeline, "plan", plan)
    return handed


def test_every_stage_key_is_computed_from_exactly_the_params_it_is_handed(tmp_path, monkeypatch):
    handed = _recording(monkeypatch)
    result = negmine.mine(None, _over(tmp_path, "filter.method='perc-pos'", "sample.strategy='softmax'"))
    declared = {s.name: s for s in pipeline.stages()}
    assert set(handed) == set(result.stages) == {"ingest", "index", "retrieve", "exclude", "sample", "export"}
    for name, params in handed.items():
        recorded = json.loads((result.stages[name].path / "meta.json").read_text())["params"]
        stage = declared[name]
        assert recorded == json.loads(json.dumps(stage.key_params(params), default=str)), name
        assert set(params) - set(recorded) == set(stage.unkeyed), name  # left out only where declared, with why
        assert all(reason for reason in stage.unkeyed.values())
    # the sampler's own setting is in the sample key only because softmax reads it
    assert "temperature" in handed["sample"] and "simans_a" not in handed["sample"]
    assert "chunk_size" in handed["retrieve"] and "chunk_size" not in json.loads(
        (result.stages["retrieve"].path / "meta.json").read_text())["params"]


def test_a_stage_cannot_read_a_setting_outside_its_key_nor_change_one(tmp_path, monkeypatch):
    from negmine import sample as sample_mod

    real = sample_mod.sample

    def reads_temperature(params, *args):
        params["temperature"]  # the top strategy takes no temperature: it is not in the key, so not readable
        return real(params, *args)

    monkeypatch.setattr(sample_mod, "sample", reads_temperature)
    with pytest.raises(KeyError, match="'temperature' is not a parameter of stage 'sample'"):
        negmine.mine(None, _over(tmp_path))

    def changes_seed(params, *args):
        params["seed"] = 7
        return real(params, *args)

    monkeypatch.setattr(sample_mod, "sample", changes_seed)
    with pytest.raises(TypeError, match="frozen"):
        negmine.mine(None, _over(tmp_path))
    assert not list((tmp_path / "c" / "sample").glob("*/meta.json"))  # no entry from either attempt


def _imports(path: Path) -> set[str]:
    """Every module a source file imports, lazily inside functions included."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_no_stage_module_imports_another_stage_module():
    modules = {s.run.__module__ for s in pipeline.stages()}
    assert {"negmine.ingest", "negmine.retrievers.bm25", "negmine.retrievers.dense", "negmine.retrievers.sparse",
            "negmine.retrievers.pool", "negmine.score", "negmine.filters.exclude", "negmine.sample",
            "negmine.export"} <= modules
    for module in modules:
        path = Path(importlib.import_module(module).__file__)
        wrong = (_imports(path) & modules) - {module}
        assert not wrong, f"{module} imports the stage module(s) {wrong}"


def test_the_stage_list_is_data_in_pipeline_order():
    names = [s.name for s in pipeline.stages()]
    assert names == ["ingest", "index", "encode", "ann", "sparse-encode", "sparse-index", "retrieve-bm25",
                     "retrieve-dense", "retrieve-sparse", "retrieve", "score", "teachers", "exclude", "judge-pool",
                     "sample", "sample", "judge", "cluster", "export"]
    # sample: plain, or with [ensemble] teachers (negmine.samplers.ensemble); a config enables one
    assert [s.command for s in pipeline.stages()] == sorted((s.command for s in pipeline.stages()),
                                                           key=pipeline.STAGES.index)
    cfg = negmine.load_config(None, ["retrieve.retrievers=['bm25','dense']", "dense.index='hnsw'"])
    assert [s.name for s in pipeline.plan(cfg, "retrieve")] == ["ingest", "index", "encode", "ann", "retrieve-bm25",
                                                                "retrieve-dense", "retrieve"]


# Three plugins, each one file, registered by being imported: what a user writes to add a sampler, filter, format.
PLUGINS = {
    "plugin_bottom_sampler": '''
import numpy as np
from negmine.samplers import Sampler, register

def sample_bottom(ranks, scores, n, rng, opts):
    """The n worst-ranked eligible candidates, skipping the `bottom_skip` very worst."""
    order = np.argsort(-ranks, kind="stable")[opts["bottom_skip"]:]
    return order[:n]

register(Sampler("bottom", sample_bottom, options={"bottom_skip": 0}, help="the worst-ranked candidates"))
''',
    "plugin_half_filter": '''
from negmine.filters import Filter, register

register(Filter("under-ratio", lambda s, s_pos, ratio: s < s_pos * ratio, option="ratio", default=0.5,
                accepts=("bm25",), relax=lambda v, step, level: v + step * level, help="keep s < ratio x s_pos"))
''',
    "plugin_count_format": '''
import pyarrow as pa
from negmine.formats import Format, register

register(Format("neg-count", lambda o: pa.schema([("query_id", pa.string()), ("negatives", pa.int64())]),
                lambda q, o, out, skipped: (out["query_id"].append(q.qid), out["negatives"].append(len(q.neg_texts))),
                every_query=True, help="negatives per mined query"))
''',
}


RETRIEVER_PLUGIN = {"plugin_overlap_retriever": '''
import numpy as np
from negmine import tables
from negmine.retrieve import write_candidates, write_positive_scores
from negmine.retrievers import Retriever, register, search_stage
from negmine.stage import reads

def words(text):
    return set(text.lower().split())

def retrieve_overlap(inputs, params, out_dir):
    """Documents ranked by the number of words they share with the query (at least `min_shared`)."""
    docs = [words(t) for t in tables.iter_doc_texts(inputs["ingest"])]
    queries = tables.mined_queries(inputs["ingest"])

    def search(a, b, part):
        s = np.array([[len(words(q) & d) for d in docs] for q in part["text"].to_pylist()], dtype=np.float32)
        s[s < params["min_shared"]] = -np.inf
        top = np.argsort(-s, axis=1, kind="stable")[:, :params["top_k"]]
        return top, np.take_along_axis(s, top, 1)

    stats = write_candidates(queries, inputs["ingest"], search, "overlap", params["chunk_size"],
                             out_dir / "candidates.parquet")
    q, d, rows, qpos = tables.positive_pairs(inputs["ingest"], queries["query_id"].combine_chunks())
    texts = queries["text"].to_pylist()
    scores = np.array([len(words(texts[i]) & docs[r]) for i, r in zip(qpos, rows)], dtype=np.float32)
    write_positive_scores(out_dir / "positive_scores.parquet", q, d, rows, scores, "overlap")
    return {**stats, "score_type": "overlap"}

register(Retriever(
    "overlap", section="overlap", stages=(), score_type=lambda cfg: "overlap", defaults={"min_shared": 1},
    search=search_stage("overlap", "1", reads("ingest"),
                        lambda cfg, ctx: {"top_k": cfg["retrieve"]["top_k"], "chunk_size": cfg["retrieve"]["chunk_size"],
                                          **cfg["overlap"]},
                        retrieve_overlap)))
'''}


@pytest.fixture
def plugins(tmp_path):
    from negmine.filters import FILTERS
    from negmine.formats import FORMATS
    from negmine.retrievers import RETRIEVERS
    from negmine.samplers import SAMPLERS

    saved = [(reg, dict(reg)) for reg in (SAMPLERS, FILTERS, FORMATS, RETRIEVERS)]
    folder = tmp_path / "plugins"
    folder.mkdir()
    files = {**PLUGINS, **RETRIEVER_PLUGIN}
    for name, source in files.items():
        (folder / f"{name}.py").write_text(source)
    sys.path.insert(0, str(folder))
    try:
        for name in files:
            importlib.import_module(name)
        yield
    finally:
        sys.path.remove(str(folder))
        for name in files:
            sys.modules.pop(name, None)
        for reg, before in saved:
            reg.clear()
            reg.update(before)


def test_a_sampler_filter_and_format_each_in_one_file_mine_end_to_end(tmp_path, plugins):
    from negmine.cli import app

    over = _over(tmp_path, "sample.strategy='bottom'", "sample.bottom_skip=1", "filter.method='under-ratio'",
                 "filter.ratio=0.9", "export.formats=['neg-count','ids']", "sample.num_negatives=3")
    # the config learns their names, settings and defaults, and checks their types
    cfg = negmine.load_config(None, over)
    assert cfg["sample"]["bottom_skip"] == 1 and cfg["filter"]["ratio"] == 0.9
    assert negmine.load_config(None, _over(tmp_path, "filter.method='under-ratio'"))["filter"]["ratio"] == 0.5
    with pytest.raises(ConfigError, match="bottom_skip must be an integer"):
        negmine.load_config(None, _over(tmp_path, "sample.bottom_skip='x'"))
    # and what score types the filter accepts: a probability teacher's scores are not BM25's
    with pytest.raises(ConfigError, match="'under-ratio' would compare against probability scores"):
        negmine.load_config(None, over + ["score.teacher='some-teacher'"])
    help_text = CliRunner().invoke(app, ["run", "--help"]).stdout
    assert "bottom" in help_text and "under-ratio" in help_text and "neg-count" in help_text

    result = negmine.mine(cfg)
    kept = pq.read_table(result.stages["exclude"].path / "kept.parquet").to_pylist()
    negatives = pq.read_table(result.stages["sample"].path / "negatives.parquet").to_pylist()
    assert negatives and all(r["filter_score"] < 0.9 * k["positive_score"] for r in negatives for k in kept
                             if k["query_id"] == r["query_id"] and k["doc_id"] == r["doc_id"])
    assert all(k["filter_score"] < 0.9 * k["positive_score"] for k in kept)  # the filter ran at exclusion
    ranks = defaultdict(list)
    for k in kept:
        ranks[k["query_id"]].append(k["rank"])
    chosen = defaultdict(list)
    for r in negatives:
        chosen[r["query_id"]].append(r["rank"])
    for q, picked in chosen.items():
        assert sorted(picked, reverse=True) == sorted(ranks[q], reverse=True)[1:4]  # bottom 3, the very worst skipped
    counts = {r["query_id"]: r["negatives"] for r in pq.read_table(tmp_path / "o" / "neg-count.parquet").to_pylist()}
    assert {q: n for q, n in counts.items() if n} == {q: len(v) for q, v in chosen.items()}
    assert (tmp_path / "o" / "neg-count.jsonl").is_file()


def test_a_retriever_in_one_file_is_searched_alone_and_fused_with_bm25(tmp_path, plugins):
    from negmine.cli import app

    over = _over(tmp_path, "retrieve.retrievers=['overlap']", "overlap.min_shared=2")
    cfg = negmine.load_config(None, over)
    assert cfg["overlap"] == {"min_shared": 2}  # its config section, from its registry entry
    with pytest.raises(ConfigError, match="'abs' would compare against overlap scores"):
        negmine.load_config(None, over + ["filter.method='abs'"])
    assert "overlap" in CliRunner().invoke(app, ["run", "--help"]).stdout
    alone = negmine.mine(cfg)
    assert list(alone.stages) == ["ingest", "retrieve", "exclude", "sample", "export"]
    cands = pq.read_table(alone.stages["retrieve"].path / "candidates.parquet").to_pylist()
    assert cands and all(c["retriever"] == "overlap" and c["score"] >= 2 for c in cands)
    assert alone.stages["export"].stats["queries_with_negatives"] > 0
    fused = negmine.mine(None, _over(tmp_path, "retrieve.retrievers=['bm25','overlap']"))
    assert {"retrieve-bm25", "retrieve-overlap", "retrieve"} <= set(fused.stages)
    labels = {c["retriever"] for c in pq.read_table(fused.stages["retrieve"].path / "candidates.parquet").to_pylist()}
    assert {"bm25", "overlap", "bm25+overlap"} <= labels
