"""Benchmark negmine's two BM25 backends, bm25s and rank-bm25, side by side on the real SciFact collection.

Both backends index the whole corpus and retrieve the top-k of every query (train and test together) through
negmine's own `build_index` and `Searcher`, each in a fresh subprocess so that its imports, its time and its peak
memory (RSS) are its own. Prints wall time per phase, peak RSS, the rank-bm25 / bm25s ratios and the mean top-10
overlap of the two backends, and writes the figures as JSON (default bench/results/bm25.json).

    .venv/bin/python bench/bm25.py [--data PATH] [--top-k 100] [--repeat 3] [--json PATH]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import cpu_name, peak_rss_mib, versions

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "scifact"
DEFAULT_JSON = REPO / "bench" / "results" / "bm25.json"
OVERLAP_AT = 10

# label -> (backend, method). The first two are the timed comparison; negmine's rank-bm25 backend maps every
# method except bm25l/bm25+ to BM25Okapi, so its method is left at the default. bm25s "robertson" is the variant
# closest to BM25Okapi and is run for the overlap only.
RUNS: dict[str, tuple[str, str | None]] = {
    "bm25s": ("bm25s", "lucene"),
    "rank-bm25": ("rank-bm25", None),
    "bm25s-robertson": ("bm25s", "robertson"),
}
TIMED = ("bm25s", "rank-bm25")
PHASES = ("index", "retrieve", "total")


def make_config(data: Path, backend: str, method: str | None) -> dict[str, Any]:
    from negmine.config import load_config

    overrides: dict[str, Any] = {"input.path": str(data), "bm25.backend": backend}
    if method is not None:
        overrides["bm25.method"] = method
    return load_config(None, overrides)




# ---------------------------------------------------------------------------------------------------- worker


def worker(args: argparse.Namespace) -> None:
    """One backend, timed: build the index, then load it and search every query. Writes JSON + top-k arrays."""
    # negmine.retrievers.bm25 pulls in numpy and pyarrow only; bm25s, rank_bm25 and scipy load inside the timed phases,
    # so each backend pays for its own imports.
    import pyarrow.parquet as pq

    from negmine.retrievers.bm25 import Searcher, build_index

    cfg = make_config(args.data, args.backend, args.method)
    params, inp = cfg["bm25"], cfg["input"]
    queries = pq.read_table(args.ingest / "queries.parquet", columns=["text"]).column(0).to_pylist()
    rss_start, _ = peak_rss_mib()

    t0 = time.perf_counter()
    info = build_index(params, args.ingest, args.index)
    t1 = time.perf_counter()
    rss_index, _ = peak_rss_mib()
    searcher = Searcher(params, args.index)
    t2 = time.perf_counter()
    # chunked as negmine's retrieve stage does, so the Searcher sees the same calls as in a real run
    chunk = cfg["retrieve"]["chunk_size"]
    parts = [searcher.search(queries[a:a + chunk], args.top_k) for a in range(0, len(queries), chunk)]
    docs = np.concatenate([p[0] for p in parts])
    scores = np.concatenate([p[1] for p in parts])
    t3 = time.perf_counter()
    rss_peak, rss_source = peak_rss_mib()  # before the untimed check below, which loads the index again

    result: dict[str, Any] = {
        "backend": args.backend,
        "method": params["method"] if args.backend == "bm25s" else "BM25Okapi",
        "bm25": params,
        "index_info": info,
        "queries": len(queries),
        "seconds": {"index": t1 - t0, "load": t2 - t1, "search": t3 - t2, "retrieve": t3 - t1, "total": t3 - t0},
        "rss_mib": {"start": rss_start, "peak_after_index": rss_index, "peak": rss_peak, "source": rss_source},
    }
    if args.backend == "bm25s":
        result["native_check"] = check_against_bm25s(params, args.index, queries, docs, scores)
    np.save(args.out / f"{args.worker}-docs.npy", docs)
    np.save(args.out / f"{args.worker}-scores.npy", scores)
    (args.out / f"{args.worker}.json").write_text(json.dumps(result, indent=2))


def check_against_bm25s(params: dict[str, Any], index_dir: Path, queries: list[str], docs: np.ndarray,
                        scores: np.ndarray) -> dict[str, Any]:
    """Compare the Searcher's top-10 with bm25s' own `retrieve` on the same saved index (not timed).

    The Searcher replaces bm25s' per-query loop by one sparse product; scores must agree to float32 rounding, and
    documents too except where scores tie at the cut-off.
    """
    import bm25s

    from negmine.retrievers.bm25 import make_tokenizer

    retriever = bm25s.BM25.load(str(index_dir / "bm25s"), show_progress=False)
    tok = make_tokenizer(params)
    tok.load_vocab(str(index_dir / "bm25s"))
    tok.load_stopwords(str(index_dir / "bm25s"))
    ids = tok.tokenize(queries, update_vocab=False, return_as="ids", show_progress=False)
    k = min(OVERLAP_AT, docs.shape[1])
    native_docs, native_scores = retriever.retrieve(ids, k=k, show_progress=False, n_threads=1)
    # bm25s sorts by score only; compare sorted score vectors and the document sets. Where a query matches fewer
    # than k documents, the Searcher pads with (-1, -inf) and bm25s returns arbitrary score-0 documents: compare
    # those slots as 0
    mine = np.where(docs[:, :k] >= 0, scores[:, :k], 0.0)
    diff = np.abs(np.sort(native_scores, axis=1) - np.sort(mine, axis=1))
    return {"k": k, "top_k_overlap": mean_overlap(docs, native_docs, k),
            "top_k_overlap_scored": mean_overlap(docs, native_docs, k, scores, native_scores),
            "max_abs_score_diff": float(diff.max()),
            "max_rel_score_diff": float((diff / np.maximum(np.abs(native_scores).max(axis=1, keepdims=True),
                                                           1e-12)).max())}


# ---------------------------------------------------------------------------------------------------- parent


def mean_overlap(a: np.ndarray, b: np.ndarray, k: int, a_scores: np.ndarray | None = None,
                 b_scores: np.ndarray | None = None) -> float:
    """Mean over queries of |A ∩ B| / k, A and B the first k documents of each row.

    With scores, documents scoring 0 are left out of A and B and the divisor is max(|A|, |B|) (1 when both are
    empty): a score-0 document shares no term with the query, so which ones fill a short list is arbitrary, and
    negmine's retrieve stage drops them anyway. Where both lists hold k scored documents this equals |A ∩ B| / k.
    """
    values = []
    for i in range(len(a)):
        x, y = a[i, :k], b[i, :k]
        if a_scores is not None and b_scores is not None:
            x, y = x[a_scores[i, :k] != 0], y[b_scores[i, :k] != 0]
        n = max(len(x), len(y))
        values.append(len(set(x.tolist()) & set(y.tolist())) / n if n else 1.0)
    return float(np.mean(values))


def run_worker(label: str, data: Path, ingest_dir: Path, work: Path, top_k: int) -> dict[str, Any]:
    backend, method = RUNS[label]
    index_dir = work / f"index-{label}"
    shutil.rmtree(index_dir, ignore_errors=True)  # each repeat builds from scratch
    index_dir.mkdir()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", label, "--backend", backend,
           "--data", str(data), "--ingest", str(ingest_dir), "--index", str(index_dir), "--out", str(work),
           "--top-k", str(top_k)]
    if method is not None:
        cmd += ["--method", method]
    env = {**os.environ, "NEGMINE_PROGRESS": "0"}
    subprocess.run(cmd, check=True, env=env)
    result = json.loads((work / f"{label}.json").read_text())
    result["docs"] = np.load(work / f"{label}-docs.npy")
    result["scores"] = np.load(work / f"{label}-scores.npy")
    return result


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR qrels TSV (query-id, corpus-id, score; header line) as {query: {doc: grade}}, positives only."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.reader(fh, delimiter="\t"):
            if len(row) != 3 or not row[2].strip().lstrip("-").isdigit():
                continue  # header
            if int(row[2]) > 0:
                qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    return qrels


def quality(docs: np.ndarray, query_ids: list[str], doc_ids: list[str], qrels: dict[str, dict[str, int]],
            ) -> dict[str, float]:
    """nDCG@10 (linear gain, as BEIR) and recall at the full top-k over the judged queries: a sanity check."""
    row = {q: i for i, q in enumerate(query_ids)}
    ndcg, recall = [], []
    for q, rel in qrels.items():
        ranked = [doc_ids[d] for d in docs[row[q]]]
        gains = [rel.get(d, 0) for d in ranked[:10]]
        dcg = sum(g / np.log2(i + 2) for i, g in enumerate(gains))
        idcg = sum(g / np.log2(i + 2) for i, g in enumerate(sorted(rel.values(), reverse=True)[:10]))
        ndcg.append(dcg / idcg)
        recall.append(len(set(ranked) & set(rel)) / len(rel))
    return {"ndcg@10": float(np.mean(ndcg)), "recall": float(np.mean(recall)), "recall_at": docs.shape[1],
            "queries": len(qrels)}






def main(args: argparse.Namespace) -> None:
    import pyarrow.parquet as pq

    from negmine.ingest import ingest

    data = args.data.resolve()
    with tempfile.TemporaryDirectory(prefix="negmine-bench-bm25-") as tmp:
        work = Path(tmp)
        ingest_dir = work / "ingest"
        ingest_dir.mkdir()
        # shared and untimed: both backends read the same corpus.parquet
        ingest_stats = ingest(make_config(data, "bm25s", None)["input"], ingest_dir)
        query_ids = pq.read_table(ingest_dir / "queries.parquet", columns=["query_id"]).column(0).to_pylist()
        doc_ids = pq.read_table(ingest_dir / "corpus.parquet", columns=["doc_id"]).column(0).to_pylist()

        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in RUNS}
        for rep in range(args.repeat):
            # alternate the order, so that neither backend always runs first (the first run is often slower)
            order = list(TIMED if rep % 2 == 0 else reversed(TIMED))
            if rep == 0:
                order += [label for label in RUNS if label not in TIMED]  # for the overlap only: run once
            for label in order:
                print(f"[{rep + 1}/{args.repeat}] {label} ...", file=sys.stderr, flush=True)
                runs[label].append(run_worker(label, data, ingest_dir, work, args.top_k))

    summary = {label: summarise(rs) for label, rs in runs.items()}
    k = min(OVERLAP_AT, args.top_k)
    pairs = [(label, "rank-bm25") for label in RUNS if label != "rank-bm25"] + [("bm25s", "bm25s-robertson")]
    overlap = {}
    for x, y in pairs:
        rx, ry = runs[x][-1], runs[y][-1]
        overlap[f"{x}_vs_{y}"] = {"all": mean_overlap(rx["docs"], ry["docs"], k),
                                  "scored": mean_overlap(rx["docs"], ry["docs"], k, rx["scores"], ry["scores"])}
    # queries where a top-10 reaches score 0: their tail is arbitrary (no shared term), so overlap there is noise
    short = {label: int((rs[-1]["scores"][:, :k] == 0).any(axis=1).sum()) for label, rs in runs.items()}
    qrels_files = {split: data / "qrels" / f"{split}.tsv" for split in ("train", "test")}
    qual = {label: {split: quality(rs[-1]["docs"], query_ids, doc_ids, read_qrels(path))
                    for split, path in qrels_files.items() if path.is_file()}
            for label, rs in runs.items()}

    ratios = {p: summary["rank-bm25"]["seconds"][p] / summary["bm25s"]["seconds"][p] for p in PHASES}
    ratios["peak_rss"] = summary["rank-bm25"]["rss_mib"]["peak"] / summary["bm25s"]["rss_mib"]["peak"]
    report = {
        "benchmark": "bm25",
        "description": "negmine BM25 backends, bm25s vs rank-bm25: index the whole corpus, retrieve top-k for "
                       "every query; each backend in a fresh subprocess",
        "dataset": {"name": data.name, "path": str(data), "documents": ingest_stats["documents"],
                    "queries": len(query_ids)},
        "top_k": args.top_k,
        "repeat": args.repeat,
        "timing_statistic": f"median of {args.repeat} runs" if args.repeat > 1 else "single run",
        "runs": summary,
        "ratios_rank_bm25_over_bm25s": ratios,
        f"top{k}_overlap": overlap,
        f"queries_with_zero_scores_in_top{k}": short,
        "quality": qual,
        "environment": {"platform": platform.platform(), "cpu": cpu_name(), "cpus": os.cpu_count(),
                        "versions": versions(("negmine", "bm25s", "rank-bm25", "numpy", "scipy", "pyarrow",
                                              "PyStemmer"))},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    print(f"\nwritten: {args.json}")


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's figures: the median time per phase over repeats, the largest peak RSS."""
    last = results[-1]
    return {
        "backend": last["backend"], "method": last["method"], "bm25": last["bm25"],
        "vocabulary": last["index_info"]["vocabulary"], "queries": last["queries"],
        "seconds": {p: statistics.median(r["seconds"][p] for r in results) for p in last["seconds"]},
        "seconds_all": [r["seconds"] for r in results],
        "rss_mib": {**{key: max(r["rss_mib"][key] for r in results) for key in ("start", "peak_after_index", "peak")},
                    "source": last["rss_mib"]["source"]},
        **({"native_check": last["native_check"]} if "native_check" in last else {}),
    }


