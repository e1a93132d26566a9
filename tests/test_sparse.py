"""Learned sparse retrieval ([retrieve] retrievers = ["sparse"]): a tiny SPLADE-shaped SparseEncoder built here
(a BertForMaskedLM over a WordPiece vocabulary written here, MLMTransformer + SpladePooling, saved with
sentence-transformers' own save) and loaded through negmine's real loading path; its index and search against a
brute-force computation of the same dot products; resume; fusion; keys; bad settings and models."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import negmine
from negmine.config import load_config
from negmine.errors import ConfigError
from negmine.retrievers import sparse as sparse_mod
from conftest import ROOT, SAMPLE

WORDS = ("the a of and in for on with is are to by at as from flow wing layer boundary pressure heat shock "
         "transfer velocity supersonic mach number theory solution plate body surface pressure drag lift jet "
         "stability buckling shell load effects").split()


def _tiny_splade(folder: Path, seed: int) -> Path:
    """A random tiny BERT with an MLM head over a 100-odd-token WordPiece vocabulary, as a SparseEncoder folder
    (MLMTransformer + SpladePooling, log1p(ReLU) then max over tokens: SPLADE v2's head)."""
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    hf = folder / "hf"
    hf.mkdir(parents=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "-"] + letters + [f"##{c}" for c in letters]
             + [str(d) for d in range(10)] + list(WORDS))
    vocab = list(dict.fromkeys(vocab))  # "a" is a letter and a word: one id each
    (hf / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)})  # transformers 5 ignores `vocab_file`
    assert tok.unk_token_id not in tok(" ".join(WORDS[:3]))["input_ids"], "the tokenizer lost its vocabulary"
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertForMaskedLM(cfg).save_pretrained(hf)
    tok.save_pretrained(hf)
    model = SparseEncoder(modules=[MLMTransformer(str(hf), max_seq_length=64), SpladePooling("max", "log1p_relu")],
                          device="cpu")
    model.save(str(folder / "st"))
    return folder / "st"


def _tiny_inference_free(folder: Path) -> tuple[Path, np.ndarray]:
    """An inference-free SPLADE model, as OpenSearch's: a Router whose query side is a static weight per token
    (SparseStaticEmbedding) and whose document side is the tiny MLM + SpladePooling; returns it and the weights."""
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sentence_transformer.modules import Router
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding

    doc = SparseEncoder(str(_tiny_splade(folder / "doc", 5)), device="cpu")
    tok = doc[0].tokenizer
    weights = np.random.default_rng(5).uniform(0.5, 3.0, len(tok.get_vocab())).astype(np.float32)
    router = Router.for_query_document(query_modules=[SparseStaticEmbedding(tok, torch.tensor(weights))],
                                       document_modules=[doc[0], doc[1]])
    SparseEncoder(modules=[router], device="cpu").save(str(folder / "st"))
    return folder / "st", weights


