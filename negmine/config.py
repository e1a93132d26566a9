"""Configuration: TOML files with defaults, overridden by `--set section.key=value`.

Every key is declared once, in `DEFAULTS` or by the registered sampler, filter, format or retriever it belongs to
(`defaults()` merges them), with its type taken from the default value; `validate` holds every check of a config
(types, ranges, choices, and which score types a filter, sampler or format accepts), so an unknown key, a wrong
type or a mismatch is caught before any work starts. Paths in a config file are relative to that file; paths given with
`--set` are relative to the current directory.
"""
from __future__ import annotations

import copy
import importlib.util
import math
import re
import tomllib
from pathlib import Path
from typing import Any

from negmine.errors import ConfigError

# One table a stage. `None` marks an optional value (a string or a path when set). A sampler's or filter's own
# settings (temperature, simans_a, tau, ...) are declared by its registry entry and merged in by `defaults()`.
DEFAULTS: dict[str, dict[str, Any]] = {
    "input": {
        # BEIR folder, pair file (.jsonl/.parquet/.csv), FlagEmbedding .jsonl, a folder or glob of Parquet/JSONL
        # shards, a dataset saved with save_to_disk, or hf://datasets/ORG/NAME (a Hub dataset in the local cache)
        "path": None,
        "format": "auto",  # auto | beir | pairs | flagembedding | hf
        "split": "train",  # BEIR: qrels/<split>.tsv; hf: the DatasetDict's split, or the Hub dataset's
        "allow_download": False,  # hf://datasets/...: download a dataset missing from the local cache (never offline)
        "qrels_format": "auto",  # auto (BEIR, or TREC when headerless with 4 fields a line) | beir | trec
        "corpus": None,  # pairs / flagembedding: an extra corpus file (documents with no query)
        "query_column": None,  # pairs: default "query", else "anchor"
        "positive_column": "positive",
        "negative_column": None,  # pairs: default "negative" when present
        "query_id_column": None,  # pairs, hf: ids kept from these columns; default "query_id", "positive_id",
        "positive_id_column": None,  # "negative_id" when present; without one, a text's id is its hash
        "negative_id_column": None,
        "corpus_text_column": "text",
        "corpus_title_column": "title",
        "use_title": True,  # retrieve and export "title + title_sep + text", as BEIR does
        "title_sep": " ",
        "min_positive_score": 1,  # BEIR qrels: a score below this is not a positive
        "skip_invalid": False,
        "holdout_frac": 0.0,  # negmine eval: hide this fraction of each multi-positive query's positives
        "holdout_seed": 0,
    },
    "bm25": {
        "backend": "bm25s",  # bm25s | rank-bm25 (the reference implementation, slow)
        "method": "lucene",  # bm25s: robertson | lucene | atire | bm25l | bm25+
        "k1": 1.5,
        "b": 0.75,
        "delta": 0.5,  # bm25l and bm25+ only
        "stopwords": "en",  # "en" or "" for none
        "stemmer": "",  # a PyStemmer language such as "english", or "" for none
        "lowercase": True,
    },
    "retrieve": {
        "retrievers": ["bm25"],  # bm25, dense and/or sparse; several are fused into one candidate pool
        "top_k": 100,
        "chunk_size": 1024,  # queries a chunk: bounds memory at chunk_size x top_k rows
        "fusion": "rrf",  # rrf: reciprocal rank fusion, cut to top_k | union: each retriever's top union_quota
        "rrf_k": 60,
        "union_quota": 0,  # union: candidates each retriever contributes; 0 means top_k / number of retrievers
    },
    "dense": {
        "model": "",  # "" = the packaged all-MiniLM-L6-v2; a local folder or a Hugging Face id in the local cache
        "query_prompt": "",
        "doc_prompt": "",
        "max_seq_length": 0,  # 0 = the model's own
        "normalize": True,  # unit vectors: inner product = cosine
        "precision": "auto",  # auto (by the hardware: bf16 on AVX512-BF16/AMX CPUs and Ampere+ GPUs, fp16 on older
        # GPUs, else fp32) | fp32 | bf16 | fp16; 16-bit = autocast, fp32 weights; keyed as resolved;
        # int8 (backends onnx and openvino: dynamically quantized weights)
        "backend": "auto",  # auto (openvino on a CPU where it can run the model, else torch) | torch | onnx |
        # openvino (ONNX export run without torch; negmine.backends); keyed as resolved
        "batch_size": 64,  # texts a batch when batch_tokens = 0
        "batch_tokens": "auto",  # token budget a batch (rows x longest text): auto (8192 on torch, 2048 on onnx
        # and openvino, each one's fastest) or a number; 0 = fixed batches of batch_size;
        # speed and memory only (not keyed)
        "device": "",  # "" = sentence-transformers' choice (cuda when present)
        "shard_size": 4096,  # unique documents an embedding shard: the unit of resume
        "workers": 2,  # [run] engine = "ray" without GPUs: encoder actors (CPU); speed only
        "devices": [],  # local engine: encode on several devices at once, one process each ("cuda:0", "cpu", ...)
        "index": "flat",  # flat (exact inner product) | hnsw | ivf
        "hnsw_m": 32,
        "hnsw_ef_construction": 200,
        "hnsw_ef_search": 256,
        "ivf_nlist": 0,  # 0 = 4 x sqrt(documents)
        "ivf_nprobe": 32,
    },
    "score": {
        "teacher": "",  # "" = no rescoring; a local folder or a Hugging Face id in the local cache
        "kind": "cross-encoder",  # cross-encoder | bi-encoder
        "activation": "probability",  # cross-encoder output: probability (sigmoid) | logit
        "normalize": True,  # bi-encoder: cosine (true) or dot product
        "max_length": 0,  # 0 = the model's own
        "query_prompt": "",
        "doc_prompt": "",
        "precision": "auto",  # as [dense] precision: auto | fp32 | bf16 | fp16, keyed as resolved; int8 (backend
        # onnx), bf16 (backend openvino)
        "backend": "auto",  # as [dense] backend: auto (openvino on a CPU where it can run the teacher, else
        # torch) | torch | onnx | openvino; keyed as resolved
        "batch_size": 32,  # pairs a batch (backend torch; the others when batch_tokens = 0)
        "batch_tokens": 8192,  # backends onnx and openvino: token budget a batch (rows x longest pair); 0 = fixed
        # batches of batch_size; speed and memory only (not keyed)
        "device": "",
        "flush_pairs": 8192,  # pairs a store part: the most a killed run loses
        "workers": 2,  # [run] engine = "ray" without GPUs: teacher actors (CPU); speed only
    },
    "exclude": {
        "query_text": True,  # drop documents whose text is the query's own text
        "duplicates": True,  # drop exact duplicates of a positive (whitespace- and case-normalised)
    },
    "filter": {
        "method": "none",  # none | a registered filter: abs | margin-pos | perc-pos (NV-Retriever's; tau, margin,
        # alpha are theirs)
        "positive_score": "min",  # s_pos over the query's positives: min | mean | max
        "score_source": "auto",  # auto (the teacher's when configured, else the retriever's) | teacher | retriever
        "min_score": None,  # score window: keep min_score <= s <= max_score
        "max_score": None,
        "skip_top": 0,  # drop the first N raw retrieval ranks
        "ce_max_probability": None,  # RocketQA: keep a candidate only if the teacher's probability < this (0.1)
        "ce_margin": None,  # drop if ce > min ce(positive) - margin, on the logit scale (3.0)
        "near_dup_jaccard": None,  # drop if MinHash Jaccard (word 3-shingles) to a positive >= this (0.8)
        "near_dup_cosine": None,  # drop if the dense encoder's cosine to a positive >= this (0.98)
        "minhash_perm": 64,
        "relax_steps": 0,  # shortage "relax": loosen the method's threshold up to this many steps
        "relax_step": 0.05,
    },
    "sample": {
        "strategy": "top",  # a registered sampler: top | random | softmax | top1-random | simans
        "num_negatives": 5,
        "rank_min": 1,  # window on raw retrieval ranks (1-based, inclusive)
        "rank_max": 0,  # 0 means top_k
        "seed": 42,
        "shortage": "keep-fewer",  # keep-fewer | drop | pad-random | relax
    },
    "export": {
        "dir": "negmine-out",
        "formats": ["triplet"],  # registered formats: triplet | n-tuple | labeled-pair | labeled-list | margin-mse |
        # flagembedding | tevatron | ids
        "file_types": ["parquet", "jsonl"],
        "scores": False,  # labeled-pair / labeled-list: scores (teacher's or retriever's) instead of 0/1 labels
        "hub_repo": None,  # file type hf: also push the DatasetDict to this Hub dataset repo (ORG/NAME), online and
        # logged in; a location only, in no key
    },
    "cluster": {  # topic-clustered batches, TAS-B (negmine.cluster): k-means over the query vectors
        "on": False,
        "clusters": 0,  # k; 0 = mined queries / (4 x batch_size), at least 1
        "batch_size": 32,  # the trainer's batch size: smaller clusters are merged until each has this many queries
        "seed": 42,
        "niter": 20,  # k-means iterations
    },
    "judge": {  # an LLM judge of false negatives (negmine.judge); off while model is ""
        "model": "",  # the model id the endpoint serves; "" = no judge
        "base_url": "",  # an OpenAI-compatible endpoint, such as "http://127.0.0.1:8000/v1"
        "api_key_env": "",  # the NAME of the environment variable holding the key ("" = no key); never the key
        "on": "negatives",  # negatives (after sampling) | pool (the filtered pool, inside the [sample] window)
        "on_false_negative": "drop",  # drop | relabel (a relabelled candidate becomes a positive in every format)
        "on_no_verdict": "keep",  # an answer malformed twice: keep the candidate as a negative, or drop it
        "max_candidates": 8,  # candidates a call
        "max_positives": 3,  # the query's first positives shown in a call
        "max_chars": 2000,  # a text is cut to this many characters in the prompt
        "temperature": 0.0,
        "max_answer_tokens": 256,
        "concurrency": 4,  # calls in flight; speed only
        "timeout": 60.0,  # seconds a call may take before it is retried
        "retries": 4,  # on 429, 5xx, timeouts and dropped connections, with exponential backoff
        "retry_backoff": 1.0,  # seconds before the first retry; doubled each time (Retry-After wins)
        "max_calls": 0,  # budget: requests in one run, retries included (0 = no limit)
        "max_tokens": 0,  # budget: tokens in one run (0 = no limit)
        "flush_calls": 1,  # verdicts a store part: a killed run repeats fewer than this many calls
        "dry_run": False,  # print the call and token estimate and stop before any call (negmine run --dry-run)
    },
    "ensemble": {  # several teachers (negmine.score's teachers stage, negmine.samplers.ensemble); off while empty
        "teachers": [],  # each a retriever of [retrieve] retrievers ("bm25", "dense"), "teacher" (the [score]
        # teacher) or a table {name, model, kind, activation, normalize, max_length, query_prompt, doc_prompt}
        "sampling": "none",  # none (the [sample] strategy) | cross (one teacher a query, chosen by hash) | intra
        # (each teacher's best in turn)
        "agreement": False,  # keep a candidate only if every teacher scores it below its perc-pos threshold
        "agreement_alpha": 0.95,  # that threshold: alpha x the query's positive score under each teacher
    },
    "run": {
        "cache_dir": None,  # default: .negmine/cache beside the config (or the current directory)
        "low_memory": False,  # glibc: fixed 1 MiB mmap threshold; about -30% peak memory, +20-30% encode time
        # bytes (a number) or a size such as "2GiB" that sizes retrieve's chunks and the BM25 index build;
        # default: an eighth of the machine's memory, at most 1 GiB. Memory-only: in no cache key
        "memory_budget": None,
        "engine": "local",  # local (this process) | ray (heavy stages on a Ray cluster; pip install 'negmine[ray]')
        "ray_address": "",  # engine ray: "" starts a local cluster, "auto" joins the running one, or host:port
    },
}

CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("input", "format"): ("auto", "beir", "pairs", "flagembedding", "hf"),
    ("input", "qrels_format"): ("auto", "beir", "trec"),
    ("bm25", "backend"): ("bm25s", "rank-bm25"),
    ("bm25", "method"): ("robertson", "lucene", "atire", "bm25l", "bm25+"),
    ("retrieve", "fusion"): ("rrf", "union"),
    ("score", "kind"): ("cross-encoder", "bi-encoder"),
    ("score", "activation"): ("probability", "logit"),
    ("dense", "precision"): ("auto", "fp32", "bf16", "fp16", "int8"),
    ("score", "precision"): ("auto", "fp32", "bf16", "fp16", "int8"),
    ("sparse", "precision"): ("auto", "fp32", "bf16", "fp16"),
    ("dense", "backend"): ("auto", "torch", "onnx", "openvino"),
    ("score", "backend"): ("auto", "torch", "onnx", "openvino"),
    ("dense", "index"): ("flat", "hnsw", "ivf"),
    ("run", "engine"): ("local", "ray"),
    ("sample", "shortage"): ("keep-fewer", "drop", "pad-random", "relax"),
    ("filter", "positive_score"): ("min", "mean", "max"),
    ("filter", "score_source"): ("auto", "teacher", "retriever"),
    ("judge", "on"): ("negatives", "pool"),
    ("judge", "on_false_negative"): ("drop", "relabel"),
    ("judge", "on_no_verdict"): ("keep", "drop"),
    ("ensemble", "sampling"): ("none", "cross", "intra"),
}
LIST_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("export", "file_types"): ("parquet", "jsonl", "hf"),
}


