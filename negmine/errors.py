"""Errors that end a run with one clear line and exit code 2.

Every problem with what the user gave (a file, a line, a config key) is a `UsageError`: it says where,
what is wrong and what to do. The CLI prints it as one line; the Python API raises it.
"""
from __future__ import annotations

import errno
from pathlib import Path


class NegmineError(Exception):
    """Base class: a problem the user can fix; the CLI exits with code 2."""

    exit_code = 2


class InputError(NegmineError):
    """A problem in an input file, located by file and line (or row)."""

    def __init__(self, path: str | Path | None, problem: str, fix: str, line: int | None = None,
                 where: str = "line") -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.problem = problem
        self.fix = fix
        self.where = where
        loc = self.path or "<input>"
        if line is not None:
            loc = f"{loc}, {where} {line}"
        super().__init__(f"{loc}: {problem}; {fix}")


class ConfigError(NegmineError):
    """A problem in the configuration (a TOML file or a --set override)."""


class ResourceError(NegmineError):
    """The machine ran out of something (memory, disk space, threads) while a stage or the publish step ran."""


_MEMORY_WORDS = ("bad_alloc", "out of memory", "can't allocate memory", "cannot allocate memory",
                 "not enough memory", "failed to allocate")


def resource_error(exc: BaseException, stage: str | None, writing: str | Path | None) -> ResourceError | None:
    """One line for an exhausted resource, naming the stage, the file being written and what to change; None
    when `exc` is something else. Memory errors often come with an empty message (a bare MemoryError) or as a
    RuntimeError from a C++ extension (faiss' std::bad_alloc, torch's allocator), so both are recognised."""
    text = str(exc).lower()
    where = (f" in stage {stage!r}" if stage else "") + (f" while writing {writing}" if writing else "")
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and any(w in text for w in _MEMORY_WORDS)):
        return ResourceError(f"out of memory{where}; lower [retrieve] "
                             "chunk_size, [dense] batch_size or [score] batch_size, set [run] low_memory = true, "
                             "or give the job more memory")
    if isinstance(exc, RuntimeError) and "can't start new thread" in text:
        return ResourceError(f"could not start a thread{where}; raise the "
                             "process limit (ulimit -u) or lower the thread count (OMP_NUM_THREADS=1)")
    if isinstance(exc, OSError) and (exc.errno in (errno.ENOSPC, errno.EDQUOT) or "no space left" in text):
        if exc.filename:
            where = (f" in stage {stage!r}" if stage else "") + f" while writing {exc.filename}"
        return ResourceError(f"no space left on the device{where}; free space "
                             "there, or point --cache-dir / [export] dir at a disk with room")
    return None
