"""The mining report: report.json, report.md and a PNG of the score distributions, written beside the exports.

It answers what a user needs before training on the negatives: how many, how hard (a score table for positives,
negatives and their gap), what each filter removed, where the positives ranked and how many were never
retrieved, which retriever found the kept negatives, how short queries were handled, time and peak memory.
`negmine report RUN` prints the Markdown summary of a run folder.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negmine.memory import peak_rss_mib

RANK_BUCKETS = [(1, 1), (2, 5), (6, 10), (11, 20), (21, 50), (51, 100), (101, 1000), (1001, None)]


def describe(values: np.ndarray) -> dict[str, float | int]:
    v = values[np.isfinite(values)] if len(values) else values
    if len(v) == 0:
        return {"count": 0}
    q = np.quantile(v, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"count": int(len(v)), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "p05": float(q[0]), "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]), "p95": float(q[4]),
            "max": float(v.max())}


def build(stages: dict[str, Any], negatives_path: Path, excluded_path: Path, positives_path: Path | None,
          score_type: str, n_positive_pairs: int, export_stats: dict[str, Any]) -> dict[str, Any]:
    neg = pq.read_table(negatives_path, columns=["query_id", "filter_score", "retriever", "source"])
    neg_scores = neg["filter_score"].to_numpy(zero_copy_only=False).astype(np.float64)
    report: dict[str, Any] = {"score_type": score_type}
    # scores: positives (on the filters' scale), negatives, and the gap s_pos(min) - s_neg per negative
    if positives_path is not None:
        pos = pq.read_table(positives_path, columns=["query_id", "teacher_score"])
        pos_scores = pos["teacher_score"].to_numpy(zero_copy_only=False).astype(np.float64)
        weakest = pos.group_by("query_id").aggregate([("teacher_score", "min")])
        by_q = dict(zip(weakest["query_id"].to_pylist(), weakest["teacher_score_min"].to_pylist()))
        gap = np.array([by_q.get(q, np.nan) for q in neg["query_id"].to_pylist()], dtype=np.float64) - neg_scores
    else:
        pos_scores, gap = np.array([]), np.array([])
    report["scores"] = {"positives": describe(pos_scores), "negatives": describe(neg_scores),
                        "gap_weakest_positive_minus_negative": describe(gap)}
    # what each exclusion and filter removed
    exc = stages["exclude"]["stats"]
    report["removed"] = {**exc.get("excluded", {}), **exc.get("filtered", {})}
    # where the positives ranked among the retrieved candidates, and how many were not retrieved at all
    excluded = pq.read_table(excluded_path, columns=["reason", "rank"])
    ranks = excluded.filter(pc.equal(excluded["reason"], "positive"))["rank"].to_numpy(zero_copy_only=False)
    buckets = {}
    for lo, hi in RANK_BUCKETS:
        name = f"{lo}" if lo == hi else (f"{lo}-{hi}" if hi else f">{lo - 1}")
        count = int(((ranks >= lo) & (ranks <= (hi or np.inf))).sum())
        if count or lo <= stages["retrieve"]["stats"].get("top_k", 100):
            buckets[name] = count
    report["positives"] = {"total": n_positive_pairs, "retrieved": int(len(ranks)),
                           "not_retrieved": int(n_positive_pairs - len(ranks)), "rank_histogram": buckets}
    # who found the kept negatives
    labels = neg["retriever"].to_pylist()
    sources = neg["source"].to_pylist()
    share: dict[str, int] = {}
    for label, source in zip(labels, sources):
        key = "pad-random" if source == "pad-random" else (label or "unknown")
        share[key] = share.get(key, 0) + 1
    report["negatives"] = {"total": neg.num_rows, "by_retriever": share,
                           "queries": len(set(neg["query_id"].to_pylist()))}
    report["shortage"] = stages["sample"]["stats"].get("outcomes", {})
    for name in ("judge-pool", "judge"):  # the LLM judge's verdicts and what they cost (negmine.judge)
        if name in stages:
            report["judge"] = stages[name]["stats"]
    report["export"] = export_stats
    report["stages"] = {name: {"key": s["key"][:12], "status": s["status"], "seconds": round(s["seconds"], 3),
                               "stats": s["stats"]} for name, s in stages.items()}
    report["peak_memory_mb"] = round(peak_rss_mib()[0], 1)
    return report


def _fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def markdown(report: dict[str, Any]) -> str:
    lines = ["# negmine mining report", ""]
    neg, pos = report["negatives"], report["positives"]
    lines += [f"{neg['total']} negatives for {neg['queries']} queries; {pos['total']} positives, "
              f"{pos['not_retrieved']} of them not retrieved at all. Scores: {report['score_type']}.", ""]
    skipped = report["stages"].get("ingest", {}).get("stats", {}).get("skipped") or {}
    if skipped:  # --skip-invalid: what was dropped from the input, by kind
        lines += [f"Input records skipped as invalid: {sum(skipped.values())} ("
                  + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) + ").", ""]
    lines += ["## Scores", "", "| | count | mean | std | p05 | p25 | median | p75 | p95 |", "|---|---|---|---|---|---|---|---|---|"]
    for name, d in report["scores"].items():
        if d.get("count"):
            lines.append(f"| {name.replace('_', ' ')} | {d['count']} | " + " | ".join(
                _fmt(d[k]) for k in ("mean", "std", "p05", "p25", "median", "p75", "p95")) + " |")
        else:
            lines.append(f"| {name.replace('_', ' ')} | 0 | | | | | | | |")
    lines += ["", "## Removed before sampling", "", "| reason | candidates |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["removed"].items()]
    lines += ["", "## Where the positives ranked", "", "| rank | positives |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in pos["rank_histogram"].items()]
    lines += [f"| not retrieved | {pos['not_retrieved']} |"]
    lines += ["", "## Negatives by retriever", "", "| found by | negatives | share |", "|---|---|---|"]
    total = max(1, neg["total"])
    lines += [f"| {k} | {v} | {v / total:.1%} |" for k, v in sorted(neg["by_retriever"].items())]
    lines += ["", "## Shortage", "", "| outcome | queries |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(report["shortage"].items())]
    j = report.get("judge")
    if j:
        lines += ["", "## LLM judge", "", f"Model {j['model']} (prompt {j['prompt_version']}) judged {j['judged']} "
                  f"candidates ({'the pool' if j['on'] == 'pool' else 'the sampled negatives'}) in {j['calls']} calls, "
                  f"{j['from_store']} of them from the verdict store; {j['calls_made']} calls made "
                  f"({j['requests']} requests, {j['retries']} retried, {j['malformed_answers_retried']} malformed "
                  f"answers asked again), {j['tokens_spent']} tokens spent in this run.", "",
                  "| verdict | candidates |", "|---|---|",
                  f"| false negative | {j['false_negatives']} |", f"| no verdict | {j['no_verdict']} |",
                  f"| relabelled as positives | {j['relabeled']} |", f"| dropped | {j['dropped']} |"]
    lines += ["", "## Files", "", "| file | rows |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["export"]["files"].items()]
    left = report["export"].get("queries_left_out") or {}
    if left:
        lines += ["", "Queries left out of a format (too few negatives for it): "
                  + ", ".join(f"{k} {v}" for k, v in left.items())]
    lines += ["", "## Stages", "", "| stage | status | seconds | key |", "|---|---|---|---|"]
    lines += [f"| {k} | {s['status']} | {s['seconds']} | {s['key']} |" for k, s in report["stages"].items()]
    lines += ["", f"Peak memory: {report['peak_memory_mb']} MiB.", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], negatives_path: Path, positives_path: Path | None, out: Path) -> None:
    """Histogram of positive and negative scores (the filters' scale) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    neg = pq.read_table(negatives_path, columns=["filter_score"])["filter_score"].to_numpy(zero_copy_only=False)
    neg = neg[np.isfinite(neg.astype(np.float64))]
    pos = (pq.read_table(positives_path, columns=["teacher_score"])["teacher_score"].to_numpy(zero_copy_only=False)
           if positives_path is not None else np.array([]))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    both = np.concatenate([pos, neg]) if len(pos) else neg
    lo, hi = (float(both.min()), float(both.max())) if len(both) else (0.0, 1.0)
    pad = max(abs(hi - lo), 1e-3 * max(1.0, abs(hi))) * 0.05  # scores can all but coincide
    bins = np.linspace(lo - pad, hi + pad, 41)
    if len(pos):
        ax.hist(pos, bins=bins, alpha=0.6, label=f"positives ({len(pos)})", color="tab:green", density=True)
    if len(neg):
        ax.hist(neg, bins=bins, alpha=0.6, label=f"negatives ({len(neg)})", color="tab:red", density=True)
    ax.set_xlabel(f"score ({report['score_type']})")
    ax.set_ylabel("density")
    ax.set_title("negmine: positive and negative scores")
    if len(pos) or len(neg):
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)


def write(report: dict[str, Any], negatives_path: Path, positives_path: Path | None, out_dir: Path) -> None:
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    (out_dir / "report.md").write_text(markdown(report))
    plot(report, negatives_path, positives_path, out_dir / "scores.png")
