"""A folder or glob of Parquet or JSONL shards, read as one input, shard after shard.

Sharded datasets (Hugging Face's `data/train-00000-of-00004.parquet`, a Spark or Ray `part-*.parquet` output) are
one input cut into files: reading them in the natural order of their paths and streaming each one gives the same
records, in the same order, as the concatenated file, without ever holding more than one batch in memory.
"""
from __future__ import annotations

import glob
import re
from pathlib import Path

from negmine.errors import InputError

PARQUET, JSONL = (".parquet",), (".jsonl", ".json", ".ndjson")
SHARD_SUFFIXES = PARQUET + JSONL


def is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _natural(path: Path) -> list:
    """Sort key that puts part-2 before part-10 (zero-padded names sort the same either way)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix())]


def _kind(path: Path) -> str:
    return "parquet" if path.suffix.lower() in PARQUET else "jsonl"


def shard_files(pattern: str | Path, under: Path | None = None) -> list[Path]:
    """The shards of a folder (every .parquet / .jsonl file in it or below, hidden ones left out) or of a glob
    pattern (`**` crosses folders), in natural path order. One kind only: Parquet and JSONL are not mixed."""
    text = str(pattern)
    if is_glob(text) and not Path(text).exists():
        files = [Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()]
        if not files:
            raise InputError(text, "the pattern matches no file", "check [input] path (a glob such as "
                             "data/train-*.parquet, or a folder of shards)")
        odd = [p for p in files if p.suffix.lower() not in SHARD_SUFFIXES]
        if odd:
            raise InputError(odd[0], "matches the input pattern but is neither Parquet nor JSONL",
                             "narrow the pattern to the shards, such as data/*.parquet")
    else:
        folder = Path(text)
        files = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SHARD_SUFFIXES
                 and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
        if not files:
            raise InputError(folder, "is not a dataset: no .parquet or .jsonl shard in it (nor a saved dataset's "
                             "dataset_dict.json or state.json)", "give a folder of shards, a glob, a dataset "
                             "saved with save_to_disk, or a BEIR folder")
    files.sort(key=_natural)
    kinds = {_kind(p) for p in files}
    if len(kinds) > 1:
        raise InputError(text, "mixes Parquet and JSONL shards", "give one kind, with a glob such as "
                         "data/*.parquet")
    return files
