"""Hugging Face datasets as input: a dataset saved with `save_to_disk` (a `Dataset`, or one split of a
`DatasetDict`), and a Hub dataset (`hf://datasets/ORG/NAME`) already in the local Hugging Face cache.

A saved dataset's data files are Arrow IPC streams listed in its `state.json` (`save_to_disk` flattens any
indices mapping first, so the files hold exactly the rows, in order): they are read batch by batch, memory-mapped,
without importing `datasets`. A Hub dataset is the snapshot folder huggingface_hub keeps in its cache
(`HF_HUB_CACHE`, by default `~/.cache/huggingface/hub`); nothing is downloaded unless `[input] allow_download`
says so, and never when `HF_HUB_OFFLINE` is set. Its split's data files (Hugging Face's naming conventions:
`data/train-00000-of-00002.parquet`, `train.jsonl`, `train/*.parquet`) are read as shards.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from negmine.errors import InputError
from negmine.ingest.collect import Loc, Problems
from negmine.ingest.shards import SHARD_SUFFIXES, shard_files

HUB_PREFIX = "hf://datasets/"
_HUB = re.compile(r"hf://datasets/([\w.-]+(?:/[\w.-]+)?)(?:@([\w./-]+))?/?")
_SPLIT_WORDS = ("train", "validation", "valid", "dev", "test", "eval")


def hub_id(path: str) -> tuple[str, str | None] | None:
    """(repo id, revision) of a `hf://datasets/ORG/NAME[@REVISION]` path; None for any other path."""
    if not path.startswith("hf://"):
        return None
    m = _HUB.fullmatch(path)
    if m is None:
        raise InputError(path, "is not a Hub dataset path", "write it as hf://datasets/ORG/NAME (optionally "
                         "@REVISION)")
    return m.group(1), m.group(2)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def offline() -> bool:
    """Offline mode as the environment says now (huggingface_hub reads it once, at its import)."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def hub_cache() -> Path:
    """The Hub cache folder as the environment says now: HF_HUB_CACHE, else HF_HOME/hub, else huggingface_hub's."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expanduser(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        return Path(os.path.expanduser(os.environ["HF_HOME"])) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def snapshot(path: str, allow_download: bool) -> Path:
    """The local snapshot folder of a Hub dataset: from the cache, or downloaded when allowed and online."""
    repo, revision = hub_id(path)  # type: ignore[misc]
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise InputError(path, "is a Hub dataset, which needs huggingface_hub", "pip install 'negmine[hf]'") from None
    cache = hub_cache()
    local_only = not allow_download or offline()
    try:
        return Path(snapshot_download(repo, repo_type="dataset", revision=revision, cache_dir=cache,
                                      local_files_only=local_only))
    except LocalEntryNotFoundError:
        if not allow_download:
            raise InputError(path, f"is not in the local Hugging Face cache ({cache})",
                             f"download it first (hf download {repo} --repo-type dataset) or set [input] "
                             "allow_download = true") from None
        if offline():
            raise InputError(path, f"is not in the local Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set",
                             f"unset HF_HUB_OFFLINE to download it, or download it elsewhere (hf download {repo} "
                             "--repo-type dataset) into this cache") from None
        raise InputError(path, "could not be downloaded (no connection to the Hub)",
                         "check the network, or download it into the cache first") from None
    except Exception as exc:  # huggingface_hub's HTTP errors: not found, gated, unauthorised
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(path, f"could not be downloaded ({type(exc).__name__}: {first})",
                         "check the dataset id, your access to it (hf auth login) and the network") from None


def saved_split(folder: Path, split: str) -> Path | None:
    """The folder of the `Dataset` saved at `folder` (the `split` of a saved `DatasetDict`); None when `folder`
    holds no saved dataset."""
    if (folder / "dataset_dict.json").is_file():
        try:
            splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError):
            raise InputError(folder / "dataset_dict.json", "is not a readable DatasetDict index",
                             "save the dataset again with DatasetDict.save_to_disk") from None
        if split not in splits:
            raise InputError(folder, f"has no split {split!r} (splits: {', '.join(map(str, splits))})",
                             "set [input] split to one of them")
        return folder / split
    if (folder / "state.json").is_file():
        return folder
    return None


def saved_files(split_dir: Path) -> list[Path]:
    """The Arrow files of a saved `Dataset`, in order (from its state.json), then its state.json."""
    state_path = split_dir / "state.json"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        names = [f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(state_path, "is not a saved dataset's state (no _data_files list)",
                         "save the dataset again with Dataset.save_to_disk") from None
    files = [split_dir / n for n in names]
    for f in files:
        if not f.is_file():
            raise InputError(f, "is missing: the saved dataset's state.json lists it",
                             "save the dataset again with Dataset.save_to_disk")
    return files + [state_path]


def saved_columns(split_dir: Path) -> list[str]:
    files = saved_files(split_dir)[:-1]
    if not files:
        raise InputError(split_dir, "the saved dataset has no data file", "save a dataset with rows")
    return _open(files[0]).schema.names


def _open(path: Path) -> pa.ipc.RecordBatchStreamReader:
    try:
        return pa.ipc.open_stream(pa.memory_map(str(path)))
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(path, f"not a readable Arrow file ({exc})", "save the dataset again with "
                         "Dataset.save_to_disk") from None


def saved_records(split_dir: Path, problems: Problems) -> Iterator[tuple[Loc, dict]]:
    """Rows of a saved `Dataset`, batch by batch from its memory-mapped Arrow files, numbered from 1."""
    row = 0
    for path in saved_files(split_dir)[:-1]:
        reader = _open(path)
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(path, f"not a readable Arrow file ({exc})", "save the dataset again with "
                                 "Dataset.save_to_disk") from None
            for rec in batch.to_pylist():
                row += 1
                yield Loc(split_dir, row, "row"), rec


def split_shards(snapshot_dir: Path, split: str, label: str) -> list[Path]:
    """The data files of `split` in a Hub snapshot, by Hugging Face's conventions: a path part named after the
    split (`train/`, `train.jsonl`, `train-00000-of-00002.parquet`, `data/train_0.parquet`); a snapshot whose files
    name no split at all is one `train` split."""
    files = shard_files(snapshot_dir)
    rel = {p: p.relative_to(snapshot_dir).as_posix().lower() for p in files}

    def names(word: str) -> re.Pattern:
        return re.compile(rf"(^|[/_.-]){re.escape(word.lower())}([/_.-]|$)")

    mine = [p for p in files if names(split).search(rel[p])]
    if mine:
        return mine
    named = sorted({w for w in _SPLIT_WORDS for p in files if names(w).search(rel[p])})
    if not named and split == "train":
        return files
    raise InputError(label, f"has no data files for split {split!r}"
                     + (f" (splits: {', '.join(named)})" if named else ""), "set [input] split")


def is_shard(path: Path) -> bool:
    return path.suffix.lower() in SHARD_SUFFIXES
