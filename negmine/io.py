"""Atomic file output: everything is written beside its target under a temporary name, then renamed.

A run that is killed or fails half-way leaves the previous file (or none), never a truncated one.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa


def umask() -> int:
    """The process's umask (read without changing it for good)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600; the published file gets the mode a plain open() would
            os.chmod(tmp_path, 0o666 & ~umask())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; rename it into place only when the block succeeds.

    An existing `target` (a forced recompute) is replaced: entries are content-addressed, so the new one holds
    the same result computed again. It is renamed aside first, so `target` is never a half-deleted folder.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700
        if target.exists():
            old = target.parent / f".old-{target.name}-{os.getpid()}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_parquet(path: Path | str, columns: list[str] | None = None, memory_map: bool = False) -> "pa.Table":
    """One Parquet file as a table, as `pyarrow.parquet.read_table` reads it, without its dataset layer: that
    import (pyarrow.dataset, which imports pandas) costs about a second of every process that reads a table."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path, memory_map=memory_map) as pf:
        return pf.read(columns=columns)
