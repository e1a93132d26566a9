"""Topic-clustered layouts ([cluster] on): the training formats again, one table a query cluster, in the form
each trainer keeps a batch inside (TAS-B batches; clusters from `negmine.cluster`).

- sentence-transformers: `clusters/<format>/`, a `DatasetDict` saved to disk with one split a cluster
  (`cluster_0`, `cluster_1`, ...). Load it with `datasets.load_from_disk` and train with
  `multi_dataset_batch_sampler = MultiDatasetBatchSamplers.PROPORTIONAL`: every batch then comes from one split,
  so from one cluster (ROUND_ROBIN does too, but stops an epoch when the smallest cluster runs out).
- FlagEmbedding: `clusters/flagembedding/cluster-<id>.jsonl`, one file a cluster; pass the folder as
  `--train_data` with `--same_dataset_within_batch True`, which keeps a batch inside one file.

A cluster whose queries give no row in a format has no split or file there. Rows are the ones the flat files hold
(the same (query text, positive) written once), grouped by cluster, queries in mined order within one.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from negmine.formats import FORMATS, Options, QueryRecord, empty_rows

FOLDER = "clusters"
CLUSTERS_FILE = "clusters.parquet"  # the cluster stage's output: query_id, cluster_id (negmine.cluster)
ST_FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list", "margin-mse")  # sentence-transformers'
FLAG_FORMATS = ("flagembedding",)
CHUNK = 4096  # queries a text lookup


def split_name(cluster: int) -> str:
    return f"cluster_{cluster}"


def clustered_formats(formats: Iterable[str]) -> list[str]:
    """The configured formats that get a clustered layout."""
    return [f for f in formats if f in ST_FORMATS or f in FLAG_FORMATS]


def write(out_dir: Path, formats: Iterable[str], opts: Options, schemas: Mapping[str, Any],
          clusters: Mapping[str, int], negatives: Mapping[str, dict[str, list]], order: list[str],
          lookup: Callable[[list[tuple[str, dict[str, list]]]], dict], record: Callable[..., QueryRecord],
          sink: Callable[[Path, Any, str], Any], finish_dict: Callable[[Path, list[str]], None]) -> dict[str, Any]:
    """Write each clustered format, cluster after cluster (one open file at a time).

    `negatives`: each query's negative rows; `order`: the mined query ids in order; `lookup(groups)` and
    `record(qid, neg, found)` build query records as the flat export does; `sink(path, schema, kind)` opens a
    table writer (kind "hf" for a DatasetDict split, "jsonl"); returns rows a format and cluster.
    """
    names = clustered_formats(formats)
    by_cluster: dict[int, list[str]] = {}
    for qid in order:
        if qid in negatives:
            by_cluster.setdefault(clusters[qid], []).append(qid)
    seen_pairs: set[tuple[str, str]] = set()
    written: dict[str, dict[str, int]] = {f: {} for f in names}
    ignored: dict[str, int] = {}  # rows a format leaves out were counted by the flat export already
    for c in sorted(by_cluster):
        rows = {f: empty_rows(schemas[f]) for f in names}
        qids = by_cluster[c]
        for a in range(0, len(qids), CHUNK):
            groups = [(q, negatives[q]) for q in qids[a:a + CHUNK]]
            found = lookup(groups)
            for qid, neg in groups:
                rec = record(qid, neg, found)
                fresh = [i for i, d in enumerate(rec.pos_ids) if (rec.text, d) not in seen_pairs]
                seen_pairs.update((rec.text, d) for d in rec.pos_ids)
                if not fresh:
                    continue
                if len(fresh) < len(rec.pos_ids):
                    from negmine.export import _only_positives

                    rec = _only_positives(rec, fresh)
                for f in names:
                    FORMATS[f].rows(rec, opts, rows[f], ignored)
        for f in names:
            n = len(next(iter(rows[f].values())))
            if not n:
                continue
            path = (out_dir / FOLDER / f / split_name(c)) if f in ST_FORMATS else \
                (out_dir / FOLDER / f / f"cluster-{c}.jsonl")
            path.parent.mkdir(parents=True, exist_ok=True)
            s = sink(path, schemas[f], "hf" if f in ST_FORMATS else "jsonl")
            try:
                s.write(rows[f])
            finally:
                s.close()
            written[f][split_name(c)] = n
    for f in names:
        if f in ST_FORMATS:
            (out_dir / FOLDER / f).mkdir(parents=True, exist_ok=True)
            finish_dict(out_dir / FOLDER / f, list(written[f]))
    return written
