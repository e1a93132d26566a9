"""The mining report: report.json, report.md, report.html and an SVG of the scores, written beside the exports.

It answers what a user needs before training on the negatives: how many, how hard (a score table for positives,
negatives and their gap), what each filter removed, where the positives ranked and how many were never
retrieved, which retriever found the kept negatives, how short queries were handled, time and peak memory.
`negmine report RUN` prints the Markdown summary of a run folder. report.html is the same report for a browser,
with the plots inline and an examples section: a seeded sample of queries, each with its positives, its mined
negatives and every other candidate with what removed it (`negmine.story`). It is one self-contained file (no
network, no script: its Content-Security-Policy forbids both) and every text in it is escaped, since documents and
queries are user data.
"""
from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from negmine.io import read_parquet
from negmine.memory import peak_rss_mib
from negmine.story import QueryStory

EXAMPLES = 5  # queries shown in the examples sections

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
    neg = read_parquet(negatives_path, columns=["query_id", "filter_score", "retriever", "source"])
    neg_scores = neg["filter_score"].to_numpy(zero_copy_only=False).astype(np.float64)
    report: dict[str, Any] = {"score_type": score_type}
    # scores: positives (on the filters' scale), negatives, and the gap s_pos(min) - s_neg per negative
    if positives_path is not None:
        pos = read_parquet(positives_path, columns=["query_id", "teacher_score"])
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
    excluded = read_parquet(excluded_path, columns=["reason", "rank"])
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
    sampled = stages["sample"]["stats"]  # a teacher ensemble (negmine.samplers.ensemble): who gave what
    if sampled.get("teachers") or sampled.get("agreement"):
        report["ensemble"] = {k: sampled[k] for k in ("ensemble", "teachers", "by_teacher", "queries_by_teacher",
                                                      "agreement") if sampled.get(k) is not None}
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
    lines += _markdown_ensemble(report.get("ensemble"))
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
    lines += _markdown_examples(report.get("examples") or [])
    return "\n".join(lines)


def pick_examples(query_ids: Sequence[str], seed: int, k: int = EXAMPLES) -> list[str]:
    """A seeded sample of `k` mined queries, in their input order: the same run shows the same examples."""
    rng = np.random.default_rng([seed, 0x5E9])  # its own stream: not the draws the sampler made for any query
    take = np.sort(rng.choice(len(query_ids), size=min(k, len(query_ids)), replace=False))
    return [query_ids[i] for i in take.tolist()]


def example_summary(st: QueryStory) -> dict[str, Any]:
    """An example as report.json keeps it: ids, ranks, scores and removal counts (no texts)."""
    removed: dict[str, int] = {}
    for c in st.candidates:
        if c.outcome in ("excluded", "removed"):
            removed[c.code] = removed.get(c.code, 0) + 1
    return {"query_id": st.query_id, "text": st.text, "positives": [p.doc_id for p in st.positives],
            "negatives": [{"doc_id": c.doc_id, "rank": c.rank, "score": c.score, "teacher_score": c.teacher_score,
                           "retriever": c.retriever} for c in st.candidates if c.outcome == "sampled"],
            "candidates": len(st.candidates), "removed": removed, "note": st.note}


def _md_text(text: str, width: int = 80) -> str:
    """User text on one Markdown line: whitespace collapsed, cut, and Markdown/HTML characters escaped."""
    t = " ".join(str(text).split())
    t = t if len(t) <= width else t[:width - 1] + "…"
    return "".join("\\" + ch if ch in "\\`*_[]<>|#" else ch for ch in t)


def _markdown_examples(examples: list[dict[str, Any]]) -> list[str]:
    if not examples:
        return []
    lines = ["## Examples", "", f"{len(examples)} queries drawn with the [sample] seed; report.html shows every "
             "candidate of each with its texts and what happened to it.", ""]
    for ex in examples:
        negs = ", ".join(f"{_md_text(n['doc_id'], 40)} (rank {n['rank'] if n['rank'] is not None else '-'}, "
                         f"{_fmt(n['score']) if n['score'] is not None else '-'})" for n in ex["negatives"]) or "none"
        removed = ", ".join(f"{_md_text(k, 60)} {v}" for k, v in sorted(ex["removed"].items())) or "none"
        lines.append(f"- query {_md_text(ex['query_id'], 40)}: \"{_md_text(ex['text'])}\"; "
                     f"{len(ex['positives'])} positives; negatives: {negs}; removed: {removed}"
                     + (f"; {ex['note']}" if ex["note"] else ""))
    return lines + [""]


def _tick(v: float) -> str:
    return f"{v:.3g}"


