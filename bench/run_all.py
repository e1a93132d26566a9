"""Run every benchmark and print one table of ratios and quality figures (`make bench`).

    python bench/run_all.py                 # bm25 + dense (cold, warm) + dense with a cross-encoder (100 queries)
    python bench/run_all.py --only-table    # just print the table from bench/results/*.json
    python bench/run_all.py --downstream    # also the downstream fine-tuning benchmark (hours on a CPU)

Each benchmark writes its own JSON under bench/results/; this script runs them one after another (never in
parallel: they time whole processes) and reads the files back.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
COMMANDS = {
    "bm25": [sys.executable, str(BENCH / "bm25.py")],
    "dense": [sys.executable, str(BENCH / "dense.py"), "--scenarios", "cold,warm"],
    "dense-ce": [sys.executable, str(BENCH / "dense.py"), "--scenarios", "cold-ce,warm-ce", "--queries", "100",
                 "--ce-max-length", "256", "--json", str(RESULTS / "dense-ce.json")],
    "downstream": [sys.executable, str(BENCH / "downstream.py")],
}


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def table() -> str:
    rows = [("benchmark", "figure", "value", "target")]
    bm = _load("bm25")
    if bm:
        r = bm["ratios_rank_bm25_over_bm25s"]
        rows += [("bm25 (scifact, 1,109 q)", "rank-bm25 / bm25s, retrieve time", f"{r['retrieve']:.1f}x", ">= 50x"),
                 ("", "rank-bm25 / bm25s, index time", f"{r['index']:.2f}x", ""),
                 ("", "rank-bm25 / bm25s, total time", f"{r['total']:.1f}x", ""),
                 ("", "bm25s / rank-bm25, peak RSS", f"{1 / r['peak_rss']:.2f}x", ""),
                 ("", "top-10 overlap (lucene / robertson vs Okapi)",
                  f"{bm['top10_overlap']['bm25s_vs_rank-bm25']['all']:.3f} / "
                  f"{bm['top10_overlap']['bm25s-robertson_vs_rank-bm25']['all']:.3f}", "")]
    for name in ("dense", "dense-cold", "dense-ce"):  # dense-cold: the cold scenario with low_memory behaviour
        d = _load(name)
        if not d:
            continue
        label = f"{name} (scifact, {d['dataset']['queries']} q, {d['dataset']['documents']} docs)"
        for scen, res in d["scenarios"].items():
            ra = res["ratios_negmine_over_st"]
            target = {"cold": "<= 1.0x both", "warm-ce": "<= 0.05x time"}.get(scen, "")
            rows.append((label, f"{scen}: negmine / ST time, peak RSS", f"{ra['wall']:.2f}x, {ra['peak_rss']:.2f}x",
                         target))
            label = ""
    ds = _load("downstream")
    if ds:
        for name, s in ds["rows"].items():
            rows.append(("downstream (scifact test)" if name == next(iter(ds["rows"])) else "", name,
                         f"nDCG@10 {s['ndcg@10']['mean']:.3f} ± {s['ndcg@10']['std']:.3f}, "
                         f"R@100 {s['recall@100']['mean']:.3f} ({s.get('seeds', len(s['ndcg@10']['runs']))} seeds)",
                         ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only-table", action="store_true")
    ap.add_argument("--downstream", action="store_true")
    args = ap.parse_args()
    if not args.only_table:
        for name, cmd in COMMANDS.items():
            if name == "downstream" and not args.downstream:
                continue
            print(f"== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True)
    print(table())


if __name__ == "__main__":
    main()
