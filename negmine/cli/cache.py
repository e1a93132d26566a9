"""`negmine cache ls|verify|clear`: see, check and remove stage cache entries."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Optional

import typer

from negmine.cli import app
from negmine.cli.common import ConfigArg, VerboseOpt, guarded

cache_app = typer.Typer(help="Show or clear the stage cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
DirOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="Cache folder [default: from the config].")]


def _root(config: Path | None, cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return cache_dir
    from negmine.config import load_config

    return Path(load_config(config)["run"]["cache_dir"])


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


@cache_app.command("ls", help="List cached entries: stage, key, size, creation time, compute time, folder; "
                   "entries whose file sizes differ from the recorded ones are marked DAMAGED.")
def ls(config: ConfigArg = None, cache_dir: DirOpt = None, verbose: VerboseOpt = False) -> None:
    def go() -> None:
        from negmine.cache import StageCache

        from negmine.pipeline import stages

        root = _root(config, cache_dir)
        order = {s.name: i for i, s in enumerate(stages())}  # the pipeline's order, then any other folder
        entries = sorted(StageCache(root).entries(), key=lambda e: (order.get(e["stage"], len(order)), e["stage"],
                                                                    e["created"]))
        if not entries:
            typer.echo(f"no entries in {root}")
            return
        for e in entries:
            when = dt.datetime.fromtimestamp(e["created"]).strftime("%Y-%m-%d %H:%M")
            mark = "  DAMAGED" if e["damaged"] else ""
            typer.echo(f"{e['stage']:<9}{e['key'][:12]}  {_size(e['bytes']):>9}  {when}  {e['seconds']:7.1f}s  "
                       f"{e['path']}{mark}")
        damaged = sum(1 for e in entries if e["damaged"])
        note = f"; {damaged} DAMAGED (sizes differ from what was recorded): the next run recomputes them" \
            if damaged else ""
        typer.echo(f"{len(entries)} entries, {_size(sum(e['bytes'] for e in entries))} in {root}{note}", err=True)

    guarded(verbose, go)


@cache_app.command("verify", help="Check every entry's files against their recorded sizes and SHA-256; exit 2 "
                   "if any is damaged (--remove deletes those; a run recomputes them anyway).")
def verify(config: ConfigArg = None, cache_dir: DirOpt = None,
           remove: Annotated[bool, typer.Option("--remove", help="Delete the damaged entries.")] = False,
           verbose: VerboseOpt = False) -> None:
    def go() -> None:
        from negmine.cache import StageCache
        from negmine.errors import NegmineError

        root = _root(config, cache_dir)
        cache = StageCache(root)
        entries = cache.entries(hashes=True)
        damaged = [e for e in entries if e["damaged"]]
        for e in damaged:
            typer.echo(f"damaged: {e['stage']} {e['key'][:12]}: {e['damaged']}")
            if remove:
                cache.remove(Path(e["path"]))
        if damaged:
            done = "removed them" if remove else "the next run recomputes them, or remove them with --remove"
            raise NegmineError(f"{len(damaged)} of {len(entries)} entries in {root} are damaged; {done}")
        typer.echo(f"{len(entries)} entries verified in {root}", err=True)

    guarded(verbose, go)


@cache_app.command("clear", help="Remove cached entries (all, or one stage's with --stage: any stage of the pipeline, "
                                  "sub-stages such as encode, ann or retrieve-bm25 included).")
def clear(config: ConfigArg = None, cache_dir: DirOpt = None,
          stage: Annotated[Optional[str], typer.Option("--stage", help="Only this stage's entries.")] = None,
          verbose: VerboseOpt = False) -> None:
    def go() -> None:
        from negmine.cache import StageCache
        from negmine.errors import NegmineError
        from negmine.pipeline import stages

        root = _root(config, cache_dir)
        # every declared stage, sub-stages (encode, ann, retrieve-bm25, ...) included, has a folder of its own
        declared = [s.name for s in stages()]
        if stage is not None and stage not in declared:
            raise NegmineError(f"--stage {stage!r}: choose one of {', '.join(declared)}")
        n = StageCache(root).clear(stage)
        typer.echo(f"removed {n} entries from {root}", err=True)

    guarded(verbose, go)
