"""Keep peak memory down: glibc's malloc in the model-heavy stages, and the memory budget that sizes chunks.

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which the encoder's
activation buffers come from the heap and fragment it: resident memory then grows batch after batch. A fixed
1 MiB threshold (`[run] low_memory = true`) sends every large buffer to mmap and back to the OS when freed.
Measured on SciFact with MiniLM: encode peak RSS 1,330 -> 884 MiB, but the encode took about 20-30% longer
(pages are mapped and zeroed again for every batch), so it is a choice, off by default. Not glibc: no effect.
"""
from __future__ import annotations

import ctypes
import gc
import math
import os
import re
import resource
import sys
from pathlib import Path

from negmine.errors import ConfigError

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_done = False


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 - glibc only
        return libc
    except (OSError, AttributeError):
        return None


def tune_malloc() -> None:
    global _done
    libc = _libc()
    if libc is None or _done:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 20)
    _done = True


def release_memory() -> None:
    """Hand freed heap back to the OS (before a model arrives, so the peak is the model's alone)."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def peak_rss_mib() -> tuple[float, str]:
    """Peak resident set size of this process so far, in MiB, and where it was read.

    On Linux ru_maxrss survives exec: a child starts with its parent's peak, so a worker could report the parent's
    memory. VmHWM is the high-water mark of this program's own address space; ru_maxrss (KiB on Linux, bytes on
    macOS) is the fallback elsewhere.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, "VmHWM"
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak / (1 << 20) if sys.platform == "darwin" else peak / 1024), "ru_maxrss"


# ---- memory budget: `[run] memory_budget`, a memory-only setting (in no cache key: it never changes an output)

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000 ** 2, "mb": 1000 ** 2, "g": 1000 ** 3, "gb": 1000 ** 3,
          "t": 1000 ** 4, "tb": 1000 ** 4, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?\s*([A-Za-z]*)\s*$")
MIN_BUDGET = 1 << 20  # below this, chunks of one query would still not fit: refused as a mistake
BUDGET_SHARE, BUDGET_CAP = 8, 1 << 30  # default: an eighth of physical memory, at most 1 GiB


def parse_bytes(value: object, where: str) -> int:
    """A byte count from a number (bytes) or a string such as "512MiB", "2GiB", "1.5GB"; anything else, NaN,
    infinity, zero, negative or under 1 MiB is refused with one line naming `where`."""
    hint = "give a number of bytes or a size such as \"512MiB\" or \"2GiB\""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where} must be a size, got {value!r}; {hint}")
    if isinstance(value, str):
        m = _SIZE.match(value)
        if not m or m.group(3).lower() not in _UNITS:
            raise ConfigError(f"{where} is {value!r}, not a size; {hint}")
        number = float(m.group(1)) * (10.0 ** int(m.group(2) or 0)) * _UNITS[m.group(3).lower()]
    else:
        number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{where} is {value!r}; {hint}")
    if number < MIN_BUDGET:
        raise ConfigError(f"{where} is {value!r} ({int(number)} bytes); it must be at least 1MiB")
    return int(number)


def default_budget() -> int:
    """An eighth of physical memory, at most 1 GiB (256 MiB where the size cannot be read)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    return max(256 << 20, min(total // BUDGET_SHARE, BUDGET_CAP)) if total > 0 else 256 << 20


def budget_bytes(value: int | None) -> int:
    return default_budget() if value is None else int(value)


# What one query's share of a chunk costs while it is searched and written: its top-k candidate rows as numpy
# arrays, then as an Arrow table (ids, ranks, scores, provenance lists). A generous upper figure, measured on
# the 100k-document benchmark at top_k 100 (bench/scale.py).
CANDIDATE_ROW_BYTES = 256


def query_chunk(budget: int, top_k: int, cap: int) -> int:
    """Queries a retrieve chunk: half the budget holds the chunk's candidate rows, capped by
    `[retrieve] chunk_size` (so small corpora and the default settings keep today's chunks)."""
    return max(1, min(cap, (budget // 2) // (max(1, top_k) * CANDIDATE_ROW_BYTES)))
