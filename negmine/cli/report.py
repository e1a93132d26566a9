"""`negmine report RUN`: print the summary of a mining run (its report.md)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from negmine.cli import app
from negmine.cli.common import VerboseOpt, guarded


@app.command("report", help="Print the mining report of a run: an output folder, or a config (its export dir).")
def report_cmd(run: Annotated[Path, typer.Argument(help="Output folder of a run, or its TOML config.")],
               as_json: Annotated[bool, typer.Option("--json", help="Print report.json instead.")] = False,
               verbose: VerboseOpt = False) -> None:
    def go() -> None:
        from negmine.errors import NegmineError

        folder = run
        if run.is_file() and run.suffix == ".toml":
            from negmine.config import load_config

            folder = Path(load_config(run)["export"]["dir"])
        name = "report.json" if as_json else "report.md"
        if not (folder / name).is_file():
            raise NegmineError(f"{folder}: no {name}; give the output folder of a finished `negmine run`")
        typer.echo((folder / name).read_text().rstrip("\n"))

    guarded(verbose, go)
