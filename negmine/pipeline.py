"""The pipeline: ingest -> index -> retrieve -> exclude -> sample -> export, each stage cached by content.

`mine()` is the Python entry point behind `negmine run`; `until=` stops after a given stage (the per-stage CLI
commands use it). Each stage's key includes the keys of the stages it reads, so changing a sampling parameter
recomputes sampling and export only, and changing a filter never re-indexes or re-retrieves.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from negmine import __version__, bm25, export, ingest, retrieve, sample
from negmine.cache import StageCache, StageResult
from negmine.config import load_config
from negmine.filters import exclude
from negmine.hashing import FingerprintMemo
from negmine.io import atomic_path

STAGES = ("ingest", "index", "retrieve", "exclude", "sample", "export")


@dataclass
class RunResult:
    config: dict[str, Any]
    stages: dict[str, StageResult] = field(default_factory=dict)
    outputs: list[Path] = field(default_factory=list)

    @property
    def computed(self) -> list[str]:
        return [s for s, r in self.stages.items() if r.status == "computed"]


def _provenance(cfg: dict[str, Any], inputs: dict[str, str], keys: dict[str, str]) -> dict[str, Any]:
    """What made these files: no timestamps or output paths, so equal runs give byte-equal files."""
    config = {s: dict(v) for s, v in cfg.items() if s != "run"}
    config["export"].pop("dir", None)
    return {"negmine_version": __version__, "config": config, "inputs": inputs, "stage_keys": keys}


def mine(config: str | Path | dict[str, Any] | None = None, overrides: list[str] | dict[str, Any] | None = None,
         *, until: str = "export", force: bool = False, no_cache: bool = False, cache_dir: str | Path | None = None,
         on_stage: Callable[[StageResult], None] | None = None) -> RunResult:
    """Run the pipeline up to `until` and return each stage's result and the exported files.

    `config` is a TOML path, an already loaded config (from `load_config`), or None for the defaults; `overrides`
    are `section.key=value` strings or a {"section.key": value} dict.
    """
    if until not in STAGES:
        raise ValueError(f"until must be one of {STAGES}")
    cfg = config if isinstance(config, dict) else load_config(config, overrides)
    if isinstance(config, dict) and overrides:
        raise ValueError("pass overrides to load_config when giving a loaded config")
    tmp_root = tempfile.mkdtemp(prefix="negmine-nocache-") if no_cache else None
    root = Path(tmp_root or cache_dir or cfg["run"]["cache_dir"])
    try:
        return _run(cfg, StageCache(root, force=force), until, on_stage)
    finally:
        if tmp_root:
            shutil.rmtree(tmp_root, ignore_errors=True)


def _run(cfg: dict[str, Any], cache: StageCache, until: str,
         on_stage: Callable[[StageResult], None] | None) -> RunResult:
    result = RunResult(cfg)
    inp = cfg["input"]
    memo = FingerprintMemo(cache.root / "fingerprints.json")
    files = ingest.input_files(inp)
    inputs = {str(p): memo(p) for p in files}
    memo.save()
    keys: dict[str, str] = {}

    def step(stage: str, version: str, params: dict[str, Any], upstream: list[str],
             compute: Callable[[Path], dict[str, Any]], stage_inputs: dict[str, str] | None = None) -> StageResult:
        r = cache.run(stage, version, params, {u: keys[u] for u in upstream}, stage_inputs or {}, compute)
        keys[stage] = r.key
        result.stages[stage] = r
        if on_stage:
            on_stage(r)
        return r

    r_ing = step("ingest", ingest.VERSION, inp, [], lambda out: ingest.ingest(inp, out), inputs)
    if until == "ingest":
        return result
    ing = r_ing.path
    r_idx = step("index", bm25.VERSION, {**cfg["bm25"], "use_title": inp["use_title"], "title_sep": inp["title_sep"]},
                 ["ingest"], lambda out: bm25.build_index(cfg["bm25"], ing / "corpus.parquet", inp["use_title"],
                                                          inp["title_sep"], out))
    if until == "index":
        return result
    ret_params = {"top_k": cfg["retrieve"]["top_k"]}  # chunk_size only bounds memory: not part of the key
    r_ret = step("retrieve", retrieve.VERSION, ret_params, ["ingest", "index"],
                 lambda out: retrieve.retrieve(cfg["bm25"], cfg["retrieve"], ing, r_idx.path,
                                               inp["min_positive_score"], out))
    if until == "retrieve":
        return result
    query_ids = retrieve.queries_to_mine(ing, inp["min_positive_score"])["query_id"].combine_chunks()
    r_exc = step("exclude", exclude.VERSION, cfg["exclude"], ["ingest", "retrieve"],
                 lambda out: exclude.exclude(cfg["exclude"], ing, r_ret.path / "candidates.parquet", query_ids,
                                             inp["min_positive_score"], out))
    if until == "exclude":
        return result
    r_smp = step("sample", sample.VERSION, {**cfg["sample"], "top_k": cfg["retrieve"]["top_k"]},
                 ["ingest", "exclude"],
                 lambda out: sample.sample(cfg["sample"], cfg["exclude"], cfg["retrieve"]["top_k"], ing,
                                           r_exc.path / "candidates.parquet", query_ids, inp["min_positive_score"],
                                           out))
    if until == "sample":
        return result
    exp_params = {k: v for k, v in cfg["export"].items() if k != "dir"}
    exp_params["num_negatives"] = cfg["sample"]["num_negatives"]

    def do_export(out: Path) -> dict[str, Any]:
        prov = _provenance(cfg, inputs, dict(keys))
        stats = export.export(cfg["export"], cfg["sample"]["num_negatives"], ing, r_smp.path / "negatives.parquet",
                              query_ids, inp["min_positive_score"], inp["use_title"], inp["title_sep"], prov, out)
        (out / "provenance.json").write_text(json.dumps(prov, indent=2, sort_keys=True) + "\n")
        report = {"negmine_version": __version__,
                  "stages": {s: {"key": r.key, "stats": r.stats} for s, r in result.stages.items()},
                  "export": stats}
        (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        return stats

    r_exp = step("export", export.VERSION, exp_params, ["ingest", "sample"], do_export)
    result.outputs = _publish(r_exp.path, Path(cfg["export"]["dir"]))
    return result


def _publish(entry: Path, out_dir: Path) -> list[Path]:
    """Copy the export entry's files into the output folder, each file atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = []
    for src in sorted(entry.iterdir()):
        if src.name == "meta.json" or not src.is_file():
            continue
        dest = out_dir / src.name
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
        outputs.append(dest)
    return outputs


__all__ = ["mine", "RunResult", "STAGES"]
