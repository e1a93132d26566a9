"""Helpers shared by the benchmark scripts (imported as `_common`: the scripts run from this folder)."""
from __future__ import annotations

import platform
import resource
import sys
from importlib import metadata
from pathlib import Path


def peak_rss_mib() -> tuple[float, str]:
    """Peak resident set size of this process so far, and where it was read.

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


def versions(dists: tuple[str, ...]) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
