"""`negmine run` and one command a stage: each runs the pipeline up to that stage (earlier stages from cache)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from negmine.cli import app
from negmine.errors import NegmineError
from negmine.pipeline import STAGES
from negmine.cli.common import (CacheOpt, ConfigArg, EngineOpt, ForceOpt, InputOpt, NoCacheOpt, OutOpt, QuietOpt,
                                RayAddressOpt, RegistryHelp, SetOpt, SkipOpt, VerboseOpt, guarded, overrides, setup)

DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Run the stages before the [judge] stage, print its "
                                        "call and token estimate and stop before any call (same as --set "
                                        "judge.dry_run=true).")]

_HELP = {
    "ingest": "Read and validate the input into corpus, queries and qrels tables.",
    "index": "Build the BM25 index, encode the corpus for dense retrieval, and/or encode and index it for sparse.",
    "retrieve": "Retrieve the top-k candidates of every query that has a positive (BM25, dense, sparse, or fused).",
    "score": "Score every candidate and positive with the [score] teacher (cross-encoder or bi-encoder).",
    "exclude": "Drop known positives, the query's own text and duplicates of positives.",
    "sample": "Choose each query's negatives from its kept candidates.",
    "export": "Write the mined negatives in the trainers' formats (same as run).",
}


def _execute(until: str, config: Path | None, sets: list[str] | None, input_path: str | None, out: Path | None,
             skip_invalid: bool, cache_dir: Path | None, force: bool, no_cache: bool, verbose: bool,
             quiet: bool, engine: str | None = None, ray_address: str | None = None, dry_run: bool = False) -> None:
    setup(verbose, quiet)

    def go() -> None:
        from negmine.config import load_config
        from negmine.judge import DryRun
        from negmine.pipeline import mine

        cfg = load_config(config, overrides(sets, input_path, out, skip_invalid, engine, ray_address)
                          + (["judge.dry_run=true"] if dry_run else []))
        if dry_run and not cfg["judge"]["model"]:
            raise NegmineError("--dry-run estimates the [judge] stage's calls and tokens; this config has no "
                               "[judge] model")
        report = (lambda r: None) if quiet else (lambda r: typer.echo(r.message(), err=True))
        try:
            result = mine(cfg, until=until, force=force, no_cache=no_cache, cache_dir=cache_dir, on_stage=report)
        except DryRun as stop:  # the estimate is the answer: stdout, exit 0, nothing written after the judge
            typer.echo(str(stop))
            return
        for stage in result.stages.values():
            skipped = stage.stats.get("skipped_total") if stage.status == "computed" else None
            if skipped:
                typer.echo(f"warning: skipped {skipped} invalid records {stage.stats['skipped']}; first: "
                           f"{stage.stats['examples'][0]}", err=True)
        if until == "export":
            for path in result.outputs:
                typer.echo(str(path))
        elif not no_cache:
            from negmine.pipeline import stages

            if until == "score" and "score" not in result.stages:
                raise NegmineError("stage 'score' does not run with this config; set [score] teacher")
            last = result.stages.get(until) or list(result.stages.values())[-1]  # index: encode/ann for dense
            output = {s.name: s.output for s in stages()}.get(last.stage)
            typer.echo(str(last.path / output) if output and last.stage == until else str(last.path))

    guarded(verbose, go)


@app.command("run", help="Run every stage: ingest, index, retrieve, score, exclude, sample, export.",
             cls=RegistryHelp)
def run_cmd(config: ConfigArg = None, sets: SetOpt = None, input_path: InputOpt = None, out: OutOpt = None,
            skip_invalid: SkipOpt = False, cache_dir: CacheOpt = None, force: ForceOpt = False,
            no_cache: NoCacheOpt = False, verbose: VerboseOpt = False, quiet: QuietOpt = False,
            engine: EngineOpt = None, ray_address: RayAddressOpt = None, dry_run: DryRunOpt = False) -> None:
    _execute("export", config, sets, input_path, out, skip_invalid, cache_dir, force, no_cache, verbose, quiet,
             engine, ray_address, dry_run)


def _stage_command(stage: str) -> None:
    def cmd(config: ConfigArg = None, sets: SetOpt = None, input_path: InputOpt = None, out: OutOpt = None,
            skip_invalid: SkipOpt = False, cache_dir: CacheOpt = None, force: ForceOpt = False,
            no_cache: NoCacheOpt = False, verbose: VerboseOpt = False, quiet: QuietOpt = False,
            engine: EngineOpt = None, ray_address: RayAddressOpt = None) -> None:
        _execute(stage, config, sets, input_path, out, skip_invalid, cache_dir, force, no_cache, verbose, quiet,
                 engine, ray_address)

    cmd.__doc__ = _HELP[stage] + " Earlier stages come from the cache; prints the path of the stage's output."
    app.command(stage, help=cmd.__doc__, short_help=_HELP[stage], cls=RegistryHelp)(cmd)


for _stage in STAGES:
    _stage_command(_stage)
