"""`negmine inspect RUN QUERY_ID`: one query's story, every candidate and what became of it (`negmine.story`)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from negmine.cli import app
from negmine.cli.common import VerboseOpt, guarded


@app.command("inspect", help="Show every candidate of one query with its rank, each retriever's and the teacher's "
                             "scores, and what happened to it: excluded, removed by which filter and threshold, "
                             "sampled or not.")
def inspect_cmd(run: Annotated[Path, typer.Argument(help="Output folder of a run (it holds run.json), or its TOML "
                                                         "config.")],
                query_id: Annotated[str, typer.Argument(help="A query id of the input.")],
                width: Annotated[int, typer.Option("--width", min=20, max=100_000,
                                                   help="Characters of each text shown.")] = 60,
                verbose: VerboseOpt = False) -> None:
    def go() -> None:
        from negmine.story import Run, story_lines

        folder = run
        if run.is_file() and run.suffix == ".toml":
            from negmine.config import load_config

            folder = Path(load_config(run)["export"]["dir"])
        story = next(Run(folder).stories([query_id]))
        typer.echo("\n".join(story_lines(story, width)))

    guarded(verbose, go)
