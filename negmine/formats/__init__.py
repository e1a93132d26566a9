"""Export formats, one family a module, registered in `FORMATS` for the config's [export] formats.

Each format is a schema function (options) -> pa.Schema and a rows function (query record, options, rows out,
skipped counter) that appends one query's rows. A query record (`QueryRecord`) carries everything a format may
need, so formats never read files themselves.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa


@dataclass
class QueryRecord:
    qid: str
    text: str
    pos_ids: list[str]
    pos_titles: list[str]
    pos_bodies: list[str]
    pos_texts: list[str]  # title + sep + text, as retrieved
    pos_teacher: list[float] | None  # the teacher's scores, with a teacher
    pos_scores: list[float] | None  # the scores the filters used (teacher's or retriever's); None for RRF
    neg: dict[str, list]  # doc_id, doc_idx, rank, score, teacher_score, filter_score
    neg_titles: list[str]
    neg_bodies: list[str]
    neg_texts: list[str]


@dataclass
class Options:
    num_negatives: int
    teacher: bool  # teacher scores exist
    scores: bool  # labeled formats carry scores instead of 0/1 labels


def left_out(q: QueryRecord, fmt: str, skipped: dict[str, int], need: int = 1) -> bool:
    """True (and counted) when the query has fewer than `need` negatives, so `fmt` writes no row for it."""
    if len(q.neg_texts) >= need:
        return False
    skipped[fmt] = skipped.get(fmt, 0) + 1
    return True


Format = tuple[Callable[[Options], pa.Schema], Callable[[QueryRecord, Options, dict[str, list], dict[str, int]], None]]


def _registry() -> dict[str, Format]:
    from negmine.formats import flagembedding, ids, sentence_transformers as st, tevatron

    return {
        "triplet": (st.triplet_schema, st.triplet_rows),
        "n-tuple": (st.ntuple_schema, st.ntuple_rows),
        "labeled-pair": (st.labeled_pair_schema, st.labeled_pair_rows),
        "labeled-list": (st.labeled_list_schema, st.labeled_list_rows),
        "margin-mse": (st.margin_mse_schema, st.margin_mse_rows),
        "flagembedding": (flagembedding.schema, flagembedding.rows),
        "tevatron": (tevatron.schema, tevatron.rows),
        "ids": (ids.schema, ids.rows),
    }


FORMATS: dict[str, Format] = _registry()
NEEDS_SCORES = {"margin-mse"}  # formats that need positive and negative scores on one scale


def empty_rows(schema: pa.Schema) -> dict[str, list[Any]]:
    return {name: [] for name in schema.names}
