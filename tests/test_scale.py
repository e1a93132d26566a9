"""Bounded by design: the memory budget, the chunked BM25 index build, batched text lookups and exact positive
scores, none of which may change what is mined."""
from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import negmine
from negmine.config import load_config
from negmine.errors import ConfigError
from conftest import ROOT, SAMPLE, write_beir
from golden import output_hashes

TINY = "1MiB"  # the smallest budget: chunks of a few queries and a few documents on the sample


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "100", "'lots'", "'12XB'", "'2 GiB GiB'",
                                   "true", "[1]", "'nan'", "'-5MiB'"])
def test_memory_budget_refuses_nan_inf_too_small_and_garbage(value):
    with pytest.raises(ConfigError, match=r"\[run\] memory_budget"):
        load_config(None, [f"run.memory_budget={value}"])


@pytest.mark.parametrize("value, expected", [("2GiB", 2 << 30), ("'512MiB'", 512 << 20), ("1.5GB", 1_500_000_000),
                                             ("1e9", 1_000_000_000), ("3000000", 3_000_000), ("'4 mib'", 4 << 20)])
def test_memory_budget_accepts_bytes_and_sizes(value, expected):
    assert load_config(None, [f"run.memory_budget={value}"])["run"]["memory_budget"] == expected


def test_bad_memory_budget_in_a_config_file_exits_2_with_one_line(tmp_path):
    from negmine.cli import app

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[input]\npath = "{SAMPLE}"\n[run]\nmemory_budget = nan\n'
                   f'[export]\ndir = "{tmp_path / "out"}"\n')
    result = CliRunner().invoke(app, ["run", str(cfg)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error:") and "memory_budget" in result.stderr and str(cfg) in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


def test_memory_budget_is_part_of_no_cache_key(tmp_path, sample_overrides):
    negmine.mine(None, sample_overrides)
    again = negmine.mine(None, sample_overrides + [f"run.memory_budget='{TINY}'"])
    assert again.computed == []


def _contents(out: Path) -> dict[str, object]:
    """JSONL files by their bytes, Parquet files by their rows and types: a Parquet file's row groups follow the
    retrieve chunks (one each), which the budget sizes, so only their boundaries may differ."""
    got: dict[str, object] = {}
    for p in sorted(out.iterdir()):
        if p.suffix == ".jsonl":
            got[p.name] = p.read_bytes()
        elif p.suffix == ".parquet":
            t = pq.read_table(p)
            got[p.name] = (t.schema.remove_metadata(), t.combine_chunks().to_pydict())
    return got


@pytest.mark.parametrize("config", ["sample-bm25", "hybrid"])
def test_a_tiny_memory_budget_mines_the_same_data(tmp_path, config, tiny_bi_encoders):
    """Every stage recomputed under a 1 MiB budget (index built 16 documents at a time, retrieve and its
    positive scores in chunks of 20 queries, fusion re-cut to match) writes the same data as under the default
    budget, and the same index files."""
    out = {}
    for label, extra in (("default", []), ("tiny", [f"run.memory_budget='{TINY}'"])):
        over = [f"input.path='{SAMPLE}'", f"export.dir='{tmp_path / label}'", *extra,
                "export.formats=['triplet','n-tuple','flagembedding','tevatron','labeled-list','ids']"]
        if config == "hybrid":
            over.append(f"dense.model='{tiny_bi_encoders[0]}'")
        negmine.mine(ROOT / "configs" / f"{config}.toml", over, cache_dir=tmp_path / f"cache-{label}")
        out[label] = _contents(tmp_path / label)
    assert len(out["default"]) == 12 and out["default"] == out["tiny"]
    groups = {label: pq.ParquetFile(tmp_path / label / "ids.parquet").num_row_groups for label in out}
    assert groups["tiny"] > groups["default"]  # the budget did cut the work into more chunks
    index_dirs = {label: next(p for p in (tmp_path / f"cache-{label}" / "index").iterdir()
                              if p.is_dir() and not p.name.startswith(".")) for label in out}
    files = sorted(p.relative_to(index_dirs["default"]) for p in index_dirs["default"].rglob("*") if p.is_file())
    for name in files:
        if name.name != "meta.json":
            assert filecmp.cmp(index_dirs["default"] / name, index_dirs["tiny"] / name, shallow=False), name


def _reference_bm25s(params: dict, corpus: Path, out: Path) -> None:
    """bm25s' own index of the whole corpus at once, as negmine built it before chunking."""
    import bm25s

    from negmine.retrievers.bm25 import make_tokenizer
    from negmine.tables import iter_doc_texts

    tok = make_tokenizer(params)
    texts = list(iter_doc_texts(corpus))
    tokens = tok.tokenize(texts, update_vocab=True, return_as="tuple", show_progress=False)
    retriever = bm25s.BM25(k1=params["k1"], b=params["b"], delta=params["delta"], method=params["method"])
    retriever.index(tokens, show_progress=False)
    retriever.save(str(out), show_progress=False)
    tok.save_vocab(str(out))
    tok.save_stopwords(str(out))


@pytest.mark.parametrize("method, stemmer", [("lucene", "english"), ("robertson", ""), ("atire", "english"),
                                             ("bm25l", ""), ("bm25+", "english")])
@pytest.mark.parametrize("budget, range_entries", [(1 << 20, 1), (1 << 20, 37), (None, None)])
def test_chunked_bm25_index_is_byte_identical_to_bm25s_own(tmp_path, monkeypatch, method, stemmer, budget,
                                                           range_entries):
    """Built from corpus chunks and written term range by term range (one term a range; ranges of 37 entries
    that split the corpus's terms unevenly; the default: one range), the files are bm25s' own, byte for byte."""
    from negmine import ingest
    from negmine.retrievers import bm25

    if range_entries is not None:  # the smallest budget (1 MiB) still holds this corpus's index in one range
        monkeypatch.setattr(bm25, "index_range_entries", lambda _budget: range_entries)

    ing = tmp_path / "ingest"
    ing.mkdir()
    docs = [{"_id": f"d{i}", "title": "", "text": "the the and"} if i == 5 else  # stopwords only: empty tokens
            {"_id": f"d{i}", "title": f"t{i % 3}", "text": f"wing {'flow ' * (i % 4)}heat{i % 7} shock n{i}"}
            for i in range(70)]
    data = write_beir(tmp_path / "d", docs, [{"_id": "q", "text": "wing"}], [("q", "d1", 1)])
    cfg = load_config(None, [f"input.path='{data}'", f"bm25.method='{method}'", f"bm25.stemmer='{stemmer}'"])
    ingest.ingest(cfg["input"], ing)
    assert budget is None or bm25.index_chunk_docs(budget) < len(docs)
    ours = tmp_path / "ours"
    ours.mkdir()
    bm25.build_index({**cfg["bm25"], "memory_budget": budget}, ing, ours)
    _reference_bm25s(cfg["bm25"], ing, tmp_path / "ref")
    names = sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert names == sorted(p.name for p in (ours / "bm25s").iterdir())
    for name in names:
        assert filecmp.cmp(tmp_path / "ref" / name, ours / "bm25s" / name, shallow=False), name
    indptr = np.load(ours / "bm25s" / "indptr.csc.index.npy")
    if range_entries is not None:
        assert len(bm25.term_ranges(indptr, range_entries)) > 3


@pytest.mark.parametrize("method", ["lucene", "bm25+"])
def test_positive_scores_equal_the_sparse_product_exactly(tmp_path, method):
    """score_pairs looks each (term, document) score up instead of making the query's whole product row; the
    sums must be the product's, bit for bit, for documents that share all, some or none of the query's terms."""
    import scipy.sparse as sp

    from negmine import ingest
    from negmine.retrievers import bm25

    ing = tmp_path / "ingest"
    ing.mkdir()
    cfg = load_config(None, [f"input.path='{SAMPLE}'", f"bm25.method='{method}'", "bm25.stemmer='english'"])
    ingest.ingest(cfg["input"], ing)
    bm25.build_index({**cfg["bm25"], "memory_budget": None}, ing, tmp_path)
    s = bm25.Searcher(cfg["bm25"], tmp_path)
    queries = pq.read_table(ing / "queries.parquet")["text"].to_pylist()
    texts = [queries[i % len(queries)] for i in range(300)] + ["flow flow flow boundary layer", "zzzunknown", ""]
    docs = np.random.default_rng(0).integers(0, s.n_docs, size=len(texts))
    got = s.score_pairs(texts, docs)
    q = s._query_matrix(texts)
    saved = {n: np.load(tmp_path / "bm25s" / f"{n}.csc.index.npy") for n in ("data", "indices", "indptr")}
    term_doc = sp.csr_matrix((saved["data"], saved["indices"], saved["indptr"]), shape=(s.vocab_size, s.n_docs))
    want = np.asarray((q @ term_doc)[np.arange(len(texts)), docs], dtype=np.float32).reshape(-1)
    if s.nonoccurrence is not None:
        want += (q @ s.nonoccurrence).astype(np.float32)
    assert got.dtype == np.float32 and got.tobytes() == want.tobytes()
    # the same, a few queries' index rows at a time (blocks bounded by the rows they read)
    small = bm25.Searcher(cfg["bm25"], tmp_path, max_block_bytes=2 * 2048)
    assert len(list(small._blocks(q, len(texts), 2048))) > 10
    assert small.score_pairs(texts, docs).tobytes() == want.tobytes()
    assert (got > 0).sum() > 50  # the sample's queries do share terms with random documents


def test_text_lookup_returns_rows_in_any_order_with_repeats_and_missing_titles(tmp_path):
    from negmine import ingest
    from negmine.tables import Texts

    docs = [{"_id": f"d{i}", "title": "" if i % 3 else f"Title é{i}", "text": f"body {i} " + "ü" * i}
            for i in range(200)]
    data = write_beir(tmp_path / "d", docs, [{"_id": "q", "text": "body"}], [("q", "d1", 1)])
    ing = tmp_path / "ingest"
    ing.mkdir()
    ingest.ingest(load_config(None, [f"input.path='{data}'", "input.title_sep=' | '"])["input"], ing)
    table = pq.read_table(ing / "corpus.parquet")
    rows = [150, 3, 3, 0, 199, 42, 150, 7]
    with Texts(ing, batch=16) as texts:  # several store batches
        titles, bodies = texts.parts(rows)
        assert titles == [table["title"][r].as_py() for r in rows]
        assert bodies == [table["text"][r].as_py() for r in rows]
        assert texts.docs([0, 1]) == [f"{table['title'][0].as_py()} | {table['text'][0].as_py()}",
                                      table["text"][1].as_py()]
        assert texts.parts([]) == ([], [])
    assert not list(tmp_path.glob("ingest/*.tmp")) and sorted(p.name for p in tmp_path.iterdir()) == [
        "d", "ingest"]


def test_query_chunk_follows_the_budget_up_to_chunk_size():
    from negmine.memory import CANDIDATE_ROW_BYTES, query_chunk

    assert query_chunk(1 << 30, 100, 1024) == 1024
    assert query_chunk(1 << 20, 100, 1024) == (1 << 19) // (100 * CANDIDATE_ROW_BYTES)
    assert query_chunk(1 << 20, 100_000, 1024) == 1


def test_default_budget_is_a_share_of_the_machine():
    import os

    from negmine.memory import BUDGET_CAP, default_budget

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert default_budget() == max(256 << 20, min(total // 8, BUDGET_CAP))
    assert json.dumps(load_config(None)["run"]["memory_budget"]) == "null"
