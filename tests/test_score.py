"""The rescore stage: teacher scores for candidates and positives, each pair scored once, never skipped."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import negmine
from negmine import score as score_mod
from conftest import SAMPLE, count_teacher_pairs


def _over(tmp_path: Path, teacher: Path, *extra: str) -> list[str]:
    return [f"input.path='{SAMPLE}'", f"run.cache_dir='{tmp_path / 'cache'}'", f"export.dir='{tmp_path / 'out'}'",
            f"score.teacher='{teacher}'", "retrieve.top_k=10", "export.formats=['ids','flagembedding']", *extra]




def test_cross_encoder_scores_every_candidate_and_positive(tmp_path, tiny_cross_encoder):
    from sentence_transformers import CrossEncoder

    result = negmine.mine(None, _over(tmp_path, tiny_cross_encoder))
    stage = result.stages["score"]
    assert stage.stats["score_type"] == "probability"
    cands = pq.read_table(stage.path / "candidates.parquet")
    assert cands.schema.metadata[b"negmine.score_type"] == b"probability"
    pos = pq.read_table(stage.path / "positive_scores.parquet").to_pylist()
    assert len(pos) == 416  # every positive of the sample
    values = cands["teacher_score"].to_numpy()
    assert not np.isnan(values).any() and ((values > 0) & (values < 1)).all()
    # spot-check against the model itself
    queries = {json.loads(x)["_id"]: json.loads(x)["text"] for x in (SAMPLE / "queries.jsonl").open()}
    corpus = {}
    for line in (SAMPLE / "corpus.jsonl").open():
        d = json.loads(line)
        corpus[d["_id"]] = f"{d['title']} {d['text']}" if d["title"] else d["text"]
    ce = CrossEncoder(str(tiny_cross_encoder), device="cpu", local_files_only=True)
    rows = cands.slice(0, 5).to_pylist() + []
    expected = ce.predict([(queries[r["query_id"]], corpus[r["doc_id"]]) for r in rows])
    np.testing.assert_allclose([r["teacher_score"] for r in rows], expected, rtol=1e-4, atol=1e-5)
    ids = pq.read_table(tmp_path / "out" / "ids.parquet").to_pylist()
    assert all(len(r["positive_teacher_scores"]) == len(r["positive_ids"]) for r in ids)
    assert all(len(r["negative_teacher_scores"]) == len(r["negative_ids"]) for r in ids)
    fe = pq.read_table(tmp_path / "out" / "flagembedding.parquet")
    assert {"pos_scores", "neg_scores"} <= set(fe.column_names)


def test_a_deeper_pool_scores_only_the_new_pairs(tmp_path, tiny_cross_encoder, monkeypatch):
    scored = count_teacher_pairs(monkeypatch)
    first = negmine.mine(None, _over(tmp_path, tiny_cross_encoder))
    n_first = sum(scored)
    assert n_first == first.stages["score"].stats["distinct_pairs"]
    scored.clear()
    deeper = negmine.mine(None, _over(tmp_path, tiny_cross_encoder, "retrieve.top_k=20"))
    stats = deeper.stages["score"].stats
    assert sum(scored) == stats["scored_now"] == stats["distinct_pairs"] - n_first
    assert stats["from_store"] == n_first


def test_changing_a_filter_or_the_sample_never_rescores(tmp_path, tiny_cross_encoder, monkeypatch):
    scored = count_teacher_pairs(monkeypatch)
    negmine.mine(None, _over(tmp_path, tiny_cross_encoder))
    scored.clear()
    again = negmine.mine(None, _over(tmp_path, tiny_cross_encoder, "exclude.duplicates=false", "sample.seed=5"))
    assert again.stages["score"].status == "cached" and again.stages["retrieve"].status == "cached"
    assert scored == []


def test_logit_activation_is_recorded_and_differs(tmp_path, tiny_cross_encoder):
    prob = negmine.mine(None, _over(tmp_path, tiny_cross_encoder))
    logit = negmine.mine(None, _over(tmp_path, tiny_cross_encoder, "score.activation='logit'"))
    assert logit.stages["score"].stats["score_type"] == "logit"
    p = pq.read_table(prob.stages["score"].path / "candidates.parquet")["teacher_score"].to_numpy()
    z = pq.read_table(logit.stages["score"].path / "candidates.parquet")["teacher_score"].to_numpy()
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-z)), rtol=1e-4, atol=1e-5)


def test_bi_encoder_teacher_gives_cosine_scores(tmp_path, tiny_bi_encoders):
    result = negmine.mine(None, _over(tmp_path, tiny_bi_encoders[1], "score.kind='bi-encoder'"))
    assert result.stages["score"].stats["score_type"] == "cosine"
    values = pq.read_table(result.stages["score"].path / "candidates.parquet")["teacher_score"].to_numpy()
    assert ((values >= -1.0001) & (values <= 1.0001)).all()


def test_a_configured_teacher_is_never_silently_skipped(tmp_path):
    from typer.testing import CliRunner

    from negmine.cli import app

    result = CliRunner().invoke(app, ["run", "-i", str(SAMPLE), "--cache-dir", str(tmp_path / "c"), "-o",
                                      str(tmp_path / "o"), "--set", f"score.teacher='{tmp_path / 'missing'}'"])
    assert result.exit_code == 2 and not (tmp_path / "c" / "score").exists() and not (tmp_path / "o").exists()
    assert "Hugging Face cache" in result.stderr


def test_scores_survive_a_crash_between_store_parts(tmp_path, tiny_cross_encoder, monkeypatch):
    calls = []
    real = score_mod.Teacher.__call__

    def crashing(self, queries, docs):
        calls.append(len(queries))
        if len(calls) == 2:
            raise MemoryError("killed")
        return real(self, queries, docs)

    monkeypatch.setattr(score_mod.Teacher, "__call__", crashing)
    over = _over(tmp_path, tiny_cross_encoder, "score.flush_pairs=100")
    from negmine.errors import ResourceError

    with pytest.raises(ResourceError, match="out of memory in stage 'score'"):  # one line, not a MemoryError
        negmine.mine(None, over)
    monkeypatch.setattr(score_mod.Teacher, "__call__", real)
    scored = count_teacher_pairs(monkeypatch)
    result = negmine.mine(None, over)
    assert result.stages["score"].stats["from_store"] == 100
    assert sum(scored) == result.stages["score"].stats["distinct_pairs"] - 100


def test_the_pair_store_index_finds_every_stored_pair_and_keeps_a_repeated_pairs_first_score(tmp_path):
    """The store is looked up through sorted integer codes of (query key, document key): every stored pair is
    found with its score, a pair stored twice keeps the copy read first (parts by name), and a pair whose query
    key, document key or combination the store lacks is not found."""
    import pyarrow as pa

    rng = np.random.default_rng(0)
    q = rng.integers(-2**62, 2**62, 40)
    d = rng.integers(-2**62, 2**62, 300)
    pairs = {(int(q[i % 40]), int(d[(7 * i) % 300])) for i in range(2000)}
    qk, dk = (np.array(x, dtype=np.int64) for x in zip(*sorted(pairs)))
    scores = rng.random(len(qk)).astype(np.float32)
    half = len(qk) // 2
    for a, b in ((0, half), (half, len(qk))):
        score_mod._write_part(tmp_path, pa.table({"qkey": qk[a:b], "dkey": dk[a:b], "score": scores[a:b]},
                                                 schema=score_mod.PAIRS))
    holder = next(p.name for p in tmp_path.glob("part-*.parquet")  # the part holding pair 0
                  if pq.read_table(p)["qkey"][0].as_py() == qk[0])
    again = pa.table({"qkey": qk[:1], "dkey": dk[:1], "score": np.float32([9.0])}, schema=score_mod.PAIRS)
    before = {p.name for p in tmp_path.glob("part-*.parquet")}
    score_mod._write_part(tmp_path, again)
    (repeat,) = {p.name for p in tmp_path.glob("part-*.parquet")} - before
    index = score_mod._StoreIndex(tmp_path)
    order = rng.permutation(len(qk))
    at = index.find(qk[order], dk[order])
    assert (at >= 0).all() and len(index.codes) == len(qk)
    got = index.scores[at]
    want = scores[order].copy()
    if repeat < holder:  # parts are read by name: the copy in the part read first counts
        want[order == 0] = 9.0
    np.testing.assert_array_equal(got, want)
    unknown = rng.integers(-2**62, 2**62, 3)
    in_store_q_d_not_paired = (qk[0], next(x for x in d if (int(qk[0]), int(x)) not in pairs))
    missing_q = np.array([unknown[0], qk[1], in_store_q_d_not_paired[0]], dtype=np.int64)
    missing_d = np.array([dk[1], unknown[1], in_store_q_d_not_paired[1]], dtype=np.int64)
    assert index.find(missing_q, missing_d).tolist() == [-1, -1, -1]


def test_the_score_stage_reads_the_candidates_a_chunk_at_a_time_and_scores_as_one_pass(tmp_path, tiny_cross_encoder):
    """With chunks of 7 queries the candidates come in many retrieve chunks; the score stage reads them a
    chunk at a time, yet scores each distinct pair once, in the same order and batches as one pass over all of
    them: the same data, and a pair store of the very same parts (named by their bytes)."""
    out = {}
    for label, extra in (("default", []), ("tiny", ["retrieve.chunk_size=7", "score.flush_pairs=64"]),
                         ("one-pass", ["score.flush_pairs=64"])):
        over = [f"input.path='{SAMPLE}'", f"export.dir='{tmp_path / label}'", f"score.teacher='{tiny_cross_encoder}'",
                "retrieve.top_k=30", *extra]
        result = negmine.mine(None, over, cache_dir=tmp_path / f"cache-{label}", until="score")
        st = result.stages["score"]
        parts = sorted(p.name for p in (tmp_path / f"cache-{label}" / "pairs").glob("*/part-*.parquet"))
        data = {p.name: pq.read_table(p).combine_chunks().to_pydict() for p in sorted(st.path.glob("*.parquet"))}
        groups = pq.ParquetFile(st.path / "candidates.parquet").num_row_groups
        out[label] = (data, st.stats, parts, groups)
    assert out["tiny"][3] > 5 and out["one-pass"][3] == 1  # the candidates did come in chunks
    assert out["tiny"][:3] == out["one-pass"][:3]
    assert out["tiny"][0] == out["default"][0] and out["tiny"][1] == out["default"][1]
    assert out["tiny"][1]["distinct_pairs"] < out["tiny"][1]["pairs"]  # repeated pairs, scored once