def histogram_svg(report: dict[str, Any], negatives_path: Path, positives_path: Path | None) -> str:
    """Histogram of positive and negative scores (the filters' scale) as a standalone SVG: 40 bins over both,
    each side's density, drawn by hand (plotting libraries cost a second of import for one picture)."""
    neg = read_parquet(negatives_path, columns=["filter_score"])["filter_score"].to_numpy(zero_copy_only=False)
    neg = neg[np.isfinite(neg.astype(np.float64))].astype(np.float64)
    pos = (read_parquet(positives_path, columns=["teacher_score"])["teacher_score"].to_numpy(zero_copy_only=False)
           if positives_path is not None else np.array([]))
    pos = pos[np.isfinite(pos.astype(np.float64))].astype(np.float64)
    both = np.concatenate([pos, neg])
    lo, hi = (float(both.min()), float(both.max())) if len(both) else (0.0, 1.0)
    pad = max(abs(hi - lo), 1e-3 * max(1.0, abs(hi))) * 0.05  # scores can all but coincide
    bins = np.linspace(lo - pad, hi + pad, 41)
    series = [(f"positives ({len(pos)})", pos, "#2ca02c"), (f"negatives ({len(neg)})", neg, "#d62728")]
    dens = [np.histogram(v, bins=bins, density=True)[0] if len(v) else np.zeros(40) for _, v, _ in series]
    top = max(float(max(d.max() for d in dens)), 1e-12)
    w, h, left, right, up, down = 700, 400, 64, 16, 36, 52
    pw, ph = w - left - right, h - up - down

    def x(v: float) -> float:
        return left + (v - bins[0]) / (bins[-1] - bins[0]) * pw

    def y(v: float) -> float:
        return up + ph - v / top * ph

    title = "negmine: positive and negative scores"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
           f'aria-label="histogram of positive and negative scores" font-family="sans-serif">',
           f'<rect width="{w}" height="{h}" fill="#fff"/>',
           f'<text x="{left + pw / 2:.1f}" y="22" font-size="15" text-anchor="middle">{_e(title)}</text>']
    for (_, values, color), d in zip(series, dens):
        if not len(values):
            continue
        for i, v in enumerate(d):
            if v > 0:
                out.append(f'<rect x="{x(bins[i]):.2f}" y="{y(v):.2f}" width="{x(bins[i + 1]) - x(bins[i]):.2f}" '
                           f'height="{up + ph - y(v):.2f}" fill="{color}" fill-opacity="0.6"/>')
    out.append(f'<path d="M{left} {up}V{up + ph}H{left + pw}" fill="none" stroke="#333"/>')
    for t in np.linspace(bins[0], bins[-1], 6):
        out.append(f'<path d="M{x(t):.2f} {up + ph}v5" stroke="#333"/><text x="{x(t):.2f}" y="{up + ph + 18}" '
                   f'font-size="11" text-anchor="middle">{_e(_tick(float(t)))}</text>')
    for t in np.linspace(0, top, 5):
        out.append(f'<path d="M{left} {y(t):.2f}h-5" stroke="#333"/><text x="{left - 8}" y="{y(t) + 4:.2f}" '
                   f'font-size="11" text-anchor="end">{_e(_tick(float(t)))}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{h - 10}" font-size="12" text-anchor="middle">'
               f'score ({_e(report["score_type"])})</text>')
    out.append(f'<text x="14" y="{up + ph / 2:.1f}" font-size="12" text-anchor="middle" '
               f'transform="rotate(-90 14 {up + ph / 2:.1f})">density</text>')
    shown = [(label, color) for label, values, color in series if len(values)]
    for i, (label, color) in enumerate(shown):
        ly = up + 8 + i * 18
        out.append(f'<rect x="{left + pw - 170}" y="{ly}" width="12" height="12" fill="{color}" fill-opacity="0.6"/>'
                   f'<text x="{left + pw - 152}" y="{ly + 10}" font-size="12">{_e(label)}</text>')
    return "".join(out) + "</svg>\n"


def write(report: dict[str, Any], negatives_path: Path, positives_path: Path | None, out_dir: Path,
          stories: Sequence[QueryStory] = ()) -> None:
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    (out_dir / "report.md").write_text(markdown(report))
    svg = histogram_svg(report, negatives_path, positives_path)
    (out_dir / "scores.svg").write_text(svg, encoding="utf-8")
    (out_dir / "report.html").write_text(to_html(report, stories, svg), encoding="utf-8")


def _e(value: Any) -> str:
    """Escape any value for HTML text and attributes (documents and queries are user data)."""
    return html.escape("-" if value is None else _fmt(value), quote=True)


