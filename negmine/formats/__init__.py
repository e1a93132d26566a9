"""Export formats, one family a module, registered in `FORMATS` for the config's [export] formats.

Each format registers a `Format`: a schema function (options) -> pa.Schema, a rows function (query record,
options, rows out, skipped counter) that appends one query's rows, and what the config checks ask about it. A
format made of several tables (a rows table that names ids, plus lookup tables of their texts) declares its
`companions`; its rows function then fills a `Tables`. A query record (`QueryRecord`) carries everything a format may
need, so formats never read files themselves.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
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
    neg: dict[str, list]  # doc_id, doc_idx, rank, score, teacher_score, filter_score (and teacher: ensembles)
    neg_titles: list[str]
    neg_bodies: list[str]
    neg_texts: list[str]
    cluster: int | None = None  # the query's topic cluster ([cluster] on; negmine.cluster)


@dataclass
class Options:
    num_negatives: int
    teacher: bool  # teacher scores exist
    scores: bool  # labeled formats carry scores instead of 0/1 labels
    score_type: str = ""  # of the scores the filters read (probability, logit, cosine, dot, bm25, rrf)
    clusters: bool = False  # every record has a cluster ([cluster] on): audit layouts name it
    ensemble: bool = False  # a teacher ensemble sampled: neg["teacher"] names the teacher of each negative


def left_out(q: QueryRecord, fmt: str, skipped: dict[str, int], need: int = 1) -> bool:
    """True (and counted) when the query has fewer than `need` negatives, so `fmt` writes no row for it."""
    if len(q.neg_texts) >= need:
        return False
    skipped[fmt] = skipped.get(fmt, 0) + 1
    return True


@dataclass
class Tables:
    """What the rows function of a format with companion tables fills: its main table's rows, each companion's
    rows, and the ids each companion already holds. `seen` lives for the whole export, so an id is written once
    however many chunks name it."""

    main: dict[str, list]
    companions: dict[str, dict[str, list]]
    seen: dict[str, set[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Format:
    """A registered export format: schema(options) -> pa.Schema and rows(record, options, rows out, skipped).

    `needs_scores`: it needs positive and negative scores on one scale (refused on fused RRF scores);
    `needs_scores_with_option`: so does it when [export] scores is on; `every_query`: it writes a row for every
    mined query, with empty lists when sampling gave none, and for each id of queries that share a text (an audit
    layout), where training formats write a (text, positive) pair once. `companions(options)`: the schemas of
    further tables, by name, written beside the main one as `<format>-<name>.<file type>`; `rows` then gets a
    `Tables` instead of a rows dict.
    """

    name: str
    schema: Callable[[Options], pa.Schema]
    rows: Callable[[QueryRecord, Options, dict[str, list], dict[str, int]], None]
    needs_scores: bool = False
    needs_scores_with_option: bool = False
    every_query: bool = False
    help: str = ""
    companions: Callable[[Options], dict[str, pa.Schema]] | None = None


FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Add an export format: [export] formats and --help learn it from here."""
    FORMATS[fmt.name] = fmt
    return fmt


def empty_rows(schema: pa.Schema) -> dict[str, list[Any]]:
    return {name: [] for name in schema.names}


# the built-in formats register themselves, in this order
from negmine.formats import sentence_transformers, flagembedding, tevatron, ids, st_ids  # noqa: E402,F401,I001
