from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("NEGMINE_PROGRESS", "0")

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
