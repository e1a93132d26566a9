"""Ingest stage: any supported input into the normalised tables corpus, queries and qrels (see `schema`).

`ingest(params, out_dir)` writes the tables of `negmine.tables` (corpus, queries, qrels, the held-out pairs, the
mined queries' positives) into `out_dir` and returns counts. With `skip_invalid` a record-level problem is skipped and counted; otherwise the first one raises an
`InputError` naming file, line and fix (the caller writes into a temporary folder, so nothing is left behind).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from negmine import tables
from negmine.errors import InputError
from negmine.ingest.beir import beir_files, read_beir
from negmine.ingest.collect import Problems, TableBuilder
from negmine.ingest.pairs import read_corpus_file, read_flagembedding, read_pairs, sniff_jsonl
from negmine.stage import Inputs, Params, Stage, reads

VERSION = "2"  # 2: positives.parquet and text.json are written here, once


def detect_format(params: dict[str, Any]) -> str:
    if params["path"] is None:
        raise InputError(None, "no input given", "set [input] path in the config or pass --set input.path=PATH")
    path = Path(params["path"])
    if not path.exists():
        raise InputError(path, "not found", "check [input] path")
    if params["format"] != "auto":
        return params["format"]
    if path.is_dir():
        return "beir"
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return sniff_jsonl(path)
    return "pairs"


def input_files(params: dict[str, Any]) -> list[Path]:
    """The files whose content the ingest stage reads: its cache key hashes them."""
    fmt = detect_format(params)
    path = Path(params["path"])
    if fmt == "beir":
        if not path.is_dir():
            raise InputError(path, "not a folder", "a BEIR input is a folder with corpus.jsonl, queries.jsonl, qrels/")
        return list(beir_files(path, params["split"]).values())
    if path.is_dir():
        raise InputError(path, f"is a folder, but [input] format is {fmt!r}", "give the file itself")
    files = [path]
    if params["corpus"]:
        corpus = Path(params["corpus"])
        if not corpus.is_file():
            raise InputError(corpus, "corpus file not found", "check [input] corpus")
        files.append(corpus)
    return files


def ingest(params: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    fmt = detect_format(params)
    problems = Problems(skip_invalid=params["skip_invalid"])
    builder = TableBuilder(out_dir, problems, params["use_title"], params["title_sep"])
    path = Path(params["path"])
    if fmt == "beir":
        read_beir(path, params["split"], builder, problems, params["qrels_format"])
    else:
        if params["corpus"]:
            read_corpus_file(Path(params["corpus"]), builder, problems, params["corpus_text_column"],
                             params["corpus_title_column"])
        if fmt == "flagembedding":
            read_flagembedding(path, builder, problems)
        else:
            read_pairs(path, builder, problems, params["query_column"], params["positive_column"],
                       params["negative_column"])
    stats = builder.close(params["min_positive_score"], path, params["holdout_frac"], params["holdout_seed"])
    tables.write_derived(out_dir, params["min_positive_score"], params["use_title"], params["title_sep"])
    stats["format"] = fmt
    return stats


def _run(inputs: Inputs, params: Params, out_dir: Path) -> dict[str, Any]:
    return ingest(params, out_dir)


STAGE = Stage(
    name="ingest", version=VERSION, command="ingest", reads=reads(), section="input",
    params=lambda cfg, ctx: cfg["input"], run=_run, outputs=tables.FILES,
    files=lambda cfg, ctx: ctx.input_hashes,  # the input files enter the key by content (sha256)
)