def render(report: dict[str, Any]) -> str:
    runs, ratios, ds = report["runs"], report["ratios_rank_bm25_over_bm25s"], report["dataset"]
    p = runs["bm25s"]["bm25"]
    k = min(OVERLAP_AT, report["top_k"])
    lines = [
        f"BM25 backends on {ds['name']}: {ds['documents']:,} documents, {ds['queries']:,} queries, "
        f"top-{report['top_k']} ({report['timing_statistic']}; k1={p['k1']}, b={p['b']}, "
        f"stopwords={p['stopwords'] or 'none'}, stemmer={p['stemmer'] or 'none'})",
        "",
        f"{'backend':<24}{'tokenize+index':>16}{'retrieve':>12}{'total':>12}{'peak RSS':>14}",
    ]
    for label in TIMED:
        run, s = runs[label], runs[label]["seconds"]
        name = f"{label} ({run['method']})"
        lines.append(f"{name:<24}{s['index']:>14.2f} s{s['retrieve']:>10.2f} s{s['total']:>10.2f} s"
                     f"{run['rss_mib']['peak']:>10.0f} MiB")
    lines.append(f"{'rank-bm25 / bm25s':<24}{ratios['index']:>15.1f}x{ratios['retrieve']:>11.1f}x"
                 f"{ratios['total']:>11.1f}x{ratios['peak_rss']:>13.2f}x")
    b, r = runs["bm25s"], runs["rank-bm25"]
    title = f"top-{k} overlap: mean |A∩B|/{k} over {ds['queries']:,} queries"
    lines += [
        f"retrieve = load the saved index + search; load: bm25s {b['seconds']['load']:.2f} s, "
        f"rank-bm25 {r['seconds']['load']:.2f} s",
        f"RSS ({b['rss_mib']['source']}): at start, after imports and query texts, bm25s "
        f"{b['rss_mib']['start']:.0f} MiB, rank-bm25 {r['rss_mib']['start']:.0f} MiB; peak up to the end of "
        f"tokenize+index: bm25s {b['rss_mib']['peak_after_index']:.0f} MiB, "
        f"rank-bm25 {r['rss_mib']['peak_after_index']:.0f} MiB",
        "",
        f"{title:<50}{'all':>8}{'scored':>8}",
    ]
    for name, value in report[f"top{k}_overlap"].items():
        lines.append(f"  {name:<48}{value['all']:>8.4f}{value['scored']:>8.4f}")
    lines.append("  (scored: documents with score 0, which share no term with the query, left out)")
    zero = report[f"queries_with_zero_scores_in_top{k}"]
    lines.append(f"  (queries whose top-{k} includes score-0 documents: "
                 + ", ".join(f"{lbl} {n}" for lbl, n in zero.items()) + ")")
    lines += ["", f"sanity: nDCG@10 / recall@{min(report['top_k'], ds['documents'])} on the qrels"]
    for label, splits in report["quality"].items():
        text = "   ".join(f"{split} ({q['queries']} q): {q['ndcg@10']:.4f} / {q['recall']:.4f}"
                          for split, q in splits.items())
        lines.append(f"  {label:<18}{text}")
    check = runs["bm25s"].get("native_check")
    if check:
        lines.append(f"  negmine Searcher vs bm25s.BM25.retrieve, top-{check['k']}: overlap "
                     f"{check['top_k_overlap']:.4f} (scored {check['top_k_overlap_scored']:.4f}), "
                     f"max |score diff| {check['max_abs_score_diff']:.2e}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR folder (default: %(default)s)")
    ap.add_argument("--top-k", type=int, default=100, help="documents retrieved per query (default: 100)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="timed runs per backend, in alternating order; the median is reported (default: 3)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file (default: %(default)s)")
    # internal: one measured run, started by the parent in a fresh interpreter
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--ingest", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--index", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.top_k < 1 or args.repeat < 1:
        ap.error("--top-k and --repeat must be at least 1")
    return args


if __name__ == "__main__":
    ns = parse_args()
    if ns.worker:
        worker(ns)
    else:
        main(ns)
