"""`negmine eval RUN`: candidate recall, measured false negatives (held-out positives) and hardness of a run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from negmine.cli import app
from negmine.cli.common import CacheOpt, QuietOpt, SetOpt, VerboseOpt, guarded, setup


@app.command("eval", help="Measure a run's negatives: candidate recall, false negatives (with --holdout-frac), "
                          "hardness and the training-free ECI score. RUN is an output folder, or a config to mine first.")
def eval_cmd(run: Annotated[Path, typer.Argument(help="Output folder of a run, or a TOML config.")],
             qrels: Annotated[Optional[Path], typer.Option("--qrels", help="Judgments (TSV: query-id, corpus-id, "
                                                           "score) for recall [default: the run's own].")] = None,
             holdout_frac: Annotated[float, typer.Option("--holdout-frac", help="Mine with this fraction of each "
                                                         "multi-positive query's positives hidden (needs a config); "
                                                         "outputs go to <export dir>-holdout<F>.")] = 0.0,
             eci_model: Annotated[str, typer.Option("--eci-model", help="Frozen encoder for the ECI score: a local "
                                                    "folder or a Hugging Face id in the local cache [default: the "
                                                    "packaged all-MiniLM-L6-v2].")] = "",
             no_eci: Annotated[bool, typer.Option("--no-eci", help="Skip the ECI score (it encodes the run's "
                                                  "queries, positives and negatives).")] = False,
             sets: SetOpt = None, cache_dir: CacheOpt = None,
             json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the result here "
                                                              "[default: <run folder>/eval.json].")] = None,
             verbose: VerboseOpt = False, quiet: QuietOpt = False) -> None:
    setup(verbose, quiet)

    def go() -> None:
        from negmine.evaluate import evaluate_run, table
        from negmine.io import atomic_write_text

        report = (lambda r: None) if quiet else (lambda r: typer.echo(r.message(), err=True))
        folder, result = evaluate_run(run, qrels=qrels, holdout_frac=holdout_frac, overrides=sets,
                                      cache_dir=cache_dir, on_stage=report, eci_model=None if no_eci else eci_model)
        target = json_out or folder / "eval.json"
        atomic_write_text(target, json.dumps(result, indent=2) + "\n")
        typer.echo(table(result))
        typer.echo(f"written: {target}", err=True)

    guarded(verbose, go)
