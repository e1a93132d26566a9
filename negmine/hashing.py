"""Fingerprints: stable ids for text-only inputs, normalised-text hashes, file and parameter hashes."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

_WS = re.compile(r"\s+")


def text_id(text: str, prefix: str) -> str:
    """A stable id for a text with no id of its own: identical texts share one id."""
    return prefix + hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def normalize(text: str) -> str:
    """Whitespace- and case-normalised text, the basis of exact-duplicate detection."""
    return _WS.sub(" ", text).strip().casefold()


def key64(text: str) -> int:
    """64-bit blake2b of a text, as a signed int64 (Arrow and numpy store it directly)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def norm_hash(text: str) -> int:
    """64-bit hash of the normalised text: the basis of exact-duplicate detection."""
    return key64(normalize(text))


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def hash_obj(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class FingerprintMemo:
    """Content hashes of input files, memoised by (path, size, mtime, inode) as DVC does.

    Hashing a large corpus on every run would cost more than the cached stages save, so a hash is reused while
    the file's stat is unchanged. The memo lives in the cache folder and is rewritten atomically.
    """

    def __init__(self, memo_path: Path | None) -> None:
        self.memo_path = memo_path
        self.memo: dict[str, Any] = {}
        if memo_path is not None and memo_path.is_file():
            try:
                self.memo = json.loads(memo_path.read_text())
            except (OSError, ValueError):
                self.memo = {}
        self.dirty = False

    def __call__(self, path: str | Path) -> str:
        path = Path(path).resolve()
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        entry = self.memo.get(str(path))
        if entry and entry.get("stat") == stamp:
            return entry["sha256"]
        digest = file_sha256(path)
        self.memo[str(path)] = {"stat": stamp, "sha256": digest}
        self.dirty = True
        return digest

    def save(self) -> None:
        if not self.dirty or self.memo_path is None:
            return
        from negmine.io import atomic_write_text

        self.memo_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.memo_path, json.dumps(self.memo))
        self.dirty = False


def seed_for(seed: int, query_id: str) -> int:
    """A per-query seed from the run's seed and the query id: sampling does not depend on order or chunking."""
    digest = hashlib.blake2b(f"{seed}\x00{query_id}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")

