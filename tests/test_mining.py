"""Exclusion, sampling and export: what ends up as a negative, and in which files."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import negmine
from conftest import write_beir


def _ids(out: Path) -> dict[str, dict]:
    return {r["query_id"]: r for r in pq.read_table(out / "ids.parquet").to_pylist()}


def _qrels(folder: Path, split: str = "train", min_score: int = 1) -> dict[str, set[str]]:
    pos: dict[str, set[str]] = defaultdict(set)
    for line in (folder / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        if int(s) >= min_score:
            pos[q].add(d)
    return pos


@pytest.fixture
def trap(tmp_path: Path) -> Path:
    """A collection with every kind of false negative the exclusion must catch."""
    docs = [
        {"_id": "pos", "title": "", "text": "The cat sat on the mat near the door"},
        {"_id": "copy", "title": "", "text": "  the CAT sat on  the mat\tnear the DOOR "},  # duplicate of `pos`
        {"_id": "self", "title": "", "text": "cat on a mat"},  # the query's own text
        {"_id": "judged0", "title": "", "text": "a cat and a mat and a hat"},  # judged not relevant: may be negative
    ] + [{"_id": f"n{i}", "title": "", "text": f"cat number {i} plays with a mat and toy {i}"} for i in range(12)]
    queries = [{"_id": "q1", "text": "cat on a mat"}, {"_id": "q2", "text": "toy cat"}]
    qrels = [("q1", "pos", 1), ("q1", "judged0", 0), ("q2", "n3", 2), ("q2", "n4", 1)]
    return write_beir(tmp_path / "trap", docs, queries, qrels)


def _run(tmp_path: Path, data: Path, *extra: str, formats: str = "['ids','triplet','n-tuple','flagembedding']"):
    over = [f"input.path='{data}'", f"run.cache_dir='{tmp_path / 'cache'}'", f"export.dir='{tmp_path / 'out'}'",
            f"export.formats={formats}", "retrieve.top_k=10", *extra]
    return negmine.mine(None, over)


def test_known_positives_duplicates_and_the_query_text_are_never_negatives(tmp_path, trap):
    result = _run(tmp_path, trap, "sample.num_negatives=20")
    ids = _ids(tmp_path / "out")
    assert "pos" not in ids["q1"]["negative_ids"]
    assert "copy" not in ids["q1"]["negative_ids"]
    assert "self" not in ids["q1"]["negative_ids"]
    assert "judged0" in ids["q1"]["negative_ids"]  # a judgment of 0 is not a positive
    assert not {"n3", "n4"} & set(ids["q2"]["negative_ids"])
    excluded = pq.read_table(result.stages["exclude"].path / "excluded.parquet").to_pylist()
    reasons = {(r["query_id"], r["doc_id"]): r["reason"] for r in excluded}
    assert reasons[("q1", "pos")] == "positive"
    assert reasons[("q1", "copy")] == "duplicate_of_positive"
    assert reasons[("q1", "self")] == "query_text"
    assert result.stages["exclude"].stats["excluded"]["duplicate_of_positive"] >= 1


def test_exclusions_can_be_switched_off_but_positives_cannot(tmp_path, trap):
    _run(tmp_path, trap, "sample.num_negatives=20", "exclude.duplicates=false", "exclude.query_text=false")
    negs = _ids(tmp_path / "out")["q1"]["negative_ids"]
    assert {"copy", "self"} <= set(negs)
    assert "pos" not in negs


def test_no_known_positive_is_a_negative_on_the_sample(tmp_path, sample_overrides):
    from conftest import SAMPLE

    negmine.mine(None, sample_overrides + ["sample.strategy='random'", "sample.num_negatives=10"])
    positives = _qrels(SAMPLE)
    ids = _ids(tmp_path / "out")
    assert set(ids) == set(positives)
    for q, row in ids.items():
        assert not positives[q] & set(row["negative_ids"])
        assert set(row["positive_ids"]) == positives[q]


def test_rank_window_applies_to_raw_retrieval_ranks(tmp_path, sample_overrides):
    negmine.mine(None, sample_overrides + ["sample.rank_min=5", "sample.rank_max=20", "sample.strategy='random'"])
    for row in _ids(tmp_path / "out").values():
        assert all(5 <= r <= 20 for r in row["negative_ranks"])
        assert row["negative_ranks"] == sorted(row["negative_ranks"])


def test_top_sampling_takes_the_best_ranked_kept_candidates(tmp_path, sample_overrides):
    result = negmine.mine(None, sample_overrides)
    kept = pq.read_table(result.stages["exclude"].path / "kept.parquet").to_pylist()
    by_q: dict[str, list[int]] = defaultdict(list)
    for r in kept:
        by_q[r["query_id"]].append(r["rank"])
    for q, row in _ids(tmp_path / "out").items():
        assert row["negative_ranks"] == sorted(by_q[q])[:5]


def test_random_sampling_is_seeded_and_independent_of_chunking(tmp_path, sample_overrides):
    base = sample_overrides + ["sample.strategy='random'"]
    negmine.mine(None, base + ["sample.seed=1"])
    a = _ids(tmp_path / "out")
    negmine.mine(None, base + ["sample.seed=1", "retrieve.chunk_size=7"], no_cache=True)
    b = _ids(tmp_path / "out")
    negmine.mine(None, base + ["sample.seed=2"])
    c = _ids(tmp_path / "out")
    assert a == b
    assert a != c


def test_a_query_draw_does_not_depend_on_the_other_queries(tmp_path):
    docs = [{"_id": f"d{i}", "text": f"shared words alpha beta item {i}"} for i in range(40)]
    queries = [{"_id": "qa", "text": "alpha item"}, {"_id": "qb", "text": "beta item"}]
    both = write_beir(tmp_path / "both", docs, queries, [("qa", "d0", 1), ("qb", "d1", 1)])
    alone = write_beir(tmp_path / "alone", docs, queries[:1], [("qa", "d0", 1)])
    extra = ("sample.strategy='random'", "retrieve.top_k=30")
    _run(tmp_path / "r1", both, *extra)
    with_b = _ids(tmp_path / "r1" / "out")["qa"]
    _run(tmp_path / "r2", alone, *extra)
    assert _ids(tmp_path / "r2" / "out")["qa"] == with_b


@pytest.mark.parametrize("policy", ["keep-fewer", "drop", "pad-random"])
def test_shortage_policies(tmp_path, trap, policy):
    result = _run(tmp_path, trap, "sample.num_negatives=14", f"sample.shortage='{policy}'", "retrieve.top_k=16")
    outcomes = result.stages["sample"].stats["outcomes"]
    ids = _ids(tmp_path / "out")
    q1 = ids["q1"]["negative_ids"]
    if policy == "keep-fewer":
        assert outcomes.get("short", 0) >= 1 and 0 < len(q1) < 14
    elif policy == "drop":
        assert outcomes.get("dropped", 0) >= 1 and q1 == []
    else:
        # q1 has 13 possible negatives in the whole corpus (16 docs - pos, copy, self): padding stops there
        assert len(q1) == len(set(q1)) == 13
        assert not {"pos", "copy", "self"} & set(q1)
        assert outcomes.get("short", 0) + outcomes.get("padded", 0) >= 1


def test_pad_random_fills_from_the_corpus_and_marks_the_fillers(tmp_path):
    docs = [{"_id": f"d{i}", "text": f"topic{i % 3} words filler{i}"} for i in range(30)]
    data = write_beir(tmp_path / "d", docs, [{"_id": "q", "text": "topic0"}], [("q", "d0", 1)])
    result = _run(tmp_path, data, "sample.num_negatives=15", "sample.shortage='pad-random'")
    neg = pq.read_table(result.stages["sample"].path / "negatives.parquet").to_pylist()
    assert len(neg) == 15 and len({r["doc_id"] for r in neg}) == 15
    pads = [r for r in neg if r["source"] == "pad-random"]
    assert pads and all(r["rank"] is None for r in pads) and "d0" not in {r["doc_id"] for r in neg}
    assert result.stages["sample"].stats["outcomes"] == {"padded": 1}


def test_every_export_format_reads_back_in_parquet_and_jsonl(tmp_path, sample_overrides):
    from conftest import SAMPLE

    negmine.mine(None, sample_overrides)
    out = tmp_path / "out"
    ids = _ids(out)
    corpus = {}
    for line in (SAMPLE / "corpus.jsonl").read_text().splitlines():
        d = json.loads(line)
        corpus[d["_id"]] = f"{d['title']} {d['text']}" if d["title"] else d["text"]
    queries = {json.loads(x)["_id"]: json.loads(x)["text"] for x in (SAMPLE / "queries.jsonl").read_text().splitlines()}
    for fmt in ("triplet", "n-tuple", "flagembedding", "ids"):
        parquet_rows = pq.read_table(out / f"{fmt}.parquet").to_pylist()
        jsonl_rows = [json.loads(x) for x in (out / f"{fmt}.jsonl").read_text().splitlines()]
        assert len(parquet_rows) == len(jsonl_rows) > 0
        for p, j in zip(parquet_rows, jsonl_rows):
            assert p.keys() == j.keys()
            for k in p:
                if fmt == "ids" and k == "negative_scores":
                    assert p[k] == pytest.approx(j[k])
                else:
                    assert p[k] == j[k]
    triplets = pq.read_table(out / "triplet.parquet")
    assert triplets.column_names == ["anchor", "positive", "negative"]
    assert triplets.num_rows == sum(len(r["positive_ids"]) * len(r["negative_ids"]) for r in ids.values())
    expected = set()
    for q, r in ids.items():
        for p in r["positive_ids"]:
            for n in r["negative_ids"]:
                expected.add((queries[q], corpus[p], corpus[n]))
    assert set(map(tuple, (x.values() for x in triplets.to_pylist()))) == expected
    ntuple = pq.read_table(out / "n-tuple.parquet")
    assert ntuple.column_names == ["anchor", "positive"] + [f"negative_{i}" for i in range(1, 6)]
    fe = pq.read_table(out / "flagembedding.parquet").to_pylist()
    assert {r["query"] for r in fe} == {queries[q] for q in ids}
    row = fe[0]
    q = next(k for k, v in queries.items() if v == row["query"])
    assert row["neg"] == [corpus[n] for n in ids[q]["negative_ids"]]
    assert sorted(row["pos"]) == sorted(corpus[p] for p in ids[q]["positive_ids"])


def test_provenance_in_parquet_metadata_and_sidecar(tmp_path, sample_overrides):
    result = negmine.mine(None, sample_overrides)
    out = tmp_path / "out"
    meta = json.loads(pq.read_schema(out / "triplet.parquet").metadata[b"negmine"])
    sidecar = json.loads((out / "provenance.json").read_text())
    assert meta == sidecar
    assert sidecar["negmine_version"] == negmine.__version__
    assert sidecar["config"]["sample"]["seed"] == 42
    assert sidecar["config"]["bm25"]["stemmer"] == "english"
    assert any(k.endswith("corpus.jsonl") for k in sidecar["inputs"])
    assert sidecar["stage_keys"]["sample"] == result.stages["sample"].key
    report = json.loads((out / "report.json").read_text())
    assert report["stages"]["ingest"]["stats"]["documents"] == 500


def test_n_tuple_leaves_out_queries_with_too_few_negatives(tmp_path, trap):
    result = _run(tmp_path, trap, "sample.num_negatives=14", formats="['n-tuple','ids']")
    rows = pq.read_table(tmp_path / "out" / "n-tuple.parquet").to_pylist()
    assert all(all(r[f"negative_{i}"] for i in range(1, 15)) for r in rows)
    assert result.stages["export"].stats["queries_left_out"]["n-tuple"] >= 1


def test_pairs_input_end_to_end(tmp_path):
    rows = [{"anchor": f"question about topic {i}", "positive": f"answer on topic {i} with detail"}
            for i in range(20)]
    rows.append({"anchor": "question about topic 3", "positive": "a second answer on topic 3"})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = _run(tmp_path, path, "sample.num_negatives=3")
    assert result.stages["ingest"].stats["queries"] == 20
    assert result.stages["ingest"].stats["positives"] == 21
    fe = {r["query"]: r for r in pq.read_table(tmp_path / "out" / "flagembedding.parquet").to_pylist()}
    assert sorted(fe["question about topic 3"]["pos"]) == ["a second answer on topic 3",
                                                           "answer on topic 3 with detail"]
    for r in fe.values():
        assert not set(r["pos"]) & set(r["neg"])


def test_queries_sharing_a_text_share_their_positives_and_are_written_once(tmp_path):
    docs = [{"_id": f"d{i}", "text": f"macrophages from the embryo, study {i}"} for i in range(12)]
    queries = [{"_id": "a", "text": "Macrophages stem from the embryo"},
               {"_id": "b", "text": "macrophages  stem from the EMBRYO"},  # the same question
               {"_id": "c", "text": "Macrophages stem from the embryo"},  # an exact twin of a, same positives
               {"_id": "e", "text": "Macrophages stem from the embryo"},  # a twin with one of a's positives
               {"_id": "z", "text": "something else about macrophage"}]
    qrels = [("a", "d1", 1), ("a", "d2", 1), ("b", "d1", 1), ("c", "d1", 1), ("c", "d2", 1), ("e", "d2", 1),
             ("z", "d3", 1)]
    data = write_beir(tmp_path / "d", docs, queries, qrels)
    result = _run(tmp_path, data, "sample.num_negatives=8", formats="['ids','triplet']")
    ids = _ids(tmp_path / "out")
    assert len(ids["b"]["negative_ids"]) == 8 and ids["a"]["negative_ids"] == ids["c"]["negative_ids"]
    assert "d2" not in ids["b"]["negative_ids"]  # a's positive is b's positive too
    triplets = pq.read_table(tmp_path / "out" / "triplet.parquet").to_pylist()
    rows = [tuple(r.values()) for r in triplets]
    assert len(rows) == len(set(rows))
    assert result.stages["export"].stats["repeated_queries_written_once"] == {"triplet": 2}
    assert ids["e"]["negative_ids"] == ids["a"]["negative_ids"]  # e excludes a's d1 too
