"""Errors that end a run with one clear line and exit code 2.

Every problem with what the user gave (a file, a line, a config key) is a `UsageError`: it says where,
what is wrong and what to do. The CLI prints it as one line; the Python API raises it.
"""
from __future__ import annotations

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
