"""BM25: negmine's batched bm25s scoring equals bm25s' own, and the rank-bm25 reference backend agrees."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import negmine
from negmine.retrievers.bm25 import Searcher
from negmine.config import load_config
from conftest import SAMPLE, write_beir


def _queries() -> list[str]:
    return [json.loads(x)["text"] for x in (SAMPLE / "queries.jsonl").read_text().splitlines()]


def _index(tmp_path, *extra):
    cfg = load_config(None, [f"input.path='{SAMPLE}'", f"run.cache_dir='{tmp_path / 'c'}'", *extra])
    result = negmine.mine(cfg, until="index")
    return cfg, result.stages["index"].path


@pytest.mark.parametrize("method", ["lucene", "robertson", "atire", "bm25l", "bm25+"])
def test_batched_scoring_matches_bm25s_retrieve(tmp_path, method):
    import bm25s

    cfg, index_dir = _index(tmp_path, f"bm25.method='{method}'", "bm25.stemmer='english'")
    searcher = Searcher(cfg["bm25"], index_dir, max_block_bytes=2 * 8 * 500 * 7)  # 7 dense rows at a time
    texts = _queries()
    docs, scores = searcher.search(texts, 20)
    reference = bm25s.BM25.load(str(index_dir / "bm25s"), mmap=True)
    ids = searcher.tok.tokenize(texts, update_vocab=False, return_as="ids", show_progress=False)
    ref_docs, ref_scores = reference.retrieve(ids, k=20, show_progress=False)
    np.testing.assert_allclose(scores, ref_scores.astype(np.float32), rtol=1e-5, atol=1e-5)
    for mine, ref, s in zip(docs, ref_docs, scores):
        # documents may swap places only where their scores tie
        assert set(mine[s > s[-1] + 1e-5]) <= set(ref)
    assert (np.diff(scores, axis=1) <= 0).all()


@pytest.mark.parametrize("method", ["lucene", "bm25+"])
def test_blocks_bounded_by_the_index_pages_they_touch_give_the_one_block_results(tmp_path, method):
    """Query blocks are cut so that their terms' index rows fit half the block budget (what one product reads of
    the index files); the rows read are the saved ones; the results are those of one block holding every query,
    bit for bit."""
    cfg, index_dir = _index(tmp_path, f"bm25.method='{method}'", "bm25.stemmer='english'")
    texts = _queries()
    whole = Searcher(cfg["bm25"], index_dir, max_block_bytes=1 << 40)
    small = Searcher(cfg["bm25"], index_dir, max_block_bytes=2 * 4096)
    q = small._query_matrix(texts)
    assert list(whole._blocks(q, len(texts), 1 << 39)) == [(0, len(texts))]
    blocks = list(small._blocks(q, len(texts), 4096))
    assert len(blocks) > 5 and blocks[0][0] == 0 and blocks[-1][1] == len(texts)
    assert all(b0[1] == b1[0] for b0, b1 in zip(blocks, blocks[1:]))  # consecutive, every query once
    col_bytes = np.diff(small.indptr) * 8
    for a, b in blocks:
        touched = int(col_bytes[np.unique(q[a:b].indices)].sum())
        assert b - a == 1 or touched <= 4096
    saved = {n: np.load(index_dir / "bm25s" / f"{n}.csc.index.npy") for n in ("data", "indices", "indptr")}
    rows = small.term_rows(np.array([0, 1, 2, 7, 9, small.vocab_size - 1]))  # adjacent and scattered rows
    for i, t in enumerate([0, 1, 2, 7, 9, small.vocab_size - 1]):
        a, b = saved["indptr"][t], saved["indptr"][t + 1]
        assert rows.indices[rows.indptr[i]:rows.indptr[i + 1]].tolist() == saved["indices"][a:b].tolist()
        assert rows.data[rows.indptr[i]:rows.indptr[i + 1]].tobytes() == saved["data"][a:b].tobytes()
    docs_w, scores_w = whole.search(texts, 20)
    docs_s, scores_s = small.search(texts, 20)
    np.testing.assert_array_equal(docs_s, docs_w)
    np.testing.assert_array_equal(scores_s, scores_w)


def test_rank_bm25_reference_backend_agrees_with_bm25s_robertson(tmp_path):
    texts = _queries()
    cfg_a, dir_a = _index(tmp_path / "a", "bm25.method='robertson'")
    cfg_b, dir_b = _index(tmp_path / "b", "bm25.backend='rank-bm25'")
    a_docs, a_scores = Searcher(cfg_a["bm25"], dir_a).search(texts, 10)
    b_docs, b_scores = Searcher(cfg_b["bm25"], dir_b).search(texts, 10)
    overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a_docs, b_docs)])
    # rank-bm25's Okapi floors negative idf at epsilon x mean idf; bm25s robertson does not: near, not equal
    assert overlap > 0.9


def test_documents_sharing_no_term_are_not_candidates(tmp_path):
    docs = [{"_id": "a", "text": "rocket engine thrust"}, {"_id": "b", "text": "rocket fuel"},
            {"_id": "c", "text": "garden flowers"}, {"_id": "d", "text": "kitchen recipes"}]
    data = write_beir(tmp_path / "d", docs, [{"_id": "q", "text": "rocket thrust"}], [("q", "a", 1)])
    result = negmine.mine(None, [f"input.path='{data}'", f"run.cache_dir='{tmp_path / 'c'}'",
                                 f"export.dir='{tmp_path / 'o'}'", "retrieve.top_k=4"])
    cands = pq.read_table(result.stages["retrieve"].path / "candidates.parquet").to_pylist()
    assert [c["doc_id"] for c in cands] == ["a", "b"]
    assert [c["rank"] for c in cands] == [1, 2]
    assert all(c["retriever"] == "bm25" for c in cands)


def test_stemming_matches_inflected_forms(tmp_path):
    docs = [{"_id": "a", "text": "the engines were running"}, {"_id": "b", "text": "an apple pie"},
            {"_id": "c", "text": "a quiet lake"}]
    data = write_beir(tmp_path / "d", docs, [{"_id": "q", "text": "engine runs"}], [("q", "c", 1)])
    base = [f"input.path='{data}'", f"export.dir='{tmp_path / 'o'}'", "retrieve.top_k=3"]
    plain = negmine.mine(None, base + [f"run.cache_dir='{tmp_path / 'c1'}'"])
    stemmed = negmine.mine(None, base + [f"run.cache_dir='{tmp_path / 'c2'}'", "bm25.stemmer='english'"])
    assert plain.stages["retrieve"].stats["candidates"] == 0
    assert stemmed.stages["retrieve"].stats["candidates"] == 1


def test_unknown_stemmer_language_is_a_config_error(tmp_path):
    from negmine.errors import ConfigError

    with pytest.raises(ConfigError, match="Snowball"):
        _index(tmp_path, "bm25.stemmer='klingon'")
