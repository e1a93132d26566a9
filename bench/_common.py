"""Helpers shared by the benchmark scripts (imported as `_common`: the scripts run from this folder)."""
from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

from negmine.memory import peak_rss_mib  # noqa: F401  (the scripts import it from here)


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
