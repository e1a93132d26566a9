"""Content-addressed stage cache (in the manner of DVC).

A stage's key hashes its name, its code version, its parameters, the keys of the stages it reads and the content
of the input files it reads. An entry is a folder `<root>/<stage>/<key>/` holding the stage's tables and a
`meta.json`; it is written under a temporary name and renamed into place, so a killed run never leaves half an
entry, and a rerun resumes at the first stage without one. `<root>/<stage>/last.json` remembers the parts of the
last key computed, so a run can say *why* a stage ran ("parameters changed: k1").

An entry is trusted only after it is verified: `meta.json` records the size and SHA-256 of every file, and a hit
checks them all; a damaged entry (truncated, edited, zeroed, missing a file, unreadable meta) is reported in one
line and computed again, never used. Writers of one key take an inter-process lock (`fcntl.flock` on
`<stage>/.lock-<key>`), so concurrent runs on one cache compute each entry once and the others wait and reuse it.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from negmine.errors import resource_error
from negmine.hashing import file_sha256, hash_obj
from negmine.io import atomic_dir, atomic_write_text

log = logging.getLogger("negmine.cache")
# folders left by killed runs are "stale" only if older than this process: a younger one may be another run's
PROCESS_START = time.time()
_LEFTOVER = (".tmp-", ".partial-", ".damaged-", ".old-")


@dataclass
class StageResult:
    stage: str
    key: str
    path: Path
    status: str  # "cached" | "computed"
    reason: str
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def message(self) -> str:
        what = "cached" if self.status == "cached" else f"computed ({self.reason})"
        took = f" in {self.seconds:.1f}s" if self.status == "computed" else ""
        return f"{self.stage:<8} {what}{took}  [{self.key[:12]}]"


def _why(old: dict[str, Any] | None, new: dict[str, Any], entry_missing: bool) -> str:
    if old is None:
        return "no cached result"
    if old.get("version") != new["version"]:
        return "stage code changed"
    # upstream first: a parameter derived from upstream work (the export's provenance) changes with it
    changed_up = sorted(k for k in set(old["upstream"]) | set(new["upstream"])
                        if old["upstream"].get(k) != new["upstream"].get(k))
    if changed_up:
        return "upstream changed: " + ", ".join(changed_up)
    changed_params = sorted(k for k in set(old["params"]) | set(new["params"])
                            if old["params"].get(k) != new["params"].get(k))
    if changed_params:
        return "parameters changed: " + ", ".join(changed_params)
    changed_inputs = sorted(k for k in set(old["inputs"]) | set(new["inputs"])
                            if old["inputs"].get(k) != new["inputs"].get(k))
    if changed_inputs:
        return "input changed: " + ", ".join(Path(k).name for k in changed_inputs)
    return "no cached result" if entry_missing else "forced"


def file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file under `folder` (but meta.json), by relative path: what a verify checks."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != "meta.json":
            out[p.relative_to(folder).as_posix()] = {"size": p.stat().st_size, "sha256": file_sha256(p)}
    return out


def read_meta(entry: Path) -> dict[str, Any] | None:
    """The entry's meta.json, or None when it is missing or unreadable."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def check_entry(entry: Path, hashes: bool = True) -> str | None:
    """What is wrong with a complete-looking entry (one short phrase naming the file), or None if it verifies.

    Sizes are always compared; with `hashes`, every file's content too (a zeroed or edited file keeps its size).
    """
    meta_path = entry / "meta.json"
    meta = read_meta(entry)
    if meta is None:
        return f"{meta_path} is unreadable (truncated or not JSON)"
    files = meta.get("files")
    if not isinstance(files, dict):
        return f"{meta_path} records no file checksums (written by an older negmine)"
    for name, rec in files.items():
        path = entry / name
        if not isinstance(rec, dict):
            return f"{meta_path} has no size and checksum for {name}"
        try:
            size = path.stat().st_size
        except OSError:
            return f"{path} is missing"
        if size != rec.get("size"):
            return f"{path} has {size} bytes, {rec.get('size')} recorded"
        if hashes and file_sha256(path) != rec.get("sha256"):
            return f"{path} does not match its recorded SHA-256 (edited or damaged)"
    return None