def _bars_svg(title: str, counts: dict[str, int]) -> str:
    """A bar chart as inline SVG (no script, no external file)."""
    items = list(counts.items())
    w, bar_h, gap, label_w = 560, 18, 6, 110
    h = 30 + len(items) * (bar_h + gap)
    top = max([v for _, v in items] + [1])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
             f'aria-label="{_e(title)}"><text x="0" y="16" font-size="14" font-weight="bold">{_e(title)}</text>']
    for i, (name, v) in enumerate(items):
        y = 26 + i * (bar_h + gap)
        bw = int((w - label_w - 60) * v / top)
        parts.append(f'<text x="{label_w - 6}" y="{y + 13}" font-size="12" text-anchor="end">{_e(name)}</text>'
                     f'<rect x="{label_w}" y="{y}" width="{bw}" height="{bar_h}" fill="#4c72b0"/>'
                     f'<text x="{label_w + bw + 4}" y="{y + 13}" font-size="12">{_e(v)}</text>')
    return "".join(parts) + "</svg>"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;
vertical-align:top;font-size:13px}th{background:#f2f2f2}.plots{display:flex;flex-wrap:wrap;gap:1.5em}
.example{border:1px solid #bbb;border-radius:6px;padding:.5em 1em;margin:1em 0}.query{font-size:15px}
tr.sampled td{background:#fde8e8}tr.excluded td{background:#e8f4e8}tr.removed td{background:#fff6dd}
tr.not-sampled td{color:#555}.doc{max-width:520px;white-space:pre-wrap;word-break:break-word}
.note{color:#a33}
"""


def _doc(title: str, text: str, limit: int | None) -> str:
    full = f"{title} | {text}" if title else text
    if limit is not None and len(full) > limit:
        return _e(full[:limit - 1] + "…")
    return _e(full)


def _example_html(st: QueryStory) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(st.counts().items()))
    out = [f'<section class="example" id="q-{_e(st.query_id)}"><h3>Query {_e(st.query_id)}</h3>',
           f'<p class="query">{_e(st.text)}</p>']
    if st.note:
        out.append(f'<p class="note">{_e(st.note)}</p>')
    negs = [c for c in st.candidates if c.outcome == "sampled"]
    out.append(f"<h4>Mined negatives ({len(negs)})</h4>")
    out.append(_rows_html(["rank", "doc id", "found by", "score", "each retriever (rank, score)", "teacher", "text"],
                          [[c.rank, c.doc_id, c.retriever or c.code, c.score, _per_retriever(c), c.teacher_score,
                            (c.title, c.text, 600)] for c in negs], "negatives"))
    out.append(f"<h4>Positives ({len(st.positives)})</h4>")
    out.append(_rows_html(["doc id", "grade", "rank", "retriever score", "teacher score", "text"],
                          [[p.doc_id, p.grade, p.rank if p.rank is not None else "not retrieved", p.retriever_score,
                            p.teacher_score, (p.title, p.text, 300)] for p in st.positives], "positives"))
    out.append(f"<details open><summary><b>Every candidate ({len(st.candidates)}: {_e(counts)}; scores: "
               f"{_e(st.score_type)})</b></summary>")
    out.append(_rows_html(["rank", "doc id", "outcome", "why", "score", "each retriever (rank, score)", "teacher",
                           "text"],
                          [[c.rank, c.doc_id, c.outcome, c.reason, c.score, _per_retriever(c), c.teacher_score,
                            (c.title, c.text, 600 if c.outcome == "sampled" else 200)] for c in st.candidates],
                          "candidates", [c.outcome.replace(" ", "-") for c in st.candidates]))
    out.append("</details></section>")
    return "".join(out)


def _ensemble_rows(e: dict[str, Any]) -> tuple[str, list[tuple[Any, ...]], str]:
    """(sentence, rows of teacher / negatives / share / queries it supplied / candidates it vetoed, agreement
    sentence) of a teacher ensemble's sampling."""
    by = e.get("by_teacher") or {}
    total = max(1, sum(by.values()))
    queries, vetoed = e.get("queries_by_teacher") or {}, (e.get("agreement") or {}).get("vetoes") or {}
    names = e.get("teachers") or list(vetoed)
    rows = [(n, by.get(n, "-"), f"{by[n] / total:.1%}" if n in by else "-", queries.get(n, "-"),
             vetoed.get(n, "-")) for n in names]
    mode = e.get("ensemble", "none")
    how = {"cross": "cross-sampling (one teacher a query, chosen by hash of seed and query id)",
           "intra": "intra-sampling (each teacher's best in turn)"}.get(mode, "the [sample] strategy")
    a = e.get("agreement")
    agreed = (f"Agreement filter (perc-pos, alpha {a['alpha']:g}, under every teacher): kept {a['kept']} of "
              f"{a['candidates']} candidates, dropped {a['dropped']}." if a else "")
    return f"Teachers {', '.join(names)}; negatives chosen by {how}.", rows, agreed


def _markdown_ensemble(e: dict[str, Any] | None) -> list[str]:
    if not e:
        return []
    sentence, rows, agreed = _ensemble_rows(e)
    lines = ["", "## Negatives by teacher", "", sentence, "",
             "| teacher | negatives | share | queries supplied | candidates vetoed |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return lines + (["", agreed] if agreed else [])


def _html_ensemble(e: dict[str, Any] | None) -> str:
    if not e:
        return ""
    sentence, rows, agreed = _ensemble_rows(e)
    return ("<h2>Negatives by teacher</h2>" + f"<p>{_e(sentence)}</p>"
            + _rows_html(["teacher", "negatives", "share", "queries supplied", "candidates vetoed"], rows)
            + (f"<p>{_e(agreed)}</p>" if agreed else ""))


def _per_retriever(c: Any) -> str | None:
    return "; ".join(f"{name} #{rk} {_fmt(sc)}" for name, (rk, sc) in c.retriever_scores.items()) or None


def _rows_html(head: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "summary",
               row_classes: Sequence[str] | None = None) -> str:
    """A table whose cells are escaped values; a (title, text, limit) cell is a document's text, cut at limit."""
    out = [f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        rc = f' class="{_e(row_classes[i])}"' if row_classes else ""
        cells = [f'<td class="doc">{_doc(*v)}</td>' if isinstance(v, tuple) else f"<td>{_e(v)}</td>" for v in row]
        out.append(f"<tr{rc}>" + "".join(cells) + "</tr>")
    return "".join(out) + "</tbody></table>"


def to_html(report: dict[str, Any], stories: Sequence[QueryStory], histogram: str) -> str:
    """The report as one self-contained HTML page: no script, no network (the CSP forbids both)."""
    neg, pos = report["negatives"], report["positives"]
    score_rows = [(name.replace("_", " "), d.get("count", 0), *[d.get(k) for k in ("mean", "std", "p05", "p25",
                                                                                  "median", "p75", "p95")])
                  for name, d in report["scores"].items()]
    total = max(1, neg["total"])
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>negmine mining report</title><style>{_CSS}</style></head><body>",
        "<h1>negmine mining report</h1>",
        f"<p>{_e(neg['total'])} negatives for {_e(neg['queries'])} queries; {_e(pos['total'])} positives, "
        f"{_e(pos['not_retrieved'])} of them not retrieved at all. Scores: {_e(report['score_type'])}.</p>",
        "<h2>Scores</h2>",
        _rows_html(["", "count", "mean", "std", "p05", "p25", "median", "p75", "p95"], score_rows),
        "<h2>Removed before sampling</h2>",
        _rows_html(["reason", "candidates"], list(report["removed"].items())),
        "<h2>Plots</h2><div class=\"plots\">",
        histogram,
        _bars_svg("Where the positives ranked", {**pos["rank_histogram"], "not retrieved": pos["not_retrieved"]}),
        _bars_svg("Removed before sampling", dict(report["removed"])) if report["removed"] else "",
        "</div>",
        "<h2>Negatives by retriever</h2>",
        _rows_html(["found by", "negatives", "share"],
                   [(k, v, f"{v / total:.1%}") for k, v in sorted(neg["by_retriever"].items())]),
        _html_ensemble(report.get("ensemble")),
        "<h2>Shortage</h2>", _rows_html(["outcome", "queries"], sorted(report["shortage"].items())),
        "<h2>Files</h2>", _rows_html(["file", "rows"], list(report["export"]["files"].items())),
        "<h2>Stages</h2>",
        _rows_html(["stage", "status", "seconds", "key"],
                   [(k, v["status"], v["seconds"], v["key"]) for k, v in report["stages"].items()]),
        f"<p>Peak memory: {_e(report['peak_memory_mb'])} MiB.</p>",
        f"<h2 id=\"examples\">Examples</h2><p>{len(stories)} queries drawn with the [sample] seed: each with its "
        "positives and every retrieved candidate, with what happened to it (red: sampled as a negative; green: "
        "excluded; yellow: removed by a filter).</p>",
        *[_example_html(st) for st in stories],
        "</body></html>\n",
    ]
    return "".join(parts)