def registry_choices() -> tuple[dict[tuple[str, str], tuple[str, ...]], dict[tuple[str, str], tuple[str, ...]]]:
    """(choices, list choices) of the settings that name a registered sampler, filter, format or retriever."""
    from negmine.filters import FILTERS
    from negmine.formats import FORMATS
    from negmine.retrievers import RETRIEVERS
    from negmine.samplers import SAMPLERS

    return ({("sample", "strategy"): tuple(SAMPLERS), ("filter", "method"): ("none", *FILTERS)},
            {("export", "formats"): tuple(FORMATS), ("retrieve", "retrievers"): tuple(RETRIEVERS)})


def choices() -> tuple[dict[tuple[str, str], tuple[str, ...]], dict[tuple[str, str], tuple[str, ...]]]:
    one, many = registry_choices()
    return {**CHOICES, **one}, {**LIST_CHOICES, **many}


def defaults() -> dict[str, dict[str, Any]]:
    """A fresh copy of every default: `DEFAULTS` plus the registered retrievers' sections and the samplers' and
    filters' own settings."""
    from negmine.filters import FILTERS
    from negmine.retrievers import RETRIEVERS
    from negmine.samplers import SAMPLERS

    out = copy.deepcopy(DEFAULTS)
    for r in RETRIEVERS.values():
        if r.section:
            out.setdefault(r.section, copy.deepcopy(dict(r.defaults)))
    for sampler in SAMPLERS.values():
        for key, value in sampler.options.items():
            out["sample"].setdefault(key, copy.deepcopy(value))
    for f in FILTERS.values():
        out["filter"].setdefault(f.option, f.default)
    return out