def test_an_inference_free_model_encodes_queries_by_static_weights(tmp_path) -> None:
    """An inference-free model mines end to end: each query's vector is the static weight of every token the
    tokenizer gives it (no transformer on the query side), each document's is what the model's document side
    encodes, and the candidates are their dot products."""
    from sentence_transformers import SparseEncoder

    from negmine import tables

    model, weights = _tiny_inference_free(tmp_path / "model")
    result = negmine.mine(None, _over(tmp_path, model))
    queries, docs = _brute_force(result)
    texts = tables.mined_queries(result.stages["ingest"].path)["text"].to_pylist()
    st = SparseEncoder(str(model), device="cpu")
    tok = st[0].sub_modules["query"][0].tokenizer
    for i, text in enumerate(texts):  # the static weight of tokens of the query (truncated by the model)
        ids = np.flatnonzero(queries[i])
        assert len(ids) and set(ids) <= set(tok(text)["input_ids"]) - {tok.cls_token_id, tok.sep_token_id}, text
        np.testing.assert_allclose(queries[i][ids], weights[ids], rtol=1e-6)
    want = st.encode_query(texts, convert_to_tensor=True, convert_to_sparse_tensor=False)
    np.testing.assert_allclose(queries, want.float().numpy(), rtol=1e-6)
    corpus = [t for _, t in zip(range(5), tables.iter_doc_texts(result.stages["ingest"].path))]
    want = st.encode_document(corpus, convert_to_tensor=True, convert_to_sparse_tensor=False)
    np.testing.assert_allclose(docs[:5], want.float().numpy(), rtol=1e-5, atol=1e-6)
    cands = pq.read_table(result.stages["retrieve"].path / "candidates.parquet").to_pandas()
    first = cands[cands["query_id"] == cands["query_id"].iloc[0]]
    i = tables.mined_queries(result.stages["ingest"].path)["query_id"].to_pylist().index(first["query_id"].iloc[0])
    np.testing.assert_allclose(first["score"].to_numpy(), (docs @ queries[i])[first["doc_idx"].to_numpy()], rtol=1e-5)
    rows = pq.read_table(tmp_path / "out" / "ids.parquet").to_pylist()
    assert rows and all(r["negative_ids"] for r in rows)


@pytest.fixture(scope="module")
def splade(tmp_path_factory) -> Path:
    return _tiny_splade(tmp_path_factory.mktemp("splade1"), 1)


def _over(tmp_path: Path, model: Path, *extra: str, retrievers: str = "['sparse']") -> list[str]:
    return [f"input.path='{SAMPLE}'", f"run.cache_dir='{tmp_path / 'cache'}'", f"export.dir='{tmp_path / 'out'}'",
            f"retrieve.retrievers={retrievers}", f"sparse.model='{model}'", "retrieve.top_k=20",
            "sample.rank_max=20", "export.formats=['ids']", *extra]


def _dense(m) -> np.ndarray:
    return np.asarray(m.toarray(), dtype=np.float64)


def _brute_force(result) -> tuple[np.ndarray, np.ndarray]:
    enc = result.stages["sparse-encode"].path
    docs = np.concatenate([_dense(sparse_mod.load_csr(p)) for p in sparse_mod.doc_shards(enc)])
    return _dense(sparse_mod.load_csr(enc / "queries.npz")), docs


@pytest.fixture(scope="module")
def mined(splade, tmp_path_factory):
    """The sample mined with the sparse retriever, the smallest budget (many product blocks) and
    at most 12 active terms a vector (a truly sparse index)."""
    tmp = tmp_path_factory.mktemp("mined")
    return tmp, negmine.mine(None, _over(tmp, splade, "sparse.max_active_dims=12", "sparse.shard_size=64",
                                         "run.memory_budget='1MiB'"))


def test_sparse_retriever_mines_the_sample_end_to_end(mined) -> None:
    tmp, result = mined
    assert result.stages["sparse-encode"].stats["shards"] == 8  # 500 documents, 64 a shard
    assert result.stages["sparse-index"].stats["entries"] > 0
    cands = pq.read_table(result.stages["retrieve"].path / "candidates.parquet")
    assert set(cands["retriever"].to_pylist()) == {"sparse"}
    pos = pq.read_table(result.stages["retrieve"].path / "positive_scores.parquet")
    assert pos.schema.metadata[b"negmine.score_type"] == b"dot"
    rows = pq.read_table(tmp / "out" / "ids.parquet").to_pylist()
    assert rows and all(r["negative_ids"] for r in rows)
    again = negmine.mine(None, _over(tmp, result.config["sparse"]["model"], "sparse.max_active_dims=12",
                                     "sparse.shard_size=64", "run.memory_budget='1MiB'"))
    assert again.computed == []  # every stage cached


