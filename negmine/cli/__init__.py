"""The `negmine` command: a thin typer layer over the Python API (one module a command, as in spaCy's CLI)."""
from __future__ import annotations

import typer

app = typer.Typer(
    name="negmine",
    help="Mine hard negatives for retrieval training data: ingest, index, retrieve, score, exclude, sample, export.\n\n"
         "Every stage is cached by content; `negmine run CONFIG.toml` runs them all.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[default: ...]" and "[score]": not markup
    context_settings={"help_option_names": ["-h", "--help"]},
)

from negmine.cli import cache as _cache  # noqa: E402,F401  (registers commands)
from negmine.cli import eval as _eval  # noqa: E402,F401
from negmine.cli import init as _init  # noqa: E402,F401
from negmine.cli import inspect as _inspect  # noqa: E402,F401
from negmine.cli import report as _report  # noqa: E402,F401
from negmine.cli import run as _run  # noqa: E402,F401


def main() -> None:
    app()
