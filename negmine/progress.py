"""Progress bars on stderr (tqdm); results go to files, so stdout stays clean for scripts."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

# Switched off by `--quiet` or NEGMINE_PROGRESS=0.
ENABLED = os.environ.get("NEGMINE_PROGRESS", "1") not in ("0", "false", "no")


def bar(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 0.5 if sys.stderr.isatty() else 10.0)
    return tqdm(iterable, disable=not ENABLED, **kwargs)