def test_index_is_the_transpose_of_the_document_vectors(mined, tmp_path, monkeypatch) -> None:
    """The term-major index is exactly the documents' CSR transposed: each term's documents ascending, with their
    weights; built in term ranges of at most 300 entries, it is byte for byte the one built in one range."""
    import scipy.sparse as sp

    _, result = mined
    enc, idx = result.stages["sparse-encode"].path, result.stages["sparse-index"].path
    monkeypatch.setattr(sparse_mod, "index_range_entries", lambda budget: 300)
    (tmp_path / "ranged").mkdir()
    stats = sparse_mod.build_index({"memory_budget": None}, enc, tmp_path / "ranged")
    for name in ("indptr.npy", "data.npy", "indices.npy"):
        assert (tmp_path / "ranged" / name).read_bytes() == (idx / name).read_bytes(), name
    assert stats["entries"] > 3 * 300  # several ranges
    docs = sp.vstack([sparse_mod.load_csr(p) for p in sparse_mod.doc_shards(enc)]).tocsr()
    want = docs.T.tocsr()
    want.sort_indices()
    assert result.stages["sparse-index"].stats["entries"] == docs.nnz
    np.testing.assert_array_equal(np.load(idx / "indptr.npy"), want.indptr)
    np.testing.assert_array_equal(np.load(idx / "indices.npy"), want.indices)
    np.testing.assert_array_equal(np.load(idx / "data.npy"), want.data)
    assert (np.diff(docs.indptr) <= 12).all()  # max_active_dims kept the 12 largest weights


def test_search_equals_brute_force_sparse_dot_products(mined) -> None:
    """Every query's candidates are the top-k of the dense product queries x documents (documents with a
    positive score), best first, ties to the lower corpus row; every positive's score is its dot product."""
    _, result = mined
    queries, docs = _brute_force(result)
    full = queries @ docs.T
    cands = pq.read_table(result.stages["retrieve"].path / "candidates.parquet").to_pandas()
    from negmine import tables

    qids = tables.mined_queries(result.stages["ingest"].path)["query_id"].to_pylist()
    by_query = dict(list(cands.groupby("query_id", sort=False)))
    for i, qid in enumerate(qids):
        got = by_query[qid]
        rows, scores = got["doc_idx"].to_numpy(), got["score"].to_numpy()
        positive = np.sort(full[i][full[i] > 0])[::-1]
        assert len(rows) == min(20, len(positive))
        np.testing.assert_allclose(scores, full[i][rows], rtol=1e-5)  # each its own dot product
        np.testing.assert_allclose(scores, positive[:20], rtol=1e-5)  # and the best ones
        assert (np.diff(scores) <= 0).all() and list(got["rank"]) == list(range(1, len(rows) + 1))
        tied = np.diff(scores) == 0
        assert (np.diff(rows)[tied] > 0).all()  # equal scores: the lower corpus row first
    pos = pq.read_table(result.stages["retrieve"].path / "positive_scores.parquet").to_pylist()
    qpos = {q: i for i, q in enumerate(qids)}
    for p in pos:
        assert p["teacher_score"] == pytest.approx(full[qpos[p["query_id"]], p["doc_idx"]], rel=1e-5)


def test_memory_budget_changes_no_candidate(mined, tmp_path) -> None:
    """A large budget (one term range, one product block) mines the same candidates from the same cached vectors
    as a small one: the budget is memory only, in no key."""
    _, small = mined
    big = negmine.mine(None, _over(tmp_path, small.config["sparse"]["model"], "sparse.max_active_dims=12",
                                   "sparse.shard_size=64", "run.memory_budget='1GiB'",
                                   f"run.cache_dir='{small.config['run']['cache_dir']}'"), until="retrieve")
    assert big.stages["retrieve"].status == "cached"  # same key
    fresh = negmine.mine(None, _over(tmp_path, small.config["sparse"]["model"], "sparse.max_active_dims=12",
                                     "sparse.shard_size=64", "run.memory_budget='1GiB'",
                                     f"run.cache_dir='{tmp_path / 'other'}'"), until="retrieve")
    for stage, name in [("sparse-index", "data.npy"), ("sparse-index", "indices.npy"),
                        ("retrieve", "candidates.parquet"), ("retrieve", "positive_scores.parquet")]:
        a, b = small.stages[stage].path / name, fresh.stages[stage].path / name
        if name.endswith(".parquet"):
            assert pq.read_table(a).equals(pq.read_table(b)), name
        else:
            assert a.read_bytes() == b.read_bytes(), name


