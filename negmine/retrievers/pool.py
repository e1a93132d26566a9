"""The `retrieve` stage: the single configured retriever's search, or the fusion of several retrievers' candidates
(each then cached on its own as `retrieve-<name>`, so adding a retriever never recomputes another)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from negmine import schema
from negmine.retrievers import MEMORY_ONLY, RETRIEVERS, Retriever
from negmine.stage import Config, Context, Inputs, Params, Stage


def _single(cfg: Config) -> Retriever | None:
    names = cfg["retrieve"]["retrievers"]
    return RETRIEVERS[names[0]] if len(names) == 1 else None


def _pool_reads(cfg: Config) -> tuple[str, ...]:
    one = _single(cfg)
    return one.search.reads(cfg) if one else ("ingest",) + tuple(f"retrieve-{n}" for n in cfg["retrieve"]["retrievers"])


def _pool_params(cfg: Config, ctx: Context) -> dict[str, Any]:
    one = _single(cfg)
    if one:  # its search runs as this stage: its code version enters this key
        return {"retriever": one.name, "retriever_version": one.search.version, **one.search.params(cfg, ctx)}
    r = cfg["retrieve"]
    p = {"retrievers": r["retrievers"], "fusion": r["fusion"], "rrf_k": r["rrf_k"], "top_k": r["top_k"],
         "chunk_size": r["chunk_size"], "memory_budget": cfg["run"]["memory_budget"]}
    if r["fusion"] == "union":
        p["union_quota"] = r["union_quota"]
    return p


def _pool_run(inputs: Inputs, params: Params, out_dir: Path) -> dict[str, Any]:
    if "retriever" in params:
        return RETRIEVERS[params["retriever"]].search.run(inputs, params, out_dir)
    from negmine.retrieve import fuse_candidates

    names = list(params["retrievers"])
    return fuse_candidates(params, inputs["ingest"], [inputs[f"retrieve-{n}"] / schema.CANDIDATES_FILE
                                                      for n in names], names, out_dir)


def stage() -> Stage:
    """The declaration, built when asked: its unkeyed settings are those of every registered retriever's search."""
    unkeyed = dict(MEMORY_ONLY)
    for r in RETRIEVERS.values():
        unkeyed.update(r.search.unkeyed)
    return Stage(name="retrieve", version="3", command="retrieve", reads=_pool_reads, params=_pool_params,
                 run=_pool_run, outputs=(schema.CANDIDATES_FILE, schema.POSITIVE_SCORES_FILE), section="retrieve",
                 unkeyed=unkeyed)
