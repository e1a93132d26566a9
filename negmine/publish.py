"""Publishing: the export entry's files copied into the output folder, all or nothing.

Every output is first written beside its destination under a temporary name (`.negmine-tmp-*`), its size and
SHA-256 checked against what the cache entry recorded; only when every file is written are they renamed into
place (renames need no space and do not fail half-way on a full disk). A failed publish (a full disk, a damaged
entry, a signal) removes its temporary files and leaves the previous outputs exactly as they were. Two runs
publishing into one folder take turns (an `fcntl.flock` on the folder itself, so nothing extra is left there).
An output that is a folder (the `hf` DatasetDict) is staged whole as a temporary folder, every file checked, and
swapped with the previous one in one atomic exchange (Linux `renameat2(RENAME_EXCHANGE)`; where the filesystem
lacks it, two renames), so a reader sees the old dataset or the new one, never a mix.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from negmine.cache import read_meta
from negmine.errors import ConfigError, NegmineError, resource_error
from negmine.io import umask

log = logging.getLogger("negmine.publish")
MANIFEST = ".negmine-outputs.json"
TMP_PREFIX = ".negmine-tmp-"
_START = time.time()


class DamagedEntryError(NegmineError):
    """An export entry's file no longer matches its checksum while it is being published."""


def check_output_dir(out_dir: Path) -> None:
    """Refuse, before any work, an output folder that is a file or cannot be written (read-only, no permission).

    Nothing is created: a temporary file is made and removed in the folder, or in its nearest existing parent.
    """
    out_dir = Path(out_dir)
    probe = out_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"[export] dir {out_dir}: {probe} is a file, not a folder; choose another output folder")
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=TMP_PREFIX):
            pass
    except OSError as exc:
        raise ConfigError(f"[export] dir {out_dir}: cannot write in {probe} ({exc.strerror or exc}); choose a "
                          "writable output folder with -o or [export] dir") from None


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _copy(src: Path, dest: Path) -> tuple[int, str]:
    """Copy `src` to `dest`; returns the size and SHA-256 of the bytes written."""
    h, size = hashlib.sha256(), 0
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while block := fin.read(1 << 20):
            fout.write(block)
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def _remove_stale_temporaries(out_dir: Path) -> None:
    for p in out_dir.glob(f"{TMP_PREFIX}*"):
        with contextlib.suppress(OSError):
            if p.lstat().st_mtime < _START:  # a killed publish's leftover (the folder is locked)
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.is_file():
                    p.unlink()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a filesystem without exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def _checked_copy(entry: Path, name: str, tmp: Path, records: dict) -> None:
    size, digest = _copy(entry / name, tmp)
    rec = records[name]
    if (size, digest) != (rec.get("size"), rec.get("sha256")):
        raise DamagedEntryError(f"cache entry {entry}: {name} no longer matches its recorded "
                                "checksum; run again to compute it anew (nothing was published)")


def publish(entry: Path, out_dir: Path, extra: dict[str, str | None] | None = None) -> list[Path]:
    """Publish the export entry's recorded files, plus `extra` texts by name (None: remove that file), into
    `out_dir`; returns the published paths.

    Files that an earlier run published here and this one does not (a format or file type taken out of the
    config) are removed, so the folder holds one run's outputs; a file negmine did not write is never touched.
    """
    out_dir = Path(out_dir)
    extra = extra or {}
    meta = read_meta(entry) or {}
    records = {n: r for n, r in (meta.get("files") or {}).items() if n != "meta.json"}
    files = sorted(n for n in records if "/" not in n)
    folders: dict[str, list[str]] = {}  # an output folder (hf/) and the files in it
    for n in sorted(records):
        if "/" in n:
            folders.setdefault(n.split("/", 1)[0], []).append(n)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []  # (temporary, destination)
    aside: list[Path] = []  # previous output folders, swapped out: removed once every rename is done
    dest = out_dir
    try:
        with _folder_lock(out_dir):
            _remove_stale_temporaries(out_dir)
            try:
                before = set(json.loads((out_dir / MANIFEST).read_text()))
            except (OSError, ValueError, TypeError):
                before = set()
            for name in folders:
                if (out_dir / name).exists() and name not in before:
                    raise ConfigError(f"[export] dir {out_dir}: {out_dir / name} exists and negmine did not "
                                      "write it; move it away or choose another output folder")
            mode = 0o666 & ~umask()
            names = files + sorted(n for n, t in extra.items() if t is not None)
            for name in names:
                dest = out_dir / name
                fd, tmp_name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{name}-", dir=out_dir)
                os.close(fd)
                tmp = Path(tmp_name)
                staged.append((tmp, dest))
                if name in records:
                    _checked_copy(entry, name, tmp, records)
                else:
                    tmp.write_text(extra[name], encoding="utf-8")
                os.chmod(tmp, mode)  # mkstemp makes 0600; outputs get the mode a plain open() would
            for name, members in folders.items():
                dest = out_dir / name
                tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-", dir=out_dir))
                staged.append((tmp, dest))
                for member in members:
                    target = tmp / member.split("/", 1)[1]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _checked_copy(entry, member, target, records)
                    os.chmod(target, mode)
                for d in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
                    os.chmod(d, 0o777 & ~umask())  # mkdtemp makes 0700
            dest = out_dir / MANIFEST
            outputs = [d for _, d in staged]
            fd, tmp_name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{MANIFEST}-", dir=out_dir)
            os.close(fd)
            staged.append((Path(tmp_name), dest))
            Path(tmp_name).write_text(json.dumps(sorted(p.name for p in outputs)) + "\n")
            os.chmod(tmp_name, mode)
            # every file is written: only now does the folder change, by renames
            for tmp, final in staged:
                if tmp.is_dir() and final.is_dir() and not final.is_symlink():
                    if _exchange(tmp, final):
                        aside.append(tmp)  # the exchange left the previous folder under the temporary name
                    else:
                        old = Path(tempfile.mktemp(prefix=f"{TMP_PREFIX}old-", dir=out_dir))  # under the lock
                        os.rename(final, old)
                        os.rename(tmp, final)
                        aside.append(old)
                else:
                    os.replace(tmp, final)
            staged = []
            for old in aside:
                shutil.rmtree(old, ignore_errors=True)
            for name in sorted(before - {p.name for p in outputs} | {n for n, t in extra.items() if t is None}):
                stale = out_dir / name
                if "/" in name or stale.is_symlink():
                    continue
                if stale.is_file():
                    stale.unlink()
                elif stale.is_dir():
                    shutil.rmtree(stale)
                else:
                    continue
                log.info("removed %s: the previous run's output, not produced by this one", stale)
            return outputs
    except BaseException as exc:
        for tmp, _ in staged:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        err = resource_error(exc, "export", dest)
        if err is not None:
            raise err from exc
        raise
