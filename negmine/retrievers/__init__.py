"""Retrievers, one module each, registered with what the rest of negmine asks about them.

A `Retriever` carries its config section, the stages that build what it searches (`negmine.retrievers.bm25`:
the BM25 index; `negmine.retrievers.dense`: the embeddings and an optional approximate index), its search stage
(top-k candidates of every mined query, and its own score of every positive) and the type of its scores, which
`config.validate` checks filters and samplers against. `negmine.retrievers.pool` is the `retrieve` stage: one
retriever's search, or the fusion of several, each of which is then cached on its own as `retrieve-<name>`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from negmine import schema
from negmine.stage import Config, Context, Inputs, Params, Stage

MEMORY_ONLY = {"chunk_size": "queries a chunk: bounds memory, not the candidates",
               "memory_budget": "sizes the query chunks and product blocks: bounds memory, not the candidates"}


@dataclass(frozen=True)
class Retriever:
    name: str
    section: str | None  # its config section, e.g. [bm25]
    stages: tuple[Stage, ...]  # what it builds before searching, in order (index, encode, ann, ...)
    search: Stage  # reads (ingest + its stages), params, run: candidates.parquet and positive_scores.parquet
    score_type: Callable[[Config], str]  # bm25, cosine, dot, ...
    help: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)  # its section's settings, when config lacks them
    # its own score of any (query, corpus row) pairs, found by it or not, so that it can be a teacher of an
    # ensemble (negmine.teachers): (entries of `pair_reads`, its section's settings and the memory budget, the
    # mined queries' texts, each pair's query position and corpus row) -> scores
    score_pairs: Callable[[Mapping[str, Path], Mapping[str, Any], list[str], Any, Any], Any] | None = None
    pair_reads: tuple[str, ...] = ()  # the stages whose entries score_pairs reads


RETRIEVERS: dict[str, Retriever] = {}


def register(r: Retriever) -> Retriever:
    """Add a retriever: [retrieve] retrievers, the stage list, the score-type checks and --help learn it here."""
    RETRIEVERS[r.name] = r
    return r


def search_stage(name: str, version: str, reads: Callable[[Config], tuple[str, ...]],
                 params: Callable[[Config, Context], Mapping[str, Any]],
                 run: Callable[[Inputs, Params, Path], dict[str, Any]]) -> Stage:
    """A retriever's search, cached on its own as `retrieve-<name>` when several retrievers are fused."""
    return Stage(name=f"retrieve-{name}", version=version, command="retrieve", reads=reads, params=params, run=run,
                 outputs=(schema.CANDIDATES_FILE, schema.POSITIVE_SCORES_FILE), section="retrieve",
                 enabled=lambda cfg: len(cfg["retrieve"]["retrievers"]) > 1 and name in cfg["retrieve"]["retrievers"],
                 unkeyed=MEMORY_ONLY)


def score_type(cfg: Config) -> str:
    """The type of the candidates' retrieval scores: the retriever's own, or "rrf" for a fused pool."""
    names = cfg["retrieve"]["retrievers"]
    return "rrf" if len(names) > 1 else RETRIEVERS[names[0]].score_type(cfg)


def stages() -> list[Stage]:
    """Every registered retriever's stages, then their searches (`negmine.retrievers.pool` comes after them)."""
    return [s for r in RETRIEVERS.values() for s in r.stages] + [r.search for r in RETRIEVERS.values()]


__all__ = ["Retriever", "RETRIEVERS", "register", "search_stage", "score_type", "stages"]

# the built-in retrievers register themselves
from negmine.retrievers import bm25, dense, sparse  # noqa: E402,F401,I001
