"""The pipeline: the declared stages (`stages()`), in order, each cached by content, then publishing.

`mine()` is the Python entry point behind `negmine run`; `until=` stops after a given step (the per-stage CLI
commands use it). A stage's key covers exactly the parameters it is handed and the keys of the stages it reads
(see `negmine.stage`), so changing a sampling parameter recomputes sampling and export only, and changing a
filter never re-indexes or re-retrieves.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from negmine import __version__
from negmine.cache import StageCache, StageResult
from negmine.config import load_config, score_source, score_type, validate
from negmine.hashing import FingerprintMemo
from negmine.publish import check_output_dir, publish
from negmine.stage import Context, Inputs, Params, Stage

log = logging.getLogger("negmine.pipeline")
STAGES = ("ingest", "index", "retrieve", "score", "exclude", "sample", "export")  # the steps (CLI commands)


def stages() -> list[Stage]:
    """Every declared stage in the order it runs: data that the CLI, `negmine cache`, the report and any engine
    read. Retrievers contribute theirs from their registry."""
    from negmine import cluster, export, ingest, judge, retrievers, sample, score
    from negmine.filters import exclude
    from negmine.retrievers import pool
    from negmine.samplers import ensemble

    # the sample stage, or with [ensemble] teachers their agreement and cross/intra sampling under the same name
    # (negmine.samplers.ensemble: a config enables one of the two)
    return [ingest.STAGE, *retrievers.stages(), pool.stage(), score.STAGE, score.TEACHERS_STAGE, exclude.STAGE,
            judge.POOL_STAGE, *ensemble.stages(sample.STAGE), judge.STAGE, cluster.STAGE, export.STAGE]


def plan(cfg: dict[str, Any], until: str = "export") -> list[Stage]:
    """The stages this config runs, up to the step `until`."""
    last = STAGES.index(until)
    return [s for s in stages() if STAGES.index(s.command) <= last and s.enabled(cfg)]


@dataclass
class RunResult:
    config: dict[str, Any]
    stages: dict[str, StageResult] = field(default_factory=dict)
    outputs: list[Path] = field(default_factory=list)

    @property
    def computed(self) -> list[str]:
        return [s for s, r in self.stages.items() if r.status == "computed"]


def _provenance(cfg: dict[str, Any], inputs: dict[str, str]) -> dict[str, Any]:
    """What made these files (the export adds the stage keys): no timestamps, output paths or speed-only settings,
    so equal runs give byte-equal files."""
    config = {s: dict(v) for s, v in cfg.items() if s != "run"}
    config["export"].pop("dir", None)
    config["export"].pop("hub_repo", None)  # where a copy is pushed, not what it holds
    for stage in stages():
        for name in stage.unkeyed:
            if stage.section and name in config.get(stage.section, {}):
                config[stage.section].pop(name)
    from negmine.precision import resolved_settings

    # what "auto" meant on the machine that made these files
    return {"negmine_version": __version__, "config": config, "inputs": inputs, **resolved_settings(cfg)}


def mine(config: str | Path | dict[str, Any] | None = None, overrides: list[str] | dict[str, Any] | None = None,
         *, until: str = "export", force: bool = False, no_cache: bool = False, cache_dir: str | Path | None = None,
         on_stage: Callable[[StageResult], None] | None = None) -> RunResult:
    """Run the pipeline up to `until` and return each stage's result and the exported files.

    `config` is a TOML path, an already loaded config (from `load_config`), or None for the defaults; `overrides`
    are `section.key=value` strings or a {"section.key": value} dict.
    """
    if until not in STAGES:
        raise ValueError(f"until must be one of {STAGES}")
    if isinstance(config, dict) and overrides:
        raise ValueError("pass overrides to load_config when giving a loaded config")
    cfg = config if isinstance(config, dict) else load_config(config, overrides)
    validate(cfg)  # a config built by hand is checked too, before any work
    tmp_root = tempfile.mkdtemp(prefix="negmine-nocache-") if no_cache else None
    root = Path(tmp_root or cache_dir or cfg["run"]["cache_dir"])
    from negmine import engine

    try:
        with engine.use(cfg["run"], root):  # [run] engine: where heavy stages run (in no key: same entries)
            return _run(cfg, StageCache(root, force=force, persistent=not no_cache), until, on_stage)
    finally:
        if tmp_root:
            shutil.rmtree(tmp_root, ignore_errors=True)


def _run(cfg: dict[str, Any], cache: StageCache, until: str,
         on_stage: Callable[[StageResult], None] | None) -> RunResult:
    from negmine.encode import model_fingerprint
    from negmine.ingest import input_files

    result = RunResult(cfg)
    if cfg["run"]["low_memory"]:
        from negmine.memory import tune_malloc

        tune_malloc()
    if until == "export":
        check_output_dir(Path(cfg["export"]["dir"]))  # a read-only or invalid output folder: before any work
    memo = FingerprintMemo(cache.root / "fingerprints.json")
    inputs = {str(p): memo(p) for p in input_files(cfg["input"])}

    def fingerprint(path: Path) -> str:
        return model_fingerprint(path, memo)  # the memo is saved once the ingest stage accepted the input

    ctx = Context(cache.root, fingerprint, inputs, _provenance(cfg, inputs))
    todo = plan(cfg, until)
    params = {s.name: Params(s.params(cfg, ctx), s.name) for s in todo}  # all before any work: a missing model
    for stage in todo:  # stops the run here
        reads, p = stage.reads(cfg), params[stage.name]
        entries = Inputs(stage.name, {u: result.stages[u].path for u in reads},
                         dict(result.stages) if stage.reads_log else None)
        r = cache.run(stage.name, stage.version, stage.key_params(p), {u: result.stages[u].key for u in reads},
                      dict(stage.files(cfg, ctx)) if stage.files else {},
                      lambda out, stage=stage, entries=entries, p=p: stage.run(entries, p, out),
                      resumable=stage.resumable)
        result.stages[stage.name] = r
        if stage.name == "ingest":
            memo.save()  # only once the input is known good: a rejected input leaves nothing in the cache
        if on_stage:
            on_stage(r)
    memo.save()
    if until != "export":
        return result
    # where this output's stage entries live, for `negmine eval` (not part of any output's content); a
    # throwaway cache (--no-cache) is gone after the run, so then there is nothing to point at
    run_json = json.dumps({"cache_dir": str(cache.root), "score_type": score_type(cfg),
                           "score_source": score_source(cfg),
                           "stages": {s: str(r.path) for s, r in result.stages.items()}}, indent=2) + "\n"
    result.outputs = publish(result.stages["export"].path, Path(cfg["export"]["dir"]),
                             {"run.json": run_json if cache.persistent else None})
    if cfg["export"]["hub_repo"]:  # after publishing: a push that fails (offline) keeps the files on disk
        from negmine.hf_dict import FOLDER, push

        push(Path(cfg["export"]["dir"]) / FOLDER, cfg["export"]["hub_repo"])
    return result


__all__ = ["mine", "RunResult", "STAGES", "stages", "plan"]