@contextlib.contextmanager
def file_lock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive inter-process lock on `path` (created if needed, removed on release); yields False when
    `blocking` is False and another process holds it.

    The file is unlinked by its holder on release; a waiter that then wins the lock on the unlinked inode sees
    that the path no longer names its file and tries again, so two processes never both hold "the" lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)  # closing releases the flock


def _lock_path(stage_dir: Path, key: str) -> Path:
    return stage_dir / f".lock-{key}"


def _leftover_key(name: str) -> str | None:
    for prefix in _LEFTOVER:
        if name.startswith(prefix):
            return name[len(prefix):].split("-", 1)[0]
    return None


def clean_stale(stage_dir: Path, held_key: str | None = None) -> int:
    """Remove what killed or failed runs left in a stage folder: `.tmp-*`, `.damaged-*` and `.old-*` folders
    older than this process, and `.partial-<key>` folders whose entry is complete. A folder is removed only while
    its key's lock is free (no running process is writing it); a `.partial-*` without an entry is kept, since it
    is resume state. `held_key`: a key whose lock this process already holds. Returns the number removed."""
    removed = 0
    if not stage_dir.is_dir():
        return 0
    for folder in sorted(stage_dir.iterdir()):
        key = _leftover_key(folder.name)
        if key is None or not folder.is_dir():
            continue
        try:
            old = folder.stat().st_mtime < PROCESS_START
        except OSError:
            continue
        partial = folder.name.startswith(".partial-")
        if partial and read_meta(stage_dir / key) is None:
            continue
        if not partial and not old:
            continue
        lock = contextlib.nullcontext(True) if key == held_key else file_lock(_lock_path(stage_dir, key), False)
        with lock as held:
            if held and folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
                log.debug("removed %s, left by a killed or failed run", folder)
    return removed


def _set_aside(entry: Path) -> None:
    """Take a damaged or replaced entry out of the way by renaming (atomic), then delete it."""
    aside = entry.parent / f".damaged-{entry.name}-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.replace(entry, aside)
    shutil.rmtree(aside, ignore_errors=True)


# Folders of the cache root that are stores shared by runs, not stage entries: the teacher's pair stores
# (negmine.score) and the LLM judge's verdict stores (negmine.judge); each checks its own parts.
STORES = ("pairs", "judge-verdicts")