PATH_KEYS = {("input", "path"), ("input", "corpus"), ("export", "dir"), ("run", "cache_dir")}
STRING_OPTIONAL = {("input", "query_column"), ("input", "negative_column"), ("input", "query_id_column"),
                   ("input", "positive_id_column"), ("input", "negative_id_column"), ("export", "hub_repo")}
# Optional numbers: None (leave the key out, or --set key='') means off.
OPTIONAL_NUMBERS = {("filter", k) for k in ("min_score", "max_score", "ce_max_probability", "ce_margin",
                                            "near_dup_jaccard", "near_dup_cosine")}


# Settings that change only speed or memory: part of no cache key, so neither of provenance (a cached export
# would record another run's value).
SPEED_ONLY = {("retrieve", "chunk_size"), ("dense", "batch_size"), ("dense", "device"), ("score", "batch_size"),
              ("score", "batch_tokens"),
              ("score", "device"), ("score", "flush_pairs"), ("dense", "workers"), ("score", "workers"),
              ("dense", "devices"), ("judge", "concurrency"), ("judge", "flush_calls"), ("sparse", "batch_size"),
              ("sparse", "device"), ("sparse", "workers")}

_INF = math.inf
# The range of every numeric setting: (low, high, low_open, high_open); NaN and infinities are refused for all.
RANGES: dict[tuple[str, str], tuple[float, float, bool, bool]] = {
    ("input", "min_positive_score"): (-_INF, _INF, True, True),
    ("input", "holdout_frac"): (0.0, 1.0, False, True),
    ("input", "holdout_seed"): (0, _INF, False, True),
    ("bm25", "k1"): (0.0, _INF, False, True),
    ("bm25", "b"): (0.0, 1.0, False, False),
    ("bm25", "delta"): (0.0, _INF, False, True),
    ("retrieve", "top_k"): (1, _INF, False, True),
    ("retrieve", "chunk_size"): (1, _INF, False, True),
    ("retrieve", "rrf_k"): (0, _INF, False, True),
    ("retrieve", "union_quota"): (0, _INF, False, True),
    ("dense", "max_seq_length"): (0, _INF, False, True),
    ("dense", "batch_size"): (1, _INF, False, True),
    ("dense", "shard_size"): (1, _INF, False, True),
    ("dense", "workers"): (1, 4096, False, False),
    ("dense", "hnsw_m"): (1, _INF, False, True),
    ("dense", "hnsw_ef_construction"): (1, _INF, False, True),
    ("dense", "hnsw_ef_search"): (1, _INF, False, True),
    ("dense", "ivf_nlist"): (0, _INF, False, True),
    ("dense", "ivf_nprobe"): (1, _INF, False, True),
    ("sparse", "max_length"): (0, _INF, False, True),
    ("sparse", "max_active_dims"): (0, _INF, False, True),
    ("sparse", "batch_size"): (1, _INF, False, True),
    ("sparse", "shard_size"): (1, _INF, False, True),
    ("sparse", "workers"): (1, 4096, False, False),
    ("score", "max_length"): (0, _INF, False, True),
    ("score", "batch_size"): (1, _INF, False, True),
    ("score", "batch_tokens"): (0, _INF, False, True),
    ("score", "flush_pairs"): (1, _INF, False, True),
    ("score", "workers"): (1, 4096, False, False),
    ("filter", "tau"): (-_INF, _INF, True, True),
    ("filter", "margin"): (0.0, _INF, False, True),
    ("filter", "alpha"): (0.0, 1.0, False, False),
    ("filter", "min_score"): (-_INF, _INF, True, True),
    ("filter", "max_score"): (-_INF, _INF, True, True),
    ("filter", "skip_top"): (0, _INF, False, True),
    ("filter", "ce_max_probability"): (0.0, 1.0, True, False),
    ("filter", "ce_margin"): (-_INF, _INF, True, True),
    ("filter", "near_dup_jaccard"): (0.0, 1.0, True, False),
    ("filter", "near_dup_cosine"): (-1.0, 1.0, True, False),
    ("filter", "minhash_perm"): (8, _INF, False, True),
    ("filter", "relax_steps"): (0, _INF, False, True),
    ("filter", "relax_step"): (0.0, _INF, True, True),
    ("sample", "num_negatives"): (1, _INF, False, True),
    ("sample", "rank_min"): (1, _INF, False, True),
    ("sample", "rank_max"): (0, _INF, False, True),
    ("sample", "seed"): (0, _INF, False, True),
    ("sample", "temperature"): (0.0, _INF, True, True),
    ("sample", "simans_a"): (0.0, _INF, True, True),
    ("sample", "simans_b"): (-_INF, _INF, True, True),
    ("cluster", "clusters"): (0, 1_000_000, False, False),
    ("cluster", "batch_size"): (1, _INF, False, True),
    ("cluster", "seed"): (0, 2**31 - 1, False, False),  # faiss takes a 32-bit seed
    ("cluster", "niter"): (1, 10_000, False, False),
    ("judge", "max_candidates"): (1, 100, False, False),
    ("judge", "max_positives"): (1, _INF, False, True),
    ("judge", "max_chars"): (1, _INF, False, True),
    ("judge", "temperature"): (0.0, 2.0, False, False),
    ("judge", "max_answer_tokens"): (1, _INF, False, True),
    ("judge", "concurrency"): (1, 256, False, False),
    ("judge", "timeout"): (0.0, _INF, True, True),
    ("judge", "retries"): (0, 100, False, False),
    ("judge", "retry_backoff"): (0.0, 600.0, False, False),
    ("judge", "max_calls"): (0, _INF, False, True),
    ("judge", "max_tokens"): (0, _INF, False, True),
    ("judge", "flush_calls"): (1, _INF, False, True),
    ("ensemble", "agreement_alpha"): (0.0, 1.0, False, False),
}


