"""Cross-encoder pairs per second and score agreement: sentence-transformers' CrossEncoder (torch fp32) against
negmine's teacher on each runtime without torch ([score] backend onnx / openvino, each precision).

The pairs are real SciFact (query, abstract) pairs: each of the first --queries train queries with --per-query
documents (its positives, then the next corpus documents in order), so their lengths are the data's. The model is
the benchmark's MiniLM-sized cross-encoder (bench/dense.py builds it in bench/.cache/): random head, so its scores
mean nothing, but it costs what a MiniLM cross-encoder costs and every side scores the same pairs. Agreement is
against torch fp32's logits: the largest difference relative to their spread, Spearman's rho over all pairs, and the
share of queries whose top-3 documents (the negatives `top` would pick) are the same set.

    PYTHONPATH=. .venv/bin/python bench/score_backends.py [--queries 40] [--per-query 16] [--json FILE]

Loading (for the runtimes: the export, once a model, and compiling) is timed apart and not counted in pairs/s.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "scifact"
CE_DIR = REPO / "bench" / ".cache" / "cross-encoder-minilm-random-head"
RUNTIMES = ("onnx:fp32", "onnx:int8", "openvino:fp32", "openvino:bf16")


def load_pairs(data: Path, n_queries: int, per_query: int) -> tuple[list[str], list[str], list[int]]:
    """(queries, documents, query index of each pair): title + text documents, as negmine's retrieval text."""
    corpus = {}
    with open(data / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            corpus[d["_id"]] = f"{d.get('title', '')} {d['text']}".strip()
    queries = {}
    with open(data / "queries.jsonl", encoding="utf-8") as fh:
        for line in fh:
            q = json.loads(line)
            queries[q["_id"]] = q["text"]
    positives: dict[str, list[str]] = {}
    with open(data / "qrels" / "train.tsv", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            q, d, _ = line.rstrip("\n").split("\t")
            positives.setdefault(q, []).append(d)
    ids = list(corpus)
    qs, ds, owner = [], [], []
    for i, q in enumerate(list(positives)[:n_queries]):
        docs = [d for d in positives[q] if d in corpus][:per_query]
        docs += [d for d in ids[i * per_query:] if d not in docs][:per_query - len(docs)]
        for d in docs:
            qs.append(queries[q])
            ds.append(corpus[d])
            owner.append(i)
    return qs, ds, owner


def agreement(got: np.ndarray, ref: np.ndarray, owner: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr

    same_top3 = []
    for q in np.unique(owner):
        rows = np.flatnonzero(owner == q)
        top = lambda s: set(rows[np.argsort(-s[rows], kind="stable")[:3]].tolist())  # noqa: E731
        same_top3.append(top(got) == top(ref))
    return {"max_abs_diff_over_spread": float(np.abs(got - ref).max() / (ref.max() - ref.min())),
            "spearman": float(spearmanr(got, ref).statistic), "same_top3_share": float(np.mean(same_top3))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--model", type=Path, default=CE_DIR)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--per-query", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32, help="torch's pairs a batch (ST's default)")
    ap.add_argument("--batch-tokens", type=int, default=8192, help="the runtimes' token budget (negmine's default)")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"{args.model} is missing: run bench/dense.py --scenarios cold-ce once, which builds it")
    queries, docs, owner = load_pairs(args.data, args.queries, args.per_query)
    owner_a = np.asarray(owner)
    from negmine.score import Teacher

    base = {"kind": "cross-encoder", "activation": "logit", "normalize": True, "max_length": 0, "query_prompt": "",
            "doc_prompt": "", "batch_size": args.batch_size, "batch_tokens": args.batch_tokens, "device": "cpu"}
    rows = []
    teacher = Teacher({**base, "backend": "torch", "precision": "fp32"}, args.model)
    t0 = time.perf_counter()
    teacher._load()
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = teacher(queries, docs)
    wall = time.perf_counter() - t0
    rows.append({"side": "sentence-transformers CrossEncoder (torch fp32)", "seconds": wall,
                 "pairs_per_s": len(queries) / wall, "load_s": load})
    with tempfile.TemporaryDirectory() as cache:
        for spec in args.runtimes.split(","):
            backend, prec = spec.split(":")
            teacher = Teacher({**base, "backend": backend, "precision": prec}, args.model, Path(cache))
            t0 = time.perf_counter()
            teacher._load()  # export (once a model and precision) and compile: reported apart
            load = time.perf_counter() - t0
            t0 = time.perf_counter()
            got = teacher(queries, docs)
            wall = time.perf_counter() - t0
            rows.append({"side": f"negmine {backend} {prec}", "seconds": wall, "pairs_per_s": len(queries) / wall,
                         "export_and_load_s": load, "speedup_vs_torch": rows[0]["seconds"] / wall,
                         **agreement(got, ref, owner_a)})
    report = {"pairs": len(queries), "queries": args.queries, "per_query": args.per_query,
              "model": str(args.model), "batch_size": args.batch_size, "batch_tokens": args.batch_tokens,
              "rows": rows}
    for r in rows:
        extra = "" if "spearman" not in r else (
            f"  x{r['speedup_vs_torch']:.2f}  max|d|/spread {r['max_abs_diff_over_spread']:.2e}  "
            f"rho {r['spearman']:.5f}  same top-3 {r['same_top3_share']:.3f}  (export+load {r['export_and_load_s']:.1f}s)")
        print(f"{r['side']:<50} {r['seconds']:7.1f}s {r['pairs_per_s']:7.1f} pairs/s{extra}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
