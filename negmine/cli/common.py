"""Options shared by the commands, and the one place where errors become a message and an exit code."""
from __future__ import annotations

import logging
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer
from typer.core import TyperCommand

from negmine.errors import NegmineError, resource_error

ConfigArg = Annotated[Optional[Path], typer.Argument(help="TOML config (see configs/); defaults apply without one.",
                                                    show_default=False)]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", metavar="SECTION.KEY=VALUE",
                                                     help="Override a config value; repeatable.")]
# a string, not a Path: hf://datasets/ORG/NAME names a Hub dataset, and Path() would fold its "//"
InputOpt = Annotated[Optional[str], typer.Option(
    "--input", "-i", help="Input path or hf://datasets/ORG/NAME (same as --set input.path=).")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (same as --set export.dir=).")]
SkipOpt = Annotated[bool, typer.Option("--skip-invalid", help="Skip and count invalid records instead of stopping.")]
CacheOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="Stage cache folder "
                                                  "[default: .negmine/cache beside the config].")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Recompute every stage, replacing cached entries.")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Compute in a throwaway cache; keep nothing.")]
EngineOpt = Annotated[Optional[str], typer.Option("--engine", help="Where heavy stages run: local or ray "
                                                  "(same as --set run.engine=).", show_default=False)]
RayAddressOpt = Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster to join: \"auto\", host:port, "
                                                      "or \"\" to start a local one (same as --set run.ray_address=).",
                                                      show_default=False)]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log details; show tracebacks on errors.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or stage lines.")]


def setup(verbose: bool, quiet: bool) -> None:
    from negmine import progress

    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)  # bm25s sets its own logger to DEBUG; quiet unless -v
    logging.getLogger("negmine").setLevel(level)
    if quiet:
        progress.ENABLED = False


def overrides(sets: list[str] | None, input_path: str | Path | None = None, out: Path | None = None,
              skip_invalid: bool = False, engine: str | None = None, ray_address: str | None = None) -> list[str]:
    items = list(sets or [])
    if engine is not None:
        items.append(f"run.engine={_toml_str(engine)}")
    if ray_address is not None:
        items.append(f"run.ray_address={_toml_str(ray_address)}")
    if input_path is not None:
        items.append(f"input.path={_toml_str(str(input_path))}")
    if out is not None:
        items.append(f"export.dir={_toml_str(str(out))}")
    if skip_invalid:
        items.append("input.skip_invalid=true")
    return items


def _toml_str(s: str) -> str:
    return "'" + s + "'" if "'" not in s else '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt for SIGINT, so that every `with` and `finally`
    on the way out removes its temporary files and folders (and --no-cache its throwaway cache)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def guarded(verbose: bool, fn: Callable[[], Any]) -> Any:
    """Run `fn`; a user-fixable problem becomes one line on stderr and exit code 2, never a traceback.

    Out of memory, disk or threads is such a problem too (exit 2, saying what to change); SIGINT and SIGTERM end
    with one line and exit codes 130 and 143 after the temporary files are cleaned up.
    """
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return fn()
    except NegmineError as exc:
        if verbose:
            traceback.print_exc()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: finished stages stay cached; run again to resume", err=True)
        raise typer.Exit(130) from None
    except Terminated:
        typer.echo("terminated (SIGTERM): finished stages stay cached; run again to resume", err=True)
        raise typer.Exit(143) from None
    except (MemoryError, OSError, RuntimeError) as exc:
        if verbose:
            traceback.print_exc()
        err = resource_error(exc, None, getattr(exc, "filename", None))
        if err is not None:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        if isinstance(exc, OSError):
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            typer.echo(f"error: {where}{exc.strerror or exc}; check the path, permissions and free space", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"error: unexpected {type(exc).__name__}: {exc} (run with -v for the traceback)", err=True)
        raise typer.Exit(1) from None
    except Exception as exc:  # a bug: say so briefly, the traceback is one -v away
        if verbose:
            traceback.print_exc()
        typer.echo(f"error: unexpected {type(exc).__name__}: {exc} (run with -v for the traceback)", err=True)
        raise typer.Exit(1) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class RegistryHelp(TyperCommand):
    """A command whose --help ends with the registered samplers, filters, formats and retrievers, read when the help
    is shown, so one registered in its own file (a plugin) is listed too."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from negmine.config import registry_choices

        one, many = registry_choices()
        with formatter.section("Choices (--set)"):
            formatter.write_dl([(f"{section}.{key}", " | ".join(values))
                                for (section, key), values in {**one, **many}.items()])
        super().format_epilog(ctx, formatter)
