"""Content-addressed stage cache (in the manner of DVC).

A stage's key hashes its name, its code version, its parameters, the keys of the stages it reads and the content
of the input files it reads. An entry is a folder `<root>/<stage>/<key>/` holding the stage's tables and a
`meta.json`; it is written under a temporary name and renamed into place, so a killed run never leaves half an
entry, and a rerun resumes at the first stage without one. `<root>/<stage>/last.json` remembers the parts of the
last key computed, so a run can say *why* a stage ran ("parameters changed: k1").
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from negmine.hashing import hash_obj
from negmine.io import atomic_dir, atomic_write_text


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


class StageCache:
    def __init__(self, root: Path, force: bool = False, persistent: bool = True) -> None:
        self.root = Path(root)
        self.force = force
        self.persistent = persistent  # False: a throwaway cache, deleted after the run

    def run(self, stage: str, version: str, params: dict[str, Any], upstream: dict[str, str],
            inputs: dict[str, str], compute: Callable[[Path], dict[str, Any]],
            resumable: bool = False) -> StageResult:
        """Return the cached entry for these parts, or compute it into a fresh atomic folder.

        A `resumable` stage computes into `.partial-<key>`, which outlives a crash: the stage saves finished pieces
        there (atomically) and skips them when run again. The folder becomes the entry only when complete.
        """
        parts = {"stage": stage, "version": version, "params": params, "upstream": upstream, "inputs": inputs}
        key = hash_obj(parts)
        entry = self.root / stage / key
        meta_path = entry / "meta.json"
        if meta_path.is_file() and not self.force:
            meta = json.loads(meta_path.read_text())
            return StageResult(stage, key, entry, "cached", "", meta.get("stats", {}), meta.get("seconds", 0.0))
        last_path = self.root / stage / "last.json"
        try:
            last = json.loads(last_path.read_text()) if last_path.is_file() else None
        except ValueError:
            last = None
        reason = "forced" if self.force else _why(last, parts, not meta_path.is_file())
        start = time.perf_counter()

        def finish(folder: Path) -> dict[str, Any]:
            stats = compute(folder)
            meta = {**parts, "key": key, "stats": stats, "seconds": time.perf_counter() - start,
                    "created": time.time()}
            (folder / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
            return meta

        if resumable:
            work = self.root / stage / f".partial-{key}"
            if self.force:
                shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True, exist_ok=True)
            meta = finish(work)
            shutil.rmtree(entry, ignore_errors=True)
            os.replace(work, entry)
        else:
            with atomic_dir(entry) as tmp:
                meta = finish(tmp)
        stats, seconds = meta["stats"], meta["seconds"]
        atomic_write_text(last_path, json.dumps(parts, default=str))
        return StageResult(stage, key, entry, "computed", reason, stats, seconds)

    def entries(self) -> list[dict[str, Any]]:
        out = []
        if not self.root.is_dir():
            return out
        for meta_path in sorted(self.root.glob("*/*/meta.json")):
            try:
                meta = json.loads(meta_path.read_text())
            except ValueError:
                continue
            size = sum(p.stat().st_size for p in meta_path.parent.rglob("*") if p.is_file())
            out.append({"stage": meta["stage"], "key": meta["key"], "path": str(meta_path.parent), "bytes": size,
                        "created": meta.get("created", 0.0), "seconds": meta.get("seconds", 0.0)})
        return out

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