def test_interrupted_sparse_encode_resumes_to_the_uninterrupted_vectors(splade, tmp_path, monkeypatch) -> None:
    real = sparse_mod.SparseShardEncoder.__call__
    calls: list[str] = []
    crash = [True]

    def flaky(self, item):
        calls.append(item[0])
        if crash[0] and len(calls) == 3:
            raise MemoryError("killed during the third shard")
        return real(self, item)

    monkeypatch.setattr(sparse_mod.SparseShardEncoder, "__call__", flaky)
    over = _over(tmp_path, splade, "sparse.shard_size=128")
    from negmine.errors import ResourceError

    with pytest.raises(ResourceError):
        negmine.mine(None, over, until="index")
    stage_dir = tmp_path / "cache" / "sparse-encode"
    partial = list(stage_dir.glob(".partial-*"))
    assert len(partial) == 1 and len(list(partial[0].glob("docs-*.npz"))) == 2
    assert not list(stage_dir.glob("*/meta.json"))  # no entry: a half-done encode is never a result
    calls.clear()
    crash[0] = False
    resumed = negmine.mine(None, over, until="retrieve")
    assert calls == ["docs-00002.npz", "docs-00003.npz", "queries.npz"]  # only what was missing
    assert resumed.stages["sparse-encode"].stats["encoded_shards_this_run"] == 2
    monkeypatch.setattr(sparse_mod.SparseShardEncoder, "__call__", real)
    fresh = negmine.mine(None, _over(tmp_path / "fresh", splade, "sparse.shard_size=128"), until="retrieve")
    a, b = resumed.stages["sparse-encode"].path, fresh.stages["sparse-encode"].path
    for name in ["docs-00000.npz", "docs-00003.npz", "queries.npz"]:
        x, y = sparse_mod.load_csr(a / name), sparse_mod.load_csr(b / name)
        np.testing.assert_array_equal(x.indices, y.indices)
        np.testing.assert_allclose(x.data, y.data, rtol=1e-6)
    assert pq.read_table(resumed.stages["retrieve"].path / "candidates.parquet").equals(
        pq.read_table(fresh.stages["retrieve"].path / "candidates.parquet"))


def test_sparse_fuses_with_bm25_and_adds_no_bm25_work(splade, tmp_path) -> None:
    """bm25 + sparse: reciprocal rank fusion with provenance, and the BM25 search an earlier BM25-only run cached
    is reused, not recomputed."""
    bm25 = negmine.mine(None, _over(tmp_path, splade, retrievers="['bm25']"), until="retrieve")
    fused = negmine.mine(None, _over(tmp_path, splade, "sparse.max_active_dims=16",
                                     retrievers="['bm25', 'sparse']"), until="retrieve")
    assert fused.stages["index"].status == "cached"
    assert fused.stages["retrieve-sparse"].status == "computed"
    cands = pq.read_table(fused.stages["retrieve"].path / "candidates.parquet").to_pylist()
    labels = {c["retriever"] for c in cands}
    assert "bm25+sparse" in labels and labels <= {"bm25", "sparse", "bm25+sparse"}
    both = next(c for c in cands if c["retriever"] == "bm25+sparse")
    assert both["retrievers"] == ["bm25", "sparse"] and len(both["retriever_ranks"]) == 2
    assert bm25.stages["retrieve"].key != fused.stages["retrieve"].key


@pytest.mark.slow
def test_sparse_fuses_with_dense(splade, tiny_bi_encoders, tmp_path) -> None:
    result = negmine.mine(None, _over(tmp_path, splade, "sparse.max_active_dims=16",
                                      f"dense.model='{tiny_bi_encoders[0]}'", retrievers="['dense', 'sparse']"))
    cands = pq.read_table(result.stages["retrieve"].path / "candidates.parquet").to_pylist()
    assert {"dense", "sparse"} <= {r for c in cands for r in c["retrievers"]}
    assert (tmp_path / "out" / "ids.parquet").is_file()