def _range_text(low: float, high: float, low_open: bool, high_open: bool) -> str:
    if high == _INF:
        return f"> {low:g}" if low_open else f">= {low:g}"
    if low == -_INF:
        return f"< {high:g}" if high_open else f"<= {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def _check_ranges(cfg: dict[str, Any]) -> None:
    """Refuse a numeric setting that is NaN, infinite or out of its range (`RANGES`; every numeric key of the
    defaults, registries' options included, has one; an option a plugin registers without a range is only
    checked to be finite) and an empty or unsafe `[export] dir`."""
    for section, table in defaults().items():
        for key, default in table.items():
            value = cfg[section][key]
            numeric = (section, key) in OPTIONAL_NUMBERS or (
                isinstance(default, (int, float)) and not isinstance(default, bool))
            if not numeric or value is None:
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"[{section}] {key} is {value}; it must be a finite number")
            if (section, key) not in RANGES:
                continue
            low, high, low_open, high_open = RANGES[(section, key)]
            if value < low or value > high or (low_open and value == low) or (high_open and value == high):
                raise ConfigError(f"[{section}] {key} is {value!r}; it must be "
                                  f"{_range_text(low, high, low_open, high_open)}")
    f = cfg["filter"]
    if f["min_score"] is not None and f["max_score"] is not None and f["min_score"] > f["max_score"]:
        raise ConfigError(f"[filter] min_score {f['min_score']} is above max_score {f['max_score']}; the window "
                          "would keep nothing")
    _check_export_dir(cfg)


