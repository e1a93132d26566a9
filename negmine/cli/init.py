"""`negmine init DATA`: write a starter config for a data path (`negmine.starter`)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from negmine.cli import app
from negmine.cli.common import SkipOpt, VerboseOpt, guarded, setup


def _presets() -> list[str]:
    from negmine.starter import PRESETS

    return list(PRESETS)


@app.command("init", help="Write a starter config for a data path: detects the input format, counts queries, "
                          "documents and positives, and picks a preset that suits them (explained in comments). "
                          "Never overwrites a file.")
def init_cmd(data: Annotated[Path, typer.Argument(help="BEIR folder, pair file or FlagEmbedding .jsonl.")],
             preset: Annotated[Optional[str], typer.Option("--preset", "-p", autocompletion=_presets,
                                                           help="Use this preset instead of the one the data "
                                                                "suggests: recommended, perc-pos-top, nv-retriever, "
                                                                "simans, bm25.", show_default=False)] = None,
             out: Annotated[Path, typer.Option("--out", "-o", help="Config file to write.")] = Path("negmine.toml"),
             split: Annotated[Optional[str], typer.Option("--split", help="BEIR qrels split [default: train, or "
                                                          "the only one].", show_default=False)] = None,
             skip_invalid: SkipOpt = False, verbose: VerboseOpt = False) -> None:
    setup(verbose, quiet=True)

    def go() -> None:
        from negmine.starter import init

        chosen, s = init(data, out, preset, split, skip_invalid)
        if s.skipped:
            typer.echo(f"warning: skipped {sum(s.skipped.values())} invalid records {s.skipped}", err=True)
        typer.echo(f"{s.format}: {s.documents} documents, {s.queries} queries with positives, "
                   f"{s.positives_per_query:.2f} positives a query -> preset {chosen}", err=True)
        typer.echo(str(out))

    guarded(verbose, go)
