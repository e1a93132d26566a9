"""Dense retrieval: encode (resume, model fingerprints), faiss search, fusion and its provenance."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import negmine
from negmine import encode as encode_mod
from negmine.retrievers.dense import DenseSearcher
from negmine.fusion.rrf import fuse
from conftest import SAMPLE, write_beir


def _docs(n: int) -> list[dict]:
    words = ["wing", "flow", "heat", "shock", "boundary", "layer", "pressure", "lift", "drag", "panel"]
    return [{"_id": f"d{i}", "title": "", "text": " ".join(words[(i * j) % 10] for j in range(1, 8)) + f" n{i}"}
            for i in range(n)]


@pytest.fixture
def small(tmp_path: Path) -> Path:
    queries = [{"_id": f"q{i}", "text": f"{w} effects" } for i, w in enumerate(["wing", "heat", "shock", "drag"])]
    qrels = [(f"q{i}", f"d{3 * i + 1}", 1) for i in range(4)]
    return write_beir(tmp_path / "small", _docs(40), queries, qrels)


def _over(tmp_path: Path, data: Path, model: Path | str, *extra: str) -> list[str]:
    return [f"input.path='{data}'", f"run.cache_dir='{tmp_path / 'cache'}'", f"export.dir='{tmp_path / 'out'}'",
            "retrieve.retrievers=['dense']", f"dense.model='{model}'", "retrieve.top_k=10",
            "export.formats=['ids']", *extra]


def test_interrupted_encode_resumes_without_encoding_a_finished_shard_again(tmp_path, small, tiny_bi_encoders,
                                                                             monkeypatch):
    real = encode_mod.encode_texts
    calls: list[int] = []
    crash = [True]

    def flaky(model, texts, params, prompt):
        calls.append(len(texts))
        if crash[0] and len(calls) == 3:
            raise MemoryError("killed during the third shard")
        return real(model, texts, params, prompt)

    monkeypatch.setattr(encode_mod, "encode_texts", flaky)
    over = _over(tmp_path, small, tiny_bi_encoders[0], "dense.shard_size=8")
    from negmine.errors import ResourceError

    with pytest.raises(ResourceError):  # the MemoryError, as one line naming the stage
        negmine.mine(None, over)
    partial = list((tmp_path / "cache" / "encode").glob(".partial-*"))
    assert len(partial) == 1 and len(list(partial[0].glob("docs-*.npy"))) == 2
    assert not list((tmp_path / "cache" / "encode").glob("*/meta.json"))
    calls.clear()
    crash[0] = False
    result = negmine.mine(None, over)
    assert calls == [8, 8, 8, 4]  # shards 3..5 (40 documents, 8 a shard), then the 4 queries
    stats = result.stages["encode"].stats
    assert stats["shards"] == 5 and stats["encoded_shards_this_run"] == 3
    assert not list((tmp_path / "cache" / "encode").glob(".partial-*"))
    # the resumed embeddings equal an uninterrupted run's
    fresh = negmine.mine(None, _over(tmp_path / "fresh", small, tiny_bi_encoders[0], "dense.shard_size=8"))
    a, b = result.stages["encode"].path, fresh.stages["encode"].path
    for name in ["docs-00000.npy", "docs-00004.npy", "queries.npy"]:
        np.testing.assert_allclose(np.load(a / name), np.load(b / name), atol=1e-6)


def test_two_different_local_models_never_share_embeddings(tmp_path, small, tiny_bi_encoders):
    a = negmine.mine(None, _over(tmp_path, small, tiny_bi_encoders[0]))
    b = negmine.mine(None, _over(tmp_path, small, tiny_bi_encoders[1]))
    assert a.stages["encode"].key != b.stages["encode"].key
    assert b.stages["encode"].status == "computed"
    assert not np.allclose(np.load(a.stages["encode"].path / "docs-00000.npy"),
                           np.load(b.stages["encode"].path / "docs-00000.npy"))
    # the same model copied to another folder is the same model: its embeddings are reused
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bi_encoders[0], copy)
    c = negmine.mine(None, _over(tmp_path, small, copy))
    assert c.stages["encode"].status == "cached" and c.stages["encode"].key == a.stages["encode"].key


def test_every_encode_setting_is_part_of_the_key(tmp_path, small, tiny_bi_encoders):
    base = negmine.mine(None, _over(tmp_path, small, tiny_bi_encoders[0]))
    for extra in ["dense.query_prompt='query: '", "dense.doc_prompt='passage: '", "dense.max_seq_length=16",
                  "dense.normalize=false"]:
        other = negmine.mine(None, _over(tmp_path, small, tiny_bi_encoders[0], extra))
        assert other.stages["encode"].key != base.stages["encode"].key, extra
    same = negmine.mine(None, _over(tmp_path, small, tiny_bi_encoders[0], "dense.batch_size=3"))
    assert same.stages["encode"].status == "cached"  # batch size changes speed, not vectors


def test_identical_texts_are_encoded_once(tmp_path, tiny_bi_encoders, monkeypatch):
    docs = _docs(10) + [{"_id": f"dup{i}", "title": "", "text": _docs(10)[i]["text"]} for i in range(5)]
    data = write_beir(tmp_path / "d", docs, [{"_id": "q", "text": "wing"}], [("q", "dup2", 1)])
    seen: list[str] = []
    real = encode_mod.encode_texts
    monkeypatch.setattr(encode_mod, "encode_texts", lambda m, t, p, pr: (seen.extend(t), real(m, t, p, pr))[1])
    result = negmine.mine(None, _over(tmp_path, data, tiny_bi_encoders[0]))
    assert result.stages["encode"].stats["unique_texts"] == 10
    assert len(seen) == 10 + 1  # ten unique documents and the query
    cands = pq.read_table(result.stages["retrieve"].path / "candidates.parquet").to_pylist()
    # a text shared by several ids is retrieved once, under its first id; its twin is caught as a duplicate
    assert "dup2" not in {c["doc_id"] for c in cands} and "d2" in {c["doc_id"] for c in cands}
    negs = pq.read_table(tmp_path / "out" / "ids.parquet").to_pylist()[0]["negative_ids"]
    assert "d2" not in negs


def test_exact_search_over_shards_equals_brute_force(tmp_path, small, tiny_bi_encoders):
    result = negmine.mine(None, _over(tmp_path, small, tiny_bi_encoders[0], "dense.shard_size=7"))
    enc = result.stages["encode"].path
    docs = np.concatenate([np.load(p) for p in sorted(enc.glob("docs-*.npy"))])
    queries = np.load(enc / "queries.npy")
    rows, scores = DenseSearcher({"index": "flat"}, enc).search(queries, 10)
    full = queries @ docs.T
    for q in range(len(queries)):
        np.testing.assert_allclose(scores[q], np.sort(full[q])[::-1][:10], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(full[q][rows[q]], scores[q], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("index", ["hnsw", "ivf"])
def test_approximate_indexes_find_the_exact_neighbours(tmp_path, tiny_bi_encoders, index):
    data = write_beir(tmp_path / "d", _docs(300), [{"_id": f"q{i}", "text": f"n{i} wing"} for i in range(20)],
                      [(f"q{i}", f"d{i}", 1) for i in range(20)])
    exact = negmine.mine(None, _over(tmp_path, data, tiny_bi_encoders[0]), until="retrieve")
    approx = negmine.mine(None, _over(tmp_path, data, tiny_bi_encoders[0], f"dense.index='{index}'",
                                      "dense.ivf_nlist=8", "dense.ivf_nprobe=8"), until="retrieve")
    assert approx.stages["encode"].status == "cached" and approx.stages["ann"].status == "computed"

    def rows(r):
        out: dict[str, list] = {}
        for c in pq.read_table(r.stages["retrieve"].path / "candidates.parquet").to_pylist():
            out.setdefault(c["query_id"], []).append(c["score"])
        return out

    # the tiny random model scores many documents almost alike, so compare scores, not ids: an approximate hit
    # counts when it scores as well as the exact 10th neighbour
    e, a = rows(exact), rows(approx)
    hits = [s >= min(e[q]) - 1e-5 for q in e for s in a[q]]
    assert len(hits) >= 0.95 * sum(len(v) for v in e.values())
    assert np.mean(hits) >= 0.95


def test_reciprocal_rank_fusion_matches_hand_computed_ranks():
    def table(q, docs, scores, name):
        n = len(docs)
        return pa.table({"query_id": [q] * n, "doc_id": [f"d{d}" for d in docs], "doc_idx": docs,
                         "rank": list(range(1, n + 1)), "score": scores})

    a = table("q", [5, 1, 7], [9.0, 8.0, 7.0], "bm25")
    b = table("q", [1, 3, 5, 9], [0.9, 0.8, 0.7, 0.6], "dense")
    out = fuse([a, b], ["bm25", "dense"], pa.array(["q"]), 10, 60, None, None).to_pylist()
    expected = {1: 1 / 62 + 1 / 61, 5: 1 / 61 + 1 / 63, 3: 1 / 62, 7: 1 / 63, 9: 1 / 64}
    order = sorted(expected, key=lambda d: (-expected[d], d))
    assert [r["doc_idx"] for r in out] == order == [1, 5, 3, 7, 9]
    assert [r["rank"] for r in out] == [1, 2, 3, 4, 5]
    for r in out:
        assert r["score"] == pytest.approx(expected[r["doc_idx"]], rel=1e-6)
    by_doc = {r["doc_idx"]: r for r in out}
    assert by_doc[1]["retrievers"] == ["bm25", "dense"] and by_doc[1]["retriever_ranks"] == [2, 1]
    assert by_doc[1]["retriever_scores"] == pytest.approx([8.0, 0.9])
    assert by_doc[1]["retriever"] == "bm25+dense"
    assert by_doc[3]["retrievers"] == ["dense"] and by_doc[3]["retriever"] == "dense"
    cut = fuse([a, b], ["bm25", "dense"], pa.array(["q"]), 10, 60, 2, None).to_pylist()
    assert [r["doc_idx"] for r in cut] == [1, 5]
    union = fuse([a, b], ["bm25", "dense"], pa.array(["q"]), 10, 60, None, 1).to_pylist()
    assert sorted(r["doc_idx"] for r in union) == [1, 5]  # each retriever's first only


def test_hybrid_pool_keeps_each_retrievers_ranks(tmp_path, tiny_bi_encoders):
    over = [f"input.path='{SAMPLE}'", f"run.cache_dir='{tmp_path / 'c'}'", f"export.dir='{tmp_path / 'o'}'",
            f"dense.model='{tiny_bi_encoders[0]}'", "retrieve.top_k=20"]
    hybrid = negmine.mine(None, over + ["retrieve.retrievers=['bm25','dense']"])
    assert {"retrieve-bm25", "retrieve-dense", "retrieve"} <= set(hybrid.stages)
    singles = {}
    for name in ("bm25", "dense"):
        rows = pq.read_table(hybrid.stages[f"retrieve-{name}"].path / "candidates.parquet").to_pylist()
        singles[name] = {(r["query_id"], r["doc_id"]): (r["rank"], r["score"]) for r in rows}
    fused = pq.read_table(hybrid.stages["retrieve"].path / "candidates.parquet").to_pylist()
    assert fused and max(r["rank"] for r in fused) <= 20
    for r in fused:
        for name, rank, score in zip(r["retrievers"], r["retriever_ranks"], r["retriever_scores"]):
            assert singles[name][(r["query_id"], r["doc_id"])] == (rank, pytest.approx(score))
        expected = sum(1 / (60 + rank) for rank in r["retriever_ranks"])
        assert r["score"] == pytest.approx(expected, rel=1e-6)
    assert {r["retriever"] for r in fused} >= {"bm25+dense"}
    # adding BM25 to a dense run, or changing fusion, never re-encodes or re-retrieves
    again = negmine.mine(None, over + ["retrieve.retrievers=['bm25','dense']", "retrieve.rrf_k=10"])
    assert again.computed == ["retrieve", "exclude", "sample", "export"]


def test_packaged_minilm_is_the_default_encoder(tmp_path):
    docs = [{"_id": "a", "text": "The wing stalls at a high angle of attack."},
            {"_id": "b", "text": "Heat transfer in a turbulent boundary layer."},
            {"_id": "c", "text": "Stall of an aerofoil at large incidence."},
            {"_id": "d", "text": "Cooking pasta for dinner."}]
    data = write_beir(tmp_path / "d", docs, [{"_id": "q", "text": "aerofoil stall at high angle of attack"}],
                      [("q", "a", 1)])
    result = negmine.mine(None, [f"input.path='{data}'", f"run.cache_dir='{tmp_path / 'c'}'",
                                 f"export.dir='{tmp_path / 'o'}'", "retrieve.retrievers=['dense']",
                                 "retrieve.top_k=4", "sample.num_negatives=3"])
    enc = result.stages["encode"].path
    vectors = np.load(enc / "docs-00000.npy")
    assert vectors.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    negs = pq.read_table(tmp_path / "o" / "triplet.parquet").to_pylist()
    assert negs[0]["negative"].startswith("Stall of an aerofoil")  # the semantically closest non-positive


def test_a_model_that_is_not_there_is_a_clear_error(tmp_path, small):
    from typer.testing import CliRunner

    from negmine.cli import app

    result = CliRunner().invoke(app, ["run", "-i", str(small), "--cache-dir", str(tmp_path / "c"), "-o",
                                      str(tmp_path / "o"), "--set", "retrieve.retrievers=['dense']",
                                      "--set", "dense.model='no-such-org/no-such-model'"])
    assert result.exit_code == 2
    assert "neither a local folder nor in the Hugging Face cache" in result.stderr
    assert not (tmp_path / "o").exists()


def test_a_cached_dense_run_never_imports_torch(tmp_path, small, tiny_bi_encoders, tiny_cross_encoder):
    import subprocess
    import sys

    # torch for both models, so the first run imports it (a runtime backend never does: tests/test_backends.py)
    over = _over(tmp_path, small, tiny_bi_encoders[0], f"score.teacher='{tiny_cross_encoder}'",
                 "dense.backend='torch'", "score.backend='torch'")
    code = ("import sys, negmine; r = negmine.mine(None, sys.argv[1:]); "
            "print(r.computed, 'torch' in sys.modules, 'sentence_transformers' in sys.modules)")
    env = {**__import__("os").environ, "NEGMINE_PROGRESS": "0"}
    first = subprocess.run([sys.executable, "-c", code, *over], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split("]")[1].split() == ["True", "True"]
    changed = over + ["sample.num_negatives=2"]
    warm = subprocess.run([sys.executable, "-c", code, *changed], capture_output=True, text=True, env=env)
    assert warm.returncode == 0, warm.stderr
    assert warm.stdout.strip() == "['sample', 'export'] False False"