def _check_export_dir(cfg: dict[str, Any]) -> None:
    raw = cfg["export"]["dir"]
    if not raw or not str(raw).strip():
        raise ConfigError("[export] dir is empty; give the output folder with -o DIR or [export] dir")
    out = Path(raw).resolve()
    unsafe = {Path(out.anchor): "the filesystem root", Path.home().resolve(): "your home folder"}
    if out in unsafe:
        raise ConfigError(f"[export] dir is {out}, {unsafe[out]}; give a folder of its own for the outputs")
    cache = Path(cfg["run"]["cache_dir"]).resolve()
    if out == cache or cache in out.parents:
        raise ConfigError(f"[export] dir {out} is inside the cache folder {cache}; give a folder outside it")
    if cfg["input"]["path"]:
        inp = Path(cfg["input"]["path"]).resolve()
        if out == inp:
            raise ConfigError(f"[export] dir {out} is the input itself; give another output folder")


def _type_name(value: Any) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
            list: "a list"}.get(type(value), type(value).__name__)


def _coerce(section: str, key: str, value: Any, origin: str, known: dict[str, dict[str, Any]]) -> Any:
    """Check one value against its default's type; accept an int where a float is expected."""
    default = known[section][key]
    where = f"{origin}: [{section}] {key}"
    if (section, key) in PATH_KEYS and default is not None and isinstance(value, str) and not value.strip():
        raise ConfigError(f"{where} is empty; give a folder (an empty path would mean the current directory)")
    if (section, key) == ("run", "memory_budget"):
        from negmine.memory import parse_bytes

        return None if value is None or value == "" else parse_bytes(value, where)
    if (section, key) == ("dense", "batch_tokens"):
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where} must be \"auto\" or a whole number of tokens >= 0 (0: fixed batches of "
                              f"batch_size), got {value!r}")
        return value
    if (section, key) == ("ensemble", "teachers"):
        from negmine.teachers import check_teacher_entries

        return check_teacher_entries(value, where)
    if (section, key) in OPTIONAL_NUMBERS:
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}; leave it out to switch it off")
        return float(value)
    if default is None:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}; quote it in the TOML file")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}; quote it in the TOML file")
    elif isinstance(default, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings, got {value!r}")
    one, many = choices()
    allowed = one.get((section, key))
    if allowed and value not in allowed:
        raise ConfigError(f"{where} is {value!r}; choose one of {', '.join(allowed)}")
    list_choices = many.get((section, key))
    if list_choices:
        bad = [v for v in value if v not in list_choices]
        if bad or not value:
            raise ConfigError(f"{where} has {bad or 'no value'}; choose from {', '.join(list_choices)}")
    return value


def _check_keys(data: dict[str, Any], origin: str, known: dict[str, dict[str, Any]]) -> None:
    for section, table in data.items():
        if section not in known:
            raise ConfigError(f"{origin}: unknown section [{section}]; known sections: {', '.join(known)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table of keys")
        for key in table:
            if key not in known[section]:
                raise ConfigError(f"{origin}: unknown key [{section}] {key}; known keys: "
                                  f"{', '.join(known[section])}")


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse `section.key=value`; the value is read as TOML, falling back to a bare string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.key=value, for example --set sample.seed=7")
    name, raw = text.split("=", 1)
    section, key = name.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None,
                base_dir: str | Path | None = None) -> dict[str, Any]:
    """Merge defaults, a TOML file and overrides into one checked config with absolute paths.

    `overrides` is a list of `section.key=value` strings or a dict {"section.key": value} / nested dict.
    """
    cfg = defaults()
    known = copy.deepcopy(cfg)
    cwd = Path(base_dir) if base_dir else Path.cwd()
    config_dir = cwd
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found; give the path of a TOML file such as "
                              "configs/sample-bm25.toml")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # -sig: drop a byte-order mark
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
        _check_keys(data, str(path), known)
        config_dir = path.resolve().parent
        for section, table in data.items():
            for key, value in table.items():
                value = _coerce(section, key, value, str(path), known)
                if (section, key) in PATH_KEYS and value is not None and not value.startswith("hf://"):
                    value = str((config_dir / value).resolve())
                cfg[section][key] = value
    items: list[tuple[str, str, Any]] = []
    if isinstance(overrides, dict):
        for name, value in overrides.items():
            if isinstance(value, dict):
                items += [(name, k, v) for k, v in value.items()]
            else:
                if "." not in name:
                    raise ConfigError(f"override {name!r}: expected section.key")
                s, k = name.split(".", 1)
                items.append((s, k, value))
    elif overrides:
        items = [parse_override(o) for o in overrides]
    for section, key, value in items:
        _check_keys({section: {key: value}}, "--set", known)
        value = _coerce(section, key, value, "--set", known)
        if (section, key) in PATH_KEYS and value is not None and not value.startswith("hf://"):
            value = str((cwd / value).resolve())  # hf://datasets/ORG/NAME names a Hub dataset, not a path
        cfg[section][key] = value
    if cfg["run"]["cache_dir"] is None:
        cfg["run"]["cache_dir"] = str((config_dir / ".negmine" / "cache").resolve())
    validate(cfg)
    return cfg


