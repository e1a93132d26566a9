"""Ingest stage: any supported input into the normalised tables corpus, queries and qrels (see `schema`).

`ingest(params, out_dir)` writes the tables of `negmine.tables` (corpus, queries, qrels, the held-out pairs, the
mined queries' positives) into `out_dir` and returns counts. With `skip_invalid` a record-level problem is skipped and counted; otherwise the first one raises an
`InputError` naming file, line and fix (the caller writes into a temporary folder, so nothing is left behind).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from negmine import tables
from negmine.errors import InputError
from negmine.ingest import hf
from negmine.ingest.beir import beir_files, read_beir
from negmine.ingest.collect import Problems, TableBuilder
from negmine.ingest.pairs import (PairColumns, add_pairs, read_corpus_file, read_flagembedding, read_pairs,
                                  sniff_jsonl)
from negmine.ingest.shards import is_glob, shard_files
from negmine.stage import Inputs, Params, Stage, reads

VERSION = "2"  # 2: positives.parquet and text.json are written here, once


@dataclass(frozen=True)
class Source:
    """What an input is, resolved once from [input] path and format.

    `fmt`: the format named in the stats (beir, pairs, flagembedding, hf); `reader`: which records the files hold
    (beir, pairs, flagembedding); `files`: the data files read in order (a single file, shards, a saved dataset's
    Arrow files); `saved`: the folder of a saved `Dataset` (its files are Arrow, read by `hf.saved_records`).
    """

    fmt: str
    reader: str
    path: Path | str  # a Hub dataset keeps its hf:// name, for messages
    files: tuple[Path, ...] = ()
    saved: Path | None = None


def _shards_reader(files: list[Path], fmt: str) -> str:
    """pairs, or flagembedding for JSONL shards whose first record has `pos` (format auto)."""
    if fmt == "auto" and files[0].suffix.lower() != ".parquet":
        return sniff_jsonl(files[0])
    return "flagembedding" if fmt == "flagembedding" else "pairs"


def _hf_folder(folder: Path, label: str | Path, params: dict[str, Any]) -> Source:
    """A saved dataset (the configured split of a DatasetDict), else the folder's shards."""
    split_dir = hf.saved_split(folder, params["split"])
    if split_dir is not None:
        return Source("hf", "pairs", label, tuple(hf.saved_files(split_dir)), split_dir)
    if str(label).startswith(hf.HUB_PREFIX):
        return Source("hf", "pairs", label, tuple(hf.split_shards(folder, params["split"], str(label))))
    return Source("hf", "pairs", folder, tuple(shard_files(folder)))


def resolve(params: dict[str, Any]) -> Source:
    """The input's kind and files; a path that does not exist, or is not what its format needs, is one line."""
    raw, fmt = params["path"], params["format"]
    if raw is None:
        raise InputError(None, "no input given", "set [input] path in the config or pass --set input.path=PATH")
    if hf.hub_id(raw) is not None:
        if fmt not in ("auto", "hf"):
            raise InputError(raw, f"is a Hub dataset, but [input] format is {fmt!r}", 'set [input] format = "hf"')
        return _hf_folder(hf.snapshot(raw, params["allow_download"]), raw, params)
    path = Path(raw)
    if is_glob(raw) and not path.exists():
        if fmt == "beir":
            raise InputError(raw, "is a pattern, but a BEIR input is one folder", "give the folder itself")
        files = shard_files(raw)
        if fmt == "hf":
            return Source("hf", "pairs", path, tuple(files))
        reader = _shards_reader(files, fmt)
        return Source(reader, reader, path, tuple(files))
    if not path.exists():
        hint = " (a Hub dataset is written hf://datasets/ORG/NAME)" if fmt == "hf" else ""
        raise InputError(path, "not found", f"check [input] path{hint}")
    if path.is_dir():
        if fmt == "hf":
            return _hf_folder(path, path, params)
        if fmt == "auto":
            if hf.saved_split(path, params["split"]) is not None:
                return _hf_folder(path, path, params)
            beir_like = any((path / n).exists() for n in ("corpus.jsonl", "queries.jsonl", "qrels"))
            if not beir_like and any(hf.is_shard(p) for p in path.rglob("*")):
                files = shard_files(path)
                reader = _shards_reader(files, fmt)
                return Source(reader, reader, path, tuple(files))
            return Source("beir", "beir", path)
        if fmt == "beir":
            return Source("beir", "beir", path)
        files = shard_files(path)
        return Source(fmt, _shards_reader(files, fmt), path, tuple(files))
    if fmt == "beir":
        raise InputError(path, "not a folder", "a BEIR input is a folder with corpus.jsonl, queries.jsonl, qrels/")
    if fmt == "hf":
        if not hf.is_shard(path):
            raise InputError(path, "is not a dataset (a file that is neither Parquet nor JSONL)",
                             "give a dataset saved with save_to_disk, a folder or glob of shards, or "
                             "hf://datasets/ORG/NAME")
        return Source("hf", "pairs", path, (path,))
    if fmt == "auto":
        fmt = sniff_jsonl(path) if path.suffix.lower() in (".jsonl", ".json", ".ndjson") else "pairs"
    return Source(fmt, fmt, path, (path,))


def detect_format(params: dict[str, Any]) -> str:
    """The input's format; `params` may hold only some [input] settings (path, format): the rest are defaults."""
    from negmine.config import DEFAULTS

    return resolve({**DEFAULTS["input"], **params}).fmt


def input_files(params: dict[str, Any]) -> list[Path]:
    """The files whose content the ingest stage reads: its cache key hashes them."""
    src = resolve(params)
    if src.reader == "beir":
        return list(beir_files(src.path, params["split"]).values())
    files = list(src.files)
    if params["corpus"]:
        corpus = Path(params["corpus"])
        if not corpus.is_file():
            raise InputError(corpus, "corpus file not found", "check [input] corpus")
        files.append(corpus)
    return files


def ingest(params: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    src = resolve(params)
    problems = Problems(skip_invalid=params["skip_invalid"])
    builder = TableBuilder(out_dir, problems, params["use_title"], params["title_sep"])
    if src.reader == "beir":
        read_beir(src.path, params["split"], builder, problems, params["qrels_format"])
    else:
        if params["corpus"]:
            read_corpus_file(Path(params["corpus"]), builder, problems, params["corpus_text_column"],
                             params["corpus_title_column"])
        columns = PairColumns.from_params(params)
        if src.saved is not None:
            add_pairs(hf.saved_records(src.saved, problems),
                      columns.resolve(hf.saved_columns(src.saved), src.saved), builder, problems)
        else:
            for file in src.files:  # shards are streamed one after the other, as one input
                if src.reader == "flagembedding":
                    read_flagembedding(file, builder, problems)
                else:
                    read_pairs(file, builder, problems, columns)
    stats = builder.close(params["min_positive_score"], src.path, params["holdout_frac"], params["holdout_seed"])
    tables.write_derived(out_dir, params["min_positive_score"], params["use_title"], params["title_sep"])
    stats["format"] = src.fmt
    return stats


def _run(inputs: Inputs, params: Params, out_dir: Path) -> dict[str, Any]:
    return ingest(params, out_dir)


STAGE = Stage(
    name="ingest", version=VERSION, command="ingest", reads=reads(), section="input",
    params=lambda cfg, ctx: cfg["input"], run=_run, outputs=tables.FILES,
    unkeyed={"allow_download": "permission only: the downloaded files enter the key by content, as local ones do"},
    files=lambda cfg, ctx: ctx.input_hashes,  # the input files enter the key by content (sha256)
)
