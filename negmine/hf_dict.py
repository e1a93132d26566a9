"""The `hf` file type: the exported tables as one Hugging Face `DatasetDict` saved to disk, one split a table, and
its optional push to the Hub (`[export] hub_repo`).

The folder is exactly what `DatasetDict.save_to_disk` writes (`dataset_dict.json`; a folder a split holding an
Arrow IPC stream, `dataset_info.json` and `state.json`), so `datasets.load_from_disk` reads it and a trainer takes a
split as it is. It is written here rather than by `save_to_disk` for two reasons: each split streams chunk by chunk
into its Arrow file like the Parquet and JSONL files (no table is held whole), and the same data gives the same
bytes (save_to_disk records a fingerprint that depends on the process; here it is the data file's SHA-256).
Split names are the formats' names with `_` for `-` (the Hub accepts only word characters in a split name):
`triplet`, `n_tuple`, `st_ids`, `st_ids_queries`, `st_ids_documents`, ...
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa

from negmine.errors import NegmineError

FOLDER = "hf"
DATA_FILE = "data-00000-of-00001.arrow"


class HubPushError(NegmineError):
    """The DatasetDict could not be pushed to the Hub; the files on disk are kept."""


def split_name(fmt: str, part: str = "") -> str:
    return (fmt + (f"_{part}" if part else "")).replace("-", "_")


def _info(schema: pa.Schema) -> dict:
    from datasets import DatasetInfo, Features

    return asdict(DatasetInfo(features=Features.from_arrow_schema(schema.remove_metadata())))


def arrow_metadata(schema: pa.Schema) -> dict[bytes, bytes]:
    """The schema metadata `datasets` writes into its Arrow files (the features)."""
    return {b"huggingface": json.dumps({"info": {"features": _info(schema)["features"]}}).encode("utf-8")}


def finish_split(split_dir: Path, schema: pa.Schema) -> None:
    """A split's state.json and dataset_info.json, as save_to_disk writes them, once its Arrow file is closed."""
    digest = hashlib.sha256((split_dir / DATA_FILE).read_bytes()).hexdigest()
    state = {"_data_files": [{"filename": DATA_FILE}], "_fingerprint": digest[:16], "_format_columns": None,
             "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": split_dir.name}
    (split_dir / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    info = _info(schema)
    (split_dir / "dataset_info.json").write_text(json.dumps({k: info[k] for k in sorted(info)}, indent=2),
                                                 encoding="utf-8")


def finish_dict(folder: Path, splits: list[str]) -> None:
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": splits}), encoding="utf-8")


def push(folder: Path, repo: str) -> None:
    """Push the saved DatasetDict at `folder` to the Hub dataset repo `repo` (created private if it does not
    exist). Offline, logged out or refused: one line saying so; the files on disk stay as they are."""
    from negmine.ingest.hf import offline

    kept = f"the outputs on disk are kept in {folder.parent}"
    if offline():
        raise HubPushError(f"[export] hub_repo {repo}: not pushed, HF_HUB_OFFLINE is set; {kept}: push them later "
                           f"online (unset HF_HUB_OFFLINE and run again; the run is cached)")
    from huggingface_hub import get_token

    if get_token() is None:
        raise HubPushError(f"[export] hub_repo {repo}: not pushed, not logged in to the Hugging Face Hub; {kept}: "
                           "log in (hf auth login, or set HF_TOKEN) and run again")
    from datasets import load_from_disk

    try:
        load_from_disk(str(folder)).push_to_hub(repo, private=True)
    except Exception as exc:  # HTTP errors (no network, no write access, a bad name) of huggingface_hub
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HubPushError(f"[export] hub_repo {repo}: not pushed ({type(exc).__name__}: {first}); {kept}") from None
