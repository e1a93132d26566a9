"""What can the [judge] stage buy? `negmine eval --holdout-frac 0.3` on CISI with an oracle judge and noisy ones.

A scripted OpenAI-compatible server on 127.0.0.1 (tests/judge_server.py, the tests' own) answers each judge call
from the collection's full qrels (`qrels/all.tsv`, hidden positives included): it reads the query and candidate
texts in the prompt, maps them back to ids through `queries.jsonl` and `corpus.jsonl`, and names the candidates
that are relevant. That oracle proves the plumbing: every hidden positive the judge is asked about should leave
the negatives. A noisy judge flips each verdict with probability `p` (seeded by the texts, so reruns agree), which
shows how the false-negative rate and the number of negatives degrade with a worse model. The config is
`configs/simans.toml` (dense top 100, SimANS, 5 negatives; the recommended default when measured) with `[judge] on = "negatives"` (judge the 5
sampled) and `on = "pool"` (judge the whole window before sampling).

    .venv/bin/python bench/judge_oracle.py [--data ../shared/data/cisi] [--noise 0.1,0.2,0.4]
        [--json bench/results/judge-oracle.json]

Timings are wall seconds of the judge stage on this shared 2-core machine against a local server that answers at
once: they measure negmine's own overhead per call, not a real model's latency.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from judge_server import Oracle, ScriptedServer  # noqa: E402

from negmine.evaluate import evaluate_run  # noqa: E402


def run(name: str, data: Path, work: Path, judge: Oracle | None, extra: list[str]) -> dict:
    overrides = [f"input.path='{data}'", f"export.dir='{work / 'out' / name}'"] + extra
    start = time.perf_counter()
    stages: dict[str, object] = {}
    if judge is None:
        folder, result = evaluate_run(REPO / "configs" / "simans.toml", holdout_frac=0.3, overrides=overrides,
                                      cache_dir=work / "cache", eci_model=None,
                                      on_stage=lambda r: stages.__setitem__(r.stage, r))
        calls = None
    else:
        with ScriptedServer(judge) as server:
            overrides += [f"judge.model='oracle-noise-{judge.noise:g}'", f"judge.base_url='{server.base_url}'"]
            folder, result = evaluate_run(REPO / "configs" / "simans.toml", holdout_frac=0.3,
                                          overrides=overrides, cache_dir=work / "cache", eci_model=None,
                                          on_stage=lambda r: stages.__setitem__(r.stage, r))
            calls = server.calls
    fn = result["false_negatives"]
    report = json.loads((folder / "report.json").read_text())
    row = {"name": name, "false_negatives": fn["false_negatives"], "negatives": fn["negatives_of_those_queries"],
           "rate": fn["rate_among_negatives"], "ci95": fn["rate_among_negatives_ci95"],
           "share_of_held_out_mined": fn["share_of_held_out_mined_as_negatives"],
           "all_negatives": result["hardness"]["negatives"], "wall_s": round(time.perf_counter() - start, 1)}
    for key in ("judge", "judge-pool"):
        if key in stages:
            st = stages[key]
            row.update(http_requests=calls, judge_seconds=round(st.seconds, 2), judge_status=st.status,
                       judge=report.get("judge"))
    if judge is not None:
        row["unmatched_texts"] = judge.unmatched
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cisi")
    ap.add_argument("--work", type=Path, default=Path("/tmp/negmine-judge-oracle"))
    ap.add_argument("--noise", default="0.1,0.2,0.4")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "judge-oracle.json")
    args = ap.parse_args()
    max_chars = 2000
    rows = [run("recommended", args.data, args.work, None, [])]
    for on in ("negatives", "pool"):
        extra = [f"judge.on='{on}'"]
        rows.append(run(f"oracle-{on}", args.data, args.work, Oracle(args.data, max_chars), extra))
        for p in [float(x) for x in args.noise.split(",") if x]:
            rows.append(run(f"noise{p:g}-{on}", args.data, args.work, Oracle(args.data, max_chars, p), extra))
    print("| run | false negatives / negatives | rate (95% CI) | held-out mined | all negatives | calls | judge s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['false_negatives']} / {r['negatives']} | {r['rate']:.3f} ({r['ci95'][0]:.3f}-"
              f"{r['ci95'][1]:.3f}) | {r['share_of_held_out_mined']:.3f} | {r['all_negatives']} | "
              f"{r.get('http_requests', '-')} | {r.get('judge_seconds', '-')} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"data": str(args.data), "config": "configs/recommended.toml",
                                     "holdout_frac": 0.3, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