def validate(cfg: dict[str, Any]) -> None:
    """Every check of a loaded config, in one place and before any work: ranges and consistency, then whether the
    configured filter, sampler and formats accept the type of the scores they will read."""
    _check_ranges(cfg)
    _check_consistency(cfg)
    _check_score_types(cfg)


def _check_backend(section: str, d: dict[str, Any], devices: bool) -> None:
    """A model's runtime ([dense] or [score] backend): its precisions, the CPU, the runtime installed."""
    if d["backend"] == "torch" and d["precision"] == "int8":
        raise ConfigError(f"[{section}] precision int8 is onnxruntime's or OpenVINO's quantized model: set "
                          f"[{section}] backend = \"onnx\" or \"openvino\", or another precision")
    if d["backend"] == "auto":  # resolved where the model is known; int8 means onnxruntime's quantized graph
        if d["precision"] == "int8":
            from negmine import backends

            backends.require("onnx", section)
        return
    if d["backend"] != "torch":
        from negmine import backends

        allowed = backends.PRECISIONS[d["backend"]]
        if d["precision"] not in ("auto", *allowed):
            raise ConfigError(f"[{section}] precision {d['precision']} does not run on backend {d['backend']} "
                              f"(16-bit autocast needs backend torch); use \"auto\" or one of {', '.join(allowed)}")
        if d["device"] not in ("", "cpu") or devices:
            where = "device = \"\" and devices = []" if section == "dense" else "device = \"\""
            raise ConfigError(f"[{section}] backend {d['backend']} runs on the CPU; set {where} or use backend "
                              "\"torch\" on a GPU")
        backends.require(d["backend"], section)


def _check_consistency(cfg: dict[str, Any]) -> None:
    """Checks across settings, and of values that are not numbers (each number's own range: `_check_ranges`)."""
    s, r = cfg["sample"], cfg["retrieve"]
    rank_max = s["rank_max"] or r["top_k"]
    if rank_max < s["rank_min"] or rank_max > r["top_k"]:
        raise ConfigError(f"[sample] rank window {s['rank_min']}..{rank_max} is outside 1..top_k={r['top_k']}; "
                          "set rank_max between rank_min and [retrieve] top_k (0 means top_k)")
    if len(set(r["retrievers"])) != len(r["retrievers"]):
        raise ConfigError(f"[retrieve] retrievers lists one twice: {r['retrievers']}")
    d = cfg["dense"]
    _check_backend("dense", d, bool(d["devices"]))
    _check_backend("score", cfg["score"], False)
    for device in d["devices"]:
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
            raise ConfigError(f"[dense] devices has {device!r}; give devices such as \"cuda:0\", \"cuda:1\" or "
                              "\"cpu\" (an empty list encodes in this process on [dense] device)")
    f = cfg["filter"]
    if s["shortage"] == "relax" and (f["method"] == "none" or f["relax_steps"] < 1):
        raise ConfigError("[sample] shortage \"relax\" loosens the [filter] method step by step: set [filter] "
                          "method and relax_steps >= 1")
    _check_judge(cfg["judge"])
    from negmine.teachers import check_ensemble

    check_ensemble(cfg)
    e = cfg["export"]
    if "hf" in e["file_types"] and importlib.util.find_spec("datasets") is None:
        raise ConfigError("[export] file_types \"hf\" writes a Hugging Face DatasetDict: install it with "
                          "pip install 'negmine[hf]', or leave \"hf\" out")
    if e["hub_repo"] is not None:
        if "hf" not in e["file_types"]:
            raise ConfigError(f"[export] hub_repo {e['hub_repo']!r} pushes the hf output: add \"hf\" to [export] "
                              "file_types, or leave hub_repo out")
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", e["hub_repo"]) or ".." in e["hub_repo"]:
            raise ConfigError(f"[export] hub_repo is {e['hub_repo']!r}; give a Hub dataset repo as ORG/NAME")
    i = cfg["input"]
    for key in ("positive_column", "corpus_text_column"):
        if not i[key].strip():
            raise ConfigError(f"[input] {key} is empty; name the column that holds the text")
    b = cfg["bm25"]
    if b["stopwords"] not in ("", "en", "english"):
        raise ConfigError(f"[bm25] stopwords is {b['stopwords']!r}; use \"en\" or \"\" for none")