def _encode_key(tmp_path: Path, *extra: str) -> dict:
    from negmine.encode import model_fingerprint
    from negmine.hashing import FingerprintMemo
    from negmine.stage import Context, Params

    cfg = load_config(None, [f"input.path='{SAMPLE}'", "retrieve.retrievers=['sparse']", *extra])
    memo = FingerprintMemo(tmp_path / "fingerprints.json")
    ctx = Context(tmp_path, lambda p: model_fingerprint(p, memo))
    return sparse_mod.ENCODE.key_params(Params(sparse_mod.ENCODE.params(cfg, ctx), "sparse-encode"))


def test_encode_key_covers_the_model_and_every_vector_setting(splade, tmp_path) -> None:
    base = _encode_key(tmp_path, f"sparse.model='{splade}'")
    for extra in ["sparse.query_prompt='query: '", "sparse.doc_prompt='passage: '", "sparse.max_length=16",
                  "sparse.max_active_dims=8", "sparse.shard_size=7"]:
        assert _encode_key(tmp_path, f"sparse.model='{splade}'", extra) != base, extra
    for extra in ["sparse.batch_size=3", "sparse.device='cpu'", "sparse.workers=3", "run.memory_budget='1MiB'"]:
        assert _encode_key(tmp_path, f"sparse.model='{splade}'", extra) == base, extra  # speed only
    # a 16-bit precision is keyed as resolved; fp32 keys are those from before the setting existed
    assert "precision" not in base
    assert _encode_key(tmp_path, f"sparse.model='{splade}'", "sparse.precision='fp32'") == base
    bf16 = _encode_key(tmp_path, f"sparse.model='{splade}'", "sparse.precision='bf16'")
    assert bf16["precision"] == "bf16"
    from negmine.precision import resolve

    auto = _encode_key(tmp_path, f"sparse.model='{splade}'", "sparse.precision='auto'")
    assert auto == (base if resolve("auto", "") == "fp32" else {**base, "precision": resolve("auto", "")})
    other = _tiny_splade(tmp_path / "other", 2)
    assert _encode_key(tmp_path, f"sparse.model='{other}'")["model"] != base["model"]
    import shutil

    shutil.copytree(splade, tmp_path / "copy")  # the same files elsewhere: the same model
    assert _encode_key(tmp_path, f"sparse.model='{tmp_path / 'copy'}'") == base


def test_bf16_encodes_close_to_fp32_and_mines(splade, tmp_path) -> None:
    """[sparse] precision = "bf16": the model's matrix products under autocast. Its vectors stay close to fp32's
    (cosine, and the same active terms but for weights near zero), they are cached apart, and the provenance says
    what ran."""
    fp32 = negmine.mine(None, _over(tmp_path, splade), until="retrieve")
    bf16 = negmine.mine(None, _over(tmp_path, splade, "sparse.precision='bf16'"), until="retrieve")
    assert bf16.stages["sparse-encode"].key != fp32.stages["sparse-encode"].key
    (q32, d32), (q16, d16) = _brute_force(fp32), _brute_force(bf16)
    for a, b in ((q32, q16), (d32, d16)):
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        assert cos.min() > 0.99, cos.min()
        assert not np.array_equal(a, b)  # it did run in bf16
        big = a > 0.05 * a.max(axis=1, keepdims=True)  # every clearly active term is active in bf16 too
        assert (b[big] > 0).all()
    from negmine.precision import resolved_settings

    assert resolved_settings(bf16.config)["resolved"]["sparse.precision"] == "bf16"  # provenance's "resolved"