class StageCache:
    def __init__(self, root: Path, force: bool = False, persistent: bool = True) -> None:
        self.root = Path(root)
        self.force = force
        self.persistent = persistent  # False: a throwaway cache, deleted after the run

    def run(self, stage: str, version: str, params: dict[str, Any], upstream: dict[str, str],
            inputs: dict[str, str], compute: Callable[[Path], dict[str, Any]],
            resumable: bool = False) -> StageResult:
        """Return the cached entry for these parts, verified, or compute it into a fresh atomic folder.

        A `resumable` stage computes into `.partial-<key>`, which outlives a crash: the stage saves finished pieces
        there (atomically) and skips them when run again. The folder becomes the entry only when complete. Both
        happen under the key's lock: a second process waits, then finds the entry and reuses it.
        """
        parts = {"stage": stage, "version": version, "params": params, "upstream": upstream, "inputs": inputs}
        key = hash_obj(parts)
        stage_dir = self.root / stage
        entry = stage_dir / key
        if not self.force and (entry / "meta.json").is_file() and check_entry(entry) is None:
            return self._cached(stage, key, entry)
        created_root, created_stage = not self.root.exists(), not stage_dir.exists()
        try:
            with file_lock(_lock_path(stage_dir, key)):
                return self._compute(stage, key, entry, parts, compute, resumable)
        except BaseException as exc:
            # a failed stage leaves no trace: no empty stage folder, no cache folder this run created
            for folder, made in ((stage_dir, created_stage), (self.root, created_root)):
                if made:
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            err = resource_error(exc, stage, entry)
            if err is not None:
                raise err from exc
            raise

    def _cached(self, stage: str, key: str, entry: Path) -> StageResult:
        meta = read_meta(entry) or {}
        return StageResult(stage, key, entry, "cached", "", meta.get("stats", {}), meta.get("seconds", 0.0))

    def _compute(self, stage: str, key: str, entry: Path, parts: dict[str, Any],
                 compute: Callable[[Path], dict[str, Any]], resumable: bool) -> StageResult:
        stage_dir = entry.parent
        damage = None
        if entry.exists():
            damage = check_entry(entry)
            if damage is None and not self.force:  # another process computed it while this one waited
                return self._cached(stage, key, entry)
        clean_stale(stage_dir, key)
        last_path = stage_dir / "last.json"
        try:
            last = json.loads(last_path.read_text()) if last_path.is_file() else None
        except ValueError:
            last = None
        if damage is not None:
            log.warning("cache entry %s/%s is damaged (%s); computing it again", stage, key[:12], damage)
            _set_aside(entry)
            reason = "cached entry damaged"
        else:
            reason = "forced" if self.force else _why(last, parts, True)
        start = time.perf_counter()

        def finish(folder: Path) -> dict[str, Any]:
            stats = compute(folder)
            meta = {**parts, "key": key, "stats": stats, "seconds": time.perf_counter() - start,
                    "created": time.time(), "files": file_records(folder)}
            (folder / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
            return meta

        if resumable:
            work = stage_dir / f".partial-{key}"
            if self.force:
                shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True, exist_ok=True)
            meta = finish(work)
            if entry.exists():  # forced: swap the old one out by rename, so the path is never half-written
                old = stage_dir / f".old-{key}-{os.getpid()}"
                os.replace(entry, old)
                os.replace(work, entry)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(work, entry)
        else:
            with atomic_dir(entry) as tmp:
                meta = finish(tmp)
        stats, seconds = meta["stats"], meta["seconds"]
        atomic_write_text(last_path, json.dumps(parts, default=str))
        return StageResult(stage, key, entry, "computed", reason, stats, seconds)

    def entries(self, hashes: bool = False) -> list[dict[str, Any]]:
        """Every entry with its size, times and `damaged` (None, or what is wrong). Sizes are always checked,
        contents only with `hashes` (`negmine cache verify`)."""
        out = []
        if not self.root.is_dir():
            return out
        for entry in sorted(p for p in self.root.glob("*/*") if p.is_dir() and not p.name.startswith(".")
                            and p.parent.name not in STORES):
            meta = read_meta(entry) or {}
            if not meta and not (entry / "meta.json").exists() and not any(entry.iterdir()):
                continue
            size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
            out.append({"stage": meta.get("stage", entry.parent.name), "key": meta.get("key", entry.name),
                        "path": str(entry), "bytes": size, "created": meta.get("created", 0.0),
                        "seconds": meta.get("seconds", 0.0), "damaged": check_entry(entry, hashes)})
        return out

    def remove(self, entry: Path) -> None:
        """Delete one entry, under its lock (a run writing it finishes first)."""
        with file_lock(_lock_path(entry.parent, entry.name)):
            _set_aside(entry)

    def clear(self, stage: str | None = None) -> int:
        """Remove entries (of one stage, or all) and the temporary or partial folders of killed runs; returns the
        number of entries removed."""
        if not self.root.is_dir():
            return 0
        removed = 0
        for stage_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if stage is not None and stage_dir.name != stage:
                continue
            for entry in stage_dir.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += not entry.name.startswith(".")  # .tmp-* and .partial-* are leftovers
            (stage_dir / "last.json").unlink(missing_ok=True)
        return removed