def _check_judge(j: dict[str, Any]) -> None:
    """A configured judge needs an http(s) endpoint, and api_key_env must name a variable, not hold a key."""
    if j["api_key_env"] and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", j["api_key_env"]):
        raise ConfigError("[judge] api_key_env must be the name of an environment variable (such as "
                          "\"OPENAI_API_KEY\"), not the key itself; keys never go into a config")
    if not j["model"]:
        return
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", j["base_url"] or ""):
        raise ConfigError(f"[judge] base_url is {j['base_url']!r}; give the endpoint's http(s) URL, such as "
                          "\"http://127.0.0.1:8000/v1\" (/chat/completions is added)")
    if not j["model"].strip():
        raise ConfigError("[judge] model is blank; give the model id the endpoint serves")


def judge_stage(cfg: dict[str, Any]) -> str | None:
    """The judge's stage ("judge" after sampling, "judge-pool" before it), or None without a [judge] model."""
    if not cfg["judge"]["model"]:
        return None
    return "judge" if cfg["judge"]["on"] == "negatives" else "judge-pool"


def score_source(cfg: dict[str, Any]) -> str:
    """Whose scores the filters and samplers read: "teacher" or "retriever"."""
    source = cfg["filter"]["score_source"]
    if source == "teacher" and not cfg["score"]["teacher"]:
        raise ConfigError("[filter] score_source is \"teacher\" but no [score] teacher is configured")
    if source == "auto":
        return "teacher" if cfg["score"]["teacher"] else "retriever"
    return source


def score_type(cfg: dict[str, Any]) -> str:
    """The type of the scores the filters and samplers read (probability, logit, cosine, dot, bm25, rrf)."""
    from negmine.retrievers import score_type as retriever_score_type

    return teacher_score_type(cfg["score"]) if score_source(cfg) == "teacher" else retriever_score_type(cfg)


def _check_score_types(cfg: dict[str, Any]) -> None:
    """Refuse a threshold, sampler or format meant for another type of score than the one it would read."""
    from negmine.filters import FILTERS
    from negmine.formats import FORMATS
    from negmine.samplers import SAMPLERS

    f, retrievers = cfg["filter"], cfg["retrieve"]["retrievers"]
    teacher = teacher_score_type(cfg["score"]) if cfg["score"]["teacher"] else None
    stype = score_type(cfg)
    if f["method"] != "none":
        allowed = FILTERS[f["method"]].accepts
        if stype not in allowed:
            hint = ("fused (RRF) scores have no positive scores to compare with; configure a [score] teacher"
                    if stype == "rrf" else f"it is meant for {', '.join(allowed)} scores; configure a [score] "
                    "teacher or choose another method")
            raise ConfigError(f"[filter] method {f['method']!r} would compare against {stype} scores: {hint}")
    if f["ce_max_probability"] is not None and teacher != "probability":
        raise ConfigError("[filter] ce_max_probability needs a cross-encoder [score] teacher with activation "
                          f"\"probability\" (teacher scores: {teacher or 'none'})")
    if f["ce_margin"] is not None and teacher != "logit":
        raise ConfigError("[filter] ce_margin is on the logit scale: it needs a cross-encoder [score] teacher with "
                          f"activation \"logit\" (teacher scores: {teacher or 'none'})")
    if f["near_dup_cosine"] is not None and "dense" not in retrievers:
        raise ConfigError("[filter] near_dup_cosine compares dense embeddings: add \"dense\" to [retrieve] "
                          "retrievers")
    formats = [FORMATS[name] for name in cfg["export"]["formats"]]
    needs_scores = [x.name for x in formats if x.needs_scores] + (
        [x.name for x in formats if x.needs_scores_with_option] if cfg["export"]["scores"] else [])
    if needs_scores and stype == "rrf":
        raise ConfigError(f"[export] {needs_scores[0]} needs positive and negative scores on one scale; fused (RRF) "
                          "scores have none for positives: configure a [score] teacher")
    strategy = cfg["sample"]["strategy"]
    if SAMPLERS[strategy].needs_positive_scores and stype == "rrf":
        raise ConfigError(f"[sample] {strategy} needs positive scores; fused (RRF) scores have none: configure a "
                          "[score] teacher")


def teacher_score_type(score: dict[str, Any]) -> str:
    """The type of a [score] teacher's scores."""
    if score["kind"] == "cross-encoder":
        return score["activation"]
    return "cosine" if score["normalize"] else "dot"