@pytest.mark.parametrize("override, problem", [
    ("sparse.max_active_dims=-1", "[sparse] max_active_dims is -1"),
    ("sparse.batch_size=0", "[sparse] batch_size is 0"),
    ("sparse.shard_size=0", "[sparse] shard_size is 0"),
    ("sparse.max_length=-3", "[sparse] max_length is -3"),
    ("sparse.workers=0", "[sparse] workers is 0"),
    ("sparse.max_active_dims=nan", "must be an integer"),
    ("sparse.batch_size=inf", "must be an integer"),
    ("sparse.max_length=1.5", "must be an integer"),
    ("sparse.precision='int8'", "[sparse] precision is 'int8'"),
])
def test_bad_sparse_settings_are_refused(override: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, ["retrieve.retrievers=['sparse']", override])


def test_sparse_scores_are_dot_products_for_the_filters() -> None:
    """Positive-aware filters accept sparse dot products; an absolute threshold (meant for cosine or probability)
    is refused before any work."""
    load_config(None, ["retrieve.retrievers=['sparse']", "filter.method='perc-pos'"])
    with pytest.raises(ConfigError, match="would compare against dot scores"):
        load_config(None, ["retrieve.retrievers=['sparse']", "filter.method='abs'"])


def test_missing_or_empty_model_setting_stops_before_any_work(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"\[sparse\] model is empty"):
        negmine.mine(None, [o for o in _over(tmp_path, tmp_path) if not o.startswith("sparse.model")])
    with pytest.raises(ConfigError, match="neither a local folder nor in the Hugging Face cache"):
        negmine.mine(None, _over(tmp_path, tmp_path / "nowhere"))
    assert not (tmp_path / "cache" / "sparse-encode").exists()


def _cli(tmp_path: Path, model: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "negmine", "run", str(ROOT / "configs" / "sample-bm25.toml"),
                           "--set", "retrieve.retrievers=['sparse']", "--set", f"sparse.model='{model}'",
                           "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "-q"],
                          capture_output=True, text=True, env=env, timeout=300)


def test_broken_model_is_one_line_and_exit_2(tmp_path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    proc = _cli(tmp_path, broken)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot load it as a SparseEncoder" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "cache" / "sparse-encode").glob("*/meta.json"))


def test_dense_model_given_as_sparse_is_refused(tiny_bi_encoders) -> None:
    """sentence-transformers loads a dense folder as a SparseEncoder by appending an untrained sparse autoencoder
    (random vectors): refused by name."""
    params = {"device": "cpu", "max_length": 0}
    with pytest.raises(ConfigError, match="is a dense sentence-transformers model"):
        sparse_mod.load_encoder(params, tiny_bi_encoders[0])


@pytest.mark.slow
def test_ray_engine_writes_the_local_engines_sparse_outputs(splade, tmp_path) -> None:
    """On a 2-CPU local Ray cluster, encode shards and search chunks run on actors and give the same entries."""
    ray = pytest.importorskip("ray")
    import logging

    mine_started = not ray.is_initialized()  # a cluster another module left running is used as it is
    if mine_started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=True)
    try:
        sets = ["sparse.shard_size=128", "sparse.workers=2", "retrieve.chunk_size=16", "sparse.max_active_dims=16"]
        local = negmine.mine(None, _over(tmp_path / "local", splade, *sets), until="retrieve")
        on_ray = negmine.mine(None, _over(tmp_path / "ray", splade, *sets, "run.engine='ray'"), until="retrieve")
    finally:
        if mine_started:
            ray.shutdown()
    assert on_ray.stages["sparse-encode"].key == local.stages["sparse-encode"].key
    for name in ["docs-00000.npz", "docs-00003.npz", "queries.npz"]:
        x = sparse_mod.load_csr(local.stages["sparse-encode"].path / name)
        y = sparse_mod.load_csr(on_ray.stages["sparse-encode"].path / name)
        np.testing.assert_array_equal(x.indices, y.indices)
        np.testing.assert_allclose(x.data, y.data, rtol=1e-6)
    assert pq.read_table(on_ray.stages["retrieve"].path / "candidates.parquet").equals(
        pq.read_table(local.stages["retrieve"].path / "candidates.parquet"))

