"""The tables that stages hand each other, written down once (PyTerrier-style: every stage maps tables to tables).

Rows are keyed by ids. `doc_idx` is the row of a document in the ingest stage's corpus table: an index into a
table whose cache key the downstream keys include, so texts are looked up by position, never copied along.
"""
from __future__ import annotations

import pyarrow as pa

# File names of the tables below, one name each across stages (the ingest entry's own are in `negmine.tables`).
CANDIDATES_FILE = "candidates.parquet"  # CANDIDATES: retrieve, and score (teacher_score filled in)
POSITIVE_SCORES_FILE = "positive_scores.parquet"  # POSITIVE_SCORES: retrieve (retriever's), score (teacher's)
KEPT_FILE = "kept.parquet"  # FILTERED: exclude
EXCLUDED_FILE = "excluded.parquet"  # EXCLUDED: exclude
NEGATIVES_FILE = "negatives.parquet"  # NEGATIVES: sample, and judge (less the candidates it removed)
RELABELED_FILE = "relabeled.parquet"  # RELABELED: judge / judge-pool (candidates made positives)
VERDICTS_FILE = "verdicts.parquet"  # VERDICTS: judge / judge-pool

CORPUS = pa.schema([
    ("doc_id", pa.string()),
    ("title", pa.string()),
    ("text", pa.string()),
    ("hash", pa.int64()),  # normalised (title + sep + text): duplicate detection
    ("text_hash", pa.int64()),  # normalised text alone: "the query's own text" check
])

QUERIES = pa.schema([
    ("query_id", pa.string()),
    ("text", pa.string()),
    ("hash", pa.int64()),
])

QRELS = pa.schema([
    ("query_id", pa.string()),
    ("doc_id", pa.string()),
    ("score", pa.int32()),
])

CANDIDATES = pa.schema([
    ("query_id", pa.string()),
    ("doc_id", pa.string()),
    ("doc_idx", pa.int64()),
    ("rank", pa.int32()),  # 1-based rank in the raw retrieval list, before any exclusion
    ("score", pa.float32()),  # the retriever's score, or the fused (RRF) score for a pool of several
    ("retriever", pa.string()),  # who found it: "bm25", "dense", or "bm25+dense" when both did
    # provenance, one entry per retriever that found the document
    ("retrievers", pa.list_(pa.string())),
    ("retriever_ranks", pa.list_(pa.int32())),
    ("retriever_scores", pa.list_(pa.float32())),
    ("teacher_score", pa.float32()),  # null until the score stage fills it (its type is in the file metadata)
])

# The exclude stage's kept candidates: the score its filters used, the query's positive score, and the
# loosest relax level at which the filters keep the row (0 = kept as configured).
FILTERED = pa.schema(list(CANDIDATES) + [
    ("filter_score", pa.float32()),
    ("positive_score", pa.float32()),
    ("relax_level", pa.int8()),
])

POSITIVE_SCORES = pa.schema([
    ("query_id", pa.string()),
    ("doc_id", pa.string()),
    ("doc_idx", pa.int64()),
    ("teacher_score", pa.float32()),
])

EXCLUDED = pa.schema([
    ("query_id", pa.string()),
    ("doc_id", pa.string()),
    ("rank", pa.int32()),
    ("score", pa.float32()),
    ("reason", pa.string()),  # positive | query_text | duplicate_of_positive
])

NEGATIVES = pa.schema([
    ("query_id", pa.string()),
    ("doc_id", pa.string()),
    ("doc_idx", pa.int64()),
    ("rank", pa.int32()),  # null for pad-random fillers: they were not retrieved
    ("score", pa.float32()),
    ("retriever", pa.string()),
    ("source", pa.string()),  # "sample" or "pad-random"
    ("teacher_score", pa.float32()),  # null without a teacher, and for pad-random fillers
    ("filter_score", pa.float32()),  # the score the filters and samplers read (teacher's or retriever's)
])

# Candidates an LLM judge relabelled as positives (`[judge] on_false_negative = "relabel"`): every export format
# lists them with the query's positives, with their scores.
RELABELED = pa.schema([
    ("query_id", pa.string()),
    ("doc_id", pa.string()),
    ("doc_idx", pa.int64()),
    ("teacher_score", pa.float32()),
    ("filter_score", pa.float32()),
])

VERDICTS = pa.schema([
    ("query_id", pa.string()),
    ("doc_id", pa.string()),
    ("rank", pa.int32()),
    ("verdict", pa.string()),  # negative | false_negative | no_verdict
])
