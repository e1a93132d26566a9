"""`negmine eval RUN`: candidate recall, measured false negatives (held-out positives) and hardness of a run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from negmine.cli import app
from negmine.cli.common import CacheOpt, QuietOpt, SetOpt, VerboseOpt, guarded, setup


@app.command("eval", help="Measure a run's negatives: candidate recall, false negatives (with --holdout-frac) and "
                          "hardness. RUN is an output folder, or a config to mine first.")
def eval_cmd(run: Annotated[Path, typer.Argument(help="Output folder of a run, or a TOML config.")],
             qrels: Annotated[Optional[Path], typer.Option("--qrels", help="Judgments (TSV: query-id, corpus-id, "
                                                           "score) for recall [default: the run's own].")] = None,
             holdout_frac: Annotated[float, typer.Option("--holdout-frac", help="Mine with this fraction of each "
                                                         "multi-positive query's positives hidden (needs a config); "
                                                         "outputs go to <export dir>-holdout<F>.")] = 0.0,
             sets: SetOpt = None, cache_dir: CacheOpt = None,
             json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the result here "
                                                              "[default: <run folder>/eval.json].")] = None,
             verbose: VerboseOpt = False, quiet: QuietOpt = False) -> None:
    setup(verbose, quiet)

    def go() -> None:
        from negmine.config import load_config
        from negmine.errors import NegmineError
        from negmine.evaluate import evaluate, read_qrels, table

        folder = run
        if run.is_file():
            from negmine.pipeline import mine

            items = list(sets or [])
            cfg = load_config(run, items)
            if holdout_frac:
                out = f"{cfg['export']['dir']}-holdout{holdout_frac:g}"
                cfg = load_config(run, items + [f"input.holdout_frac={holdout_frac}", f"export.dir='{out}'"])
            report = (lambda r: None) if quiet else (lambda r: typer.echo(r.message(), err=True))
            mine(cfg, cache_dir=cache_dir, on_stage=report)
            folder = Path(cfg["export"]["dir"])
        elif holdout_frac or sets:
            raise NegmineError("--holdout-frac and --set need a config to mine with; give the config, not a folder")
        min_score = 1
        prov = folder / "provenance.json"
        if prov.is_file():
            min_score = json.loads(prov.read_text())["config"]["input"]["min_positive_score"]
        result = evaluate(folder, read_qrels(qrels, min_score) if qrels else None)
        target = json_out or folder / "eval.json"
        from negmine.io import atomic_write_text

        atomic_write_text(target, json.dumps(result, indent=2) + "\n")
        typer.echo(table(result))
        typer.echo(f"written: {target}", err=True)

    guarded(verbose, go)
