"""Rescore stage: teacher scores for every (query, candidate) and (query, positive) pair.

The teacher is a cross-encoder (sentence-transformers `CrossEncoder`, as in RocketQA's denoising: Qu et al., NAACL
2021) or a bi-encoder that may differ from the retriever. Each distinct pair is scored once: pairs are batched
across queries, and every score lands in a pair store kept per teacher (model fingerprint and settings), keyed by
the exact texts of the query and the document. A deeper candidate pool, another filter or another sample scores
only pairs the store lacks; a store part is written atomically every `flush_pairs` pairs, so a killed run loses at
most one part. The score type (probability, logit, cosine, dot) is recorded with the scores; later filters refuse
thresholds meant for another type.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negmine import schema, tables
from negmine.cache import file_lock
from negmine.config import teacher_score_type as score_type
from negmine.errors import ConfigError
from negmine.hashing import file_sha256
from negmine.hashing import key64 as _key
from negmine.progress import bar
from negmine.stage import Config, Context, Inputs, Stage, reads
from negmine.teachers import (MODEL_KEYS, TEACHER_POSITIVES_FILE, TEACHERS_FILE, teacher_specs, teacher_type,
                               uses_teachers)

VERSION = "2"  # 2: reads the ingest tables' positives; writes positive_scores.parquet
log = logging.getLogger("negmine.score")
KEY_SETTINGS = ("kind", "activation", "max_length", "query_prompt", "doc_prompt", "normalize")


def backend(params: Mapping[str, Any]) -> str:
    """The teacher's runtime ([score] backend): "torch" where the parameters predate the setting."""
    return params.get("backend", "torch")


def resolved_backend(section: Mapping[str, Any], model_path: Path) -> str:
    """What [score] backend means on this machine for the teacher at `model_path` (`section` has its kind,
    precision, device and backend): "auto" is OpenVINO on a CPU where the runtime can run the model, else torch;
    the same on every engine, so the Ray engine scores as the local one does."""
    if section["backend"] != "auto":
        return section["backend"]
    from negmine.backends import auto_backend

    return auto_backend(section["precision"], section["device"], [], model_path, section["kind"])


def resolved_precision(params: Mapping[str, Any]) -> str:
    """What [score] precision means on this machine ("auto" resolved by the hardware and the backend:
    `negmine.precision`)."""
    from negmine.precision import resolve

    return resolve(params["precision"], params["device"], backend(params))


def key_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that change a score, the precision as resolved here. torch fp32 adds nothing, so the keys
    (and pair stores) of torch fp32 teachers are what they were before precision and backend were settings; a
    runtime backend adds itself, its precision (fp32 too) and the export code's version, so a pair store never
    mixes runtimes."""
    out = {k: params[k] for k in KEY_SETTINGS}
    prec = resolved_precision(params)
    if backend(params) != "torch":
        from negmine.backends import EXPORT_VERSION

        out.update({"backend": backend(params), "precision": prec, "export": EXPORT_VERSION})
    elif prec != "fp32":
        out["precision"] = prec
    return out


PAIRS = pa.schema([("qkey", pa.int64()), ("dkey", pa.int64()), ("score", pa.float32())])


class Teacher:
    """Loads the configured teacher once, on first use: a fully cached run never imports torch, and a run on
    backend onnx or openvino never does (`negmine.backends`: the model is exported once, in a child process, into
    `cache_root`)."""

    def __init__(self, params: Mapping[str, Any], model_path: Path, cache_root: Path | None = None) -> None:
        self.params, self.model_path, self.cache_root, self.model = params, model_path, cache_root, None

    def _load_runtime(self) -> None:
        """The teacher on onnxruntime or OpenVINO: a cross-encoder's logits graph, or a bi-encoder through
        `negmine.encode.load_model`."""
        from negmine import backends
        from negmine.encode import load_model, model_fingerprint
        from negmine.hashing import FingerprintMemo

        p, name, prec = self.params, backend(self.params), resolved_precision(self.params)
        if prec not in backends.PRECISIONS[name]:
            raise ConfigError(f"[score] precision {prec} does not run on backend {name}; use one of "
                              f"{', '.join(backends.PRECISIONS[name])} (or auto)")
        backends.require(name, "score")
        if self.cache_root is None:
            import tempfile

            self.cache_root = Path(tempfile.gettempdir()) / "negmine-exports"
        fp = p.get("teacher") or model_fingerprint(self.model_path, FingerprintMemo(self.cache_root / "fp.json"))
        if p["kind"] == "bi-encoder":
            self.model = load_model({"device": p["device"], "backend": name, "precision": prec,
                                     "max_seq_length": p["max_length"], "model": fp}, self.model_path,
                                    self.cache_root)
            return
        backends.read_ce_config(self.model_path)  # refuse a model it cannot run before exporting it
        graph = backends.exported_model(self.model_path, fp, name, prec, self.cache_root, head="logits")
        self.model = backends.RuntimeCrossEncoder(self.model_path, graph, name, prec, p["max_length"],
                                                  p["activation"])

    def _load(self) -> None:
        from negmine.memory import release_memory

        release_memory()
        p = self.params
        if backend(p) != "torch":
            self._load_runtime()
            return
        from negmine.encode import quiet_hf

        quiet_hf()
        if p["kind"] == "cross-encoder":
            import torch
            from sentence_transformers import CrossEncoder

            act = torch.nn.Identity() if p["activation"] == "logit" else torch.nn.Sigmoid()
            try:
                self.model = CrossEncoder(str(self.model_path), device=p["device"] or None, local_files_only=True,
                                          max_length=p["max_length"] or None, activation_fn=act)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"[score] cannot load cross-encoder from {self.model_path}: {exc}") from None
            if getattr(self.model, "num_labels", 1) != 1:
                raise ConfigError(f"[score] cross-encoder {self.model_path} has {self.model.num_labels} labels; "
                                  "a relevance teacher has one output")
            if resolved_precision(p) != "fp32":
                from negmine.precision import fp32_head

                fp32_head(self.model, 1)  # a 16-bit logit would tie nearby scores
        else:
            from negmine.encode import load_model

            self.model = load_model({"device": p["device"], "backend": "torch", "precision": p["precision"],
                                     "max_seq_length": p["max_length"]}, self.model_path)

    def __call__(self, queries: list[str], docs: list[str]) -> np.ndarray:
        if self.model is None:
            self._load()
        p = self.params
        if backend(p) != "torch":
            return self._call_runtime(queries, docs)
        from negmine.precision import autocast

        # 16-bit precisions: fp32 weights, matrix products under autocast (as the dense encoder)
        with autocast(resolved_precision(p), self.model.device.type):
            if p["kind"] == "cross-encoder":
                pairs = [(f"{p['query_prompt']}{q}", f"{p['doc_prompt']}{d}") for q, d in zip(queries, docs)]
                scores = self.model.predict(pairs, batch_size=p["batch_size"], show_progress_bar=False,
                                            convert_to_tensor=True)
                return scores.float().cpu().numpy().reshape(-1)
            enc = {"batch_size": p["batch_size"], "normalize_embeddings": p["normalize"], "convert_to_tensor": True,
                   "show_progress_bar": False}
            q = self.model.encode(queries, prompt=p["query_prompt"] or None, **enc).float()
            d = self.model.encode(docs, prompt=p["doc_prompt"] or None, **enc).float()
        return (q * d).sum(dim=1).cpu().numpy().astype(np.float32)

    def _call_runtime(self, queries: list[str], docs: list[str]) -> np.ndarray:
        p = self.params
        budget = p["batch_tokens"]
        if p["kind"] == "cross-encoder":
            return self.model.predict([f"{p['query_prompt']}{q}" for q in queries],
                                      [f"{p['doc_prompt']}{d}" for d in docs], budget, p["batch_size"])
        q = self.model.encode(queries, p["query_prompt"], budget, p["batch_size"], p["normalize"])
        d = self.model.encode(docs, p["doc_prompt"], budget, p["batch_size"], p["normalize"])
        return np.einsum("ij,ij->i", q, d).astype(np.float32)


def teacher_worker(params: Mapping[str, Any], model_path: Path, cache_root: Path | None = None):
    """A worker for `engine.map`: (query texts, document texts) -> the teacher's scores."""
    teacher = Teacher(params, model_path, cache_root)
    return lambda batch: teacher(*batch)


def store_dir(cache_root: Path, model_fp: str, params: Mapping[str, Any]) -> Path:
    settings = key_settings(params)
    digest = hashlib.sha256(json.dumps({"model": model_fp, **settings}, sort_keys=True).encode()).hexdigest()
    return cache_root / "pairs" / digest[:32]


def _store_parts(folder: Path) -> Iterator[pa.Table]:
    """Every verified part of a pair store, one at a time. A part is named by the SHA-256 of its bytes, so a
    truncated or edited one is recognised, reported and deleted (its pairs are scored again); parts from before
    content names are adopted (renamed to their hash) when they read. The caller holds the store's lock."""
    for p in sorted(folder.glob("part-*.parquet")):
        name = p.stem[len("part-"):]
        digest = file_sha256(p)
        problem = None
        if len(name) == 64 and digest != name:
            problem = "its content does not match its name (truncated or edited)"
        else:
            try:
                table = pq.read_table(p)
            except (pa.ArrowException, OSError) as exc:
                problem = f"unreadable ({exc})"
        if problem:
            log.warning("pair store part %s is damaged: %s; its pairs are scored again", p, problem)
            p.unlink(missing_ok=True)
            continue
        if len(name) != 64:
            os.replace(p, folder / f"part-{digest}.parquet")
        yield table


def _write_part(folder: Path, part: pa.Table) -> None:
    """Write a store part atomically under the SHA-256 of its bytes."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-part-", suffix=".parquet", dir=folder)
    os.close(fd)
    try:
        pq.write_table(part, tmp)
        os.replace(tmp, folder / f"part-{file_sha256(tmp)}.parquet")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pair_codes(qkeys: np.ndarray, dkeys: np.ndarray, uq: np.ndarray, ud: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each (query key, document key) pair as one exact uint64, its query key's rank among `uq` times len(ud)
    plus its document key's rank among `ud` (both sorted, distinct), and whether both keys are there at all."""
    iq = np.searchsorted(uq, qkeys)
    idd = np.searchsorted(ud, dkeys)
    known = (iq < len(uq)) & (idd < len(ud))
    known[known] = (uq[iq[known]] == qkeys[known]) & (ud[idd[known]] == dkeys[known])
    return iq.astype(np.uint64) * np.uint64(len(ud)) + idd.astype(np.uint64), known


class _StoreIndex:
    """A pair store's pairs, sorted by an exact integer code of (query key, document key), and their scores (12
    bytes a stored pair once built; bench/score_store.py). A pair stored twice (an old store, parts copied in) keeps
    its first copy as read (parts by name, rows in order), as before."""

    def __init__(self, store: Path) -> None:
        q, d, s = [], [], []
        for part in _store_parts(store):  # numpy a part at a time: no Arrow copy of the whole store
            q.append(part["qkey"].to_numpy())
            d.append(part["dkey"].to_numpy())
            s.append(part["score"].to_numpy().astype(np.float32))
        qkeys, dkeys = (np.concatenate(x) if x else np.empty(0, np.int64) for x in (q, d))
        scores = np.concatenate(s) if s else np.empty(0, np.float32)
        del q, d, s
        self.uq, self.ud = np.unique(qkeys), np.unique(dkeys)
        codes, _ = _pair_codes(qkeys, dkeys, self.uq, self.ud)
        del qkeys, dkeys
        order = np.argsort(codes, kind="stable")  # stable: a repeated pair's first copy first
        codes, scores = codes[order], scores[order]
        del order
        repeated = codes[1:] == codes[:-1]
        if repeated.any():
            first = np.concatenate([[True], ~repeated])
            codes, scores = codes[first], scores[first]
        self.codes, self.scores = codes, scores

    def find(self, qkeys: np.ndarray, dkeys: np.ndarray) -> np.ndarray:
        """Each pair's position in the store; -1 where the store lacks it."""
        codes, known = _pair_codes(qkeys, dkeys, self.uq, self.ud)
        at = np.searchsorted(self.codes, codes)
        found = known & (at < len(self.codes))
        found[found] = self.codes[at[found]] == codes[found]
        return np.where(found, at, -1)


def _keys_of(texts: tables.Texts, query_ids: pa.Array, qkeys: np.ndarray, ids: pa.Array | pa.ChunkedArray,
             rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query keys, document keys, query positions) of a chunk of (query id, corpus row) pairs: keys of the exact
    texts, a document's computed once a chunk."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    at = pc.index_in(ids, value_set=query_ids)
    if at.null_count:
        raise RuntimeError("a pair's query is not among the ingested queries: the cache is stale; clear it")
    qpos = at.to_numpy(zero_copy_only=False).astype(np.int64)
    uniq, inverse = np.unique(rows, return_inverse=True)
    dkeys = np.empty(len(uniq), dtype=np.int64)
    for a in range(0, len(uniq), 50_000):
        dkeys[a:a + 50_000] = [_key(t) for t in texts.docs(uniq[a:a + 50_000].tolist())]
    return qkeys[qpos], dkeys[inverse.reshape(-1)], qpos


class PairScores:
    """A model teacher's scores of (query id, corpus row) pairs given in chunks, through its pair store.

    `fill()` reads the chunks once, under the store's lock: it collects the pairs the store lacks (spilling every
    chunk's keys to `work_dir`), scores each distinct one once, in the order the pairs first need them and in
    batches of `flush_pairs`, exactly as one pass over all the pairs would, and indexes the store. Iterating then
    yields each chunk's scores in order, from the spilled keys. Memory: the store's index (12 bytes a stored pair)
    and the missing pairs (40 bytes each, all of them in a cold run), not every pair's keys and ids at once.
    `new` and `distinct` count the pairs scored now and the distinct pairs needed."""

    def __init__(self, params: Mapping[str, Any], model_path: Path, store: Path, texts: tables.Texts,
                 chunks: Callable[[], Iterator[tuple[pa.Array | pa.ChunkedArray, np.ndarray]]], work_dir: Path):
        self.params, self.model_path, self.store, self.texts = params, model_path, store, texts
        self.chunks, self.work_dir = chunks, work_dir
        self.query_ids = list(texts.queries)
        self.qkeys = np.array([_key(texts.queries[q]) for q in self.query_ids], dtype=np.int64)
        self.n_chunks, self.new, self.distinct, self.index = 0, 0, 0, None

    def fill(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        value_set = pa.array(self.query_ids, pa.string())
        with file_lock(self.store / ".lock"):  # one writer a store: concurrent runs never score a pair twice
            for leftover in [*self.store.glob(".tmp-part-*"), *self.store.glob(".part-*.tmp")]:  # a killed
                leftover.unlink(missing_ok=True)  # writer's; we hold the lock, so no one is writing them
            have = _StoreIndex(self.store)
            lacking: list[tuple[np.ndarray, ...]] = []
            for i, (ids, rows) in enumerate(self.chunks()):
                rows = np.asarray(rows, dtype=np.int64)
                qk, dk, qpos = _keys_of(self.texts, value_set, self.qkeys, ids, rows)
                np.save(self.work_dir / f"keys-{i}.npy", np.stack([qk, dk]))
                miss = np.flatnonzero(have.find(qk, dk) < 0)
                lacking.append((qk[miss], dk[miss], qpos[miss], rows[miss]))
                self.n_chunks = i + 1
            del have
            if lacking:
                mq, md, mpos, mrows = (np.concatenate(x) for x in zip(*lacking))
            else:
                mq = md = mpos = mrows = np.empty(0, np.int64)
            del lacking
            # the distinct missing pairs, each where it is first needed, in that order
            codes, _ = _pair_codes(mq, md, np.unique(mq), np.unique(md))
            first = np.sort(np.unique(codes, return_index=True)[1])
            del codes
            self.new = len(first)
            if self.new:
                self._score(mq[first], md[first], mpos[first], mrows[first])
            del mq, md, mpos, mrows, first
            self.index = _StoreIndex(self.store)

    def _score(self, qk: np.ndarray, dk: np.ndarray, qpos: np.ndarray, rows: np.ndarray) -> None:
        from negmine import engine

        p, step, n = self.params, self.params["flush_pairs"], len(qk)
        batches = (([self.texts.queries[self.query_ids[q]] for q in qpos[a:a + step]],
                    self.texts.docs(rows[a:a + step].tolist())) for a in range(0, n, step))
        # the teacher runs here (local engine) or in a pool of actors; this process stays the store's one writer
        # a runtime backend's export lives in the cache beside the pair stores (<cache>/pairs/<store>)
        scored = engine.current().map(functools.partial(teacher_worker, p, self.model_path, self.store.parent.parent),
                                      batches, workers=p["workers"], gpu=backend(p) == "torch")
        with bar(total=n, desc="score pairs", unit="pair") as progress:
            for a, s in zip(range(0, n, step), scored):
                part = pa.table({"qkey": pa.array(qk[a:a + step], pa.int64()),
                                 "dkey": pa.array(dk[a:a + step], pa.int64()),
                                 "score": pa.array(s, pa.float32())}, schema=PAIRS)
                _write_part(self.store, part)
                progress.update(len(s))

    def __iter__(self) -> Iterator[np.ndarray]:
        """Each chunk's scores (float32), in the chunks' order."""
        seen = np.zeros(len(self.index.codes), dtype=bool)
        for i in range(self.n_chunks):
            qk, dk = np.load(self.work_dir / f"keys-{i}.npy")
            found = self.index.find(qk, dk)
            if (found < 0).any():
                raise RuntimeError("teacher scores missing after scoring; the pair store may be damaged: clear the "
                                   "cache")
            seen[found] = True
            self.distinct = int(seen.sum())
            yield self.index.scores[found]


def score(params: Mapping[str, Any], model_path: Path, store: Path, ingest_dir: Path, candidates_path: Path,
          out_dir: Path) -> dict[str, Any]:
    """Write the candidates (with teacher_score) and the positives' teacher scores, a retrieve chunk at a time;
    score only pairs the store lacks."""
    texts = tables.Texts(ingest_dir)
    pos_q, pos_d, pos_rows, _ = tables.positive_pairs(ingest_dir, tables.mined_query_ids(ingest_dir))
    pos_i = np.asarray(pos_rows, dtype=np.int64)
    pf = pq.ParquetFile(candidates_path)

    def chunks() -> Iterator[tuple[pa.ChunkedArray, np.ndarray]]:  # the candidates' row groups, then the positives
        for g in range(pf.num_row_groups):
            t = pf.read_row_group(g, columns=["query_id", "doc_idx"])
            yield t["query_id"], t["doc_idx"].to_numpy()
        yield pa.array(pos_q, pa.string()), pos_i

    meta = {b"negmine.score_type": score_type(params).encode()}
    col = schema.CANDIDATES.get_field_index("teacher_score")
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".pairs-") as tmp:
        scores = PairScores(params, model_path, store, texts, chunks, Path(tmp))
        scores.fill()
        values = iter(scores)
        with pq.ParquetWriter(out_dir / schema.CANDIDATES_FILE, schema.CANDIDATES.with_metadata(meta)) as writer:
            for g in range(pf.num_row_groups):  # keep the query-chunk row groups that later stages stream
                t = pf.read_row_group(g)
                t = t.set_column(col, "teacher_score", pa.array(next(values), pa.float32()))
                writer.write_table(t.replace_schema_metadata(meta))
        pos_values = next(values)
    pq.write_table(pa.table({"query_id": pa.array(pos_q, pa.string()), "doc_id": pa.array(pos_d, pa.string()),
                             "doc_idx": pa.array(pos_i, pa.int64()),
                             "teacher_score": pa.array(pos_values, pa.float32())},
                            schema=schema.POSITIVE_SCORES).replace_schema_metadata(meta),
                   out_dir / schema.POSITIVE_SCORES_FILE)
    return {"teacher": params["kind"], "score_type": score_type(params), "pairs": pf.metadata.num_rows + len(pos_i),
            "distinct_pairs": scores.distinct, "scored_now": scores.new, "from_store": scores.distinct - scores.new}


def _params(cfg: Config, ctx: Context) -> dict[str, Any]:
    from negmine.encode import resolve_model

    path = resolve_model(cfg["score"]["teacher"], "[score] teacher")
    sc = {**cfg["score"]}
    sc["backend"] = resolved_backend(sc, path)  # "auto" never enters a key
    fp = ctx.fingerprint(path)
    # the precision as resolved on this machine: "auto" never enters a key; the backend enters where it is not
    # torch, so torch keys are what they were before it was a setting
    runtime = {"backend": sc["backend"]} if sc["backend"] != "torch" else {}
    return {"teacher": fp, **{k: sc[k] for k in KEY_SETTINGS}, "precision": resolved_precision(sc), **runtime,
            "teacher_path": str(path),
            "store": str(store_dir(ctx.cache_root, fp, sc)), "batch_size": sc["batch_size"],
            "batch_tokens": sc["batch_tokens"], "device": sc["device"],
            "flush_pairs": sc["flush_pairs"], "workers": sc["workers"]}


STAGE = Stage(
    name="score", version=VERSION, command="score", reads=reads("ingest", "retrieve"), params=_params, section="score",
    run=lambda inputs, params, out: score(params, Path(params["teacher_path"]), Path(params["store"]),
                                          inputs["ingest"], inputs["retrieve"] / schema.CANDIDATES_FILE, out),
    outputs=(schema.CANDIDATES_FILE, schema.POSITIVE_SCORES_FILE),
    enabled=lambda cfg: bool(cfg["score"]["teacher"]),  # a configured teacher always runs: never silently skipped
    unkeyed={"teacher_path": "where the model is; its files enter the key by their content (teacher)",
             "store": "the pair store shared by runs of this teacher and settings (keyed by both)",
             "batch_size": "speed only", "device": "speed only",
             "batch_tokens": "speed and memory only (scores equal within float rounding)",
             "flush_pairs": "how much a killed run loses, not the scores",
             "workers": "speed only: teacher actors on the Ray engine"})


# ----------------------------------------------------------------------------------------------------------------
# Several teachers ([ensemble] teachers): NV-Retriever's teacher ensembles (Moreira et al. 2024, arXiv:2407.15831,
# section 4.3). Each teacher scores every candidate and every positive; a model teacher through its own pair store
# (the one a single [score] teacher with the same model and settings uses), so adding a teacher never rescores the
# others; a retriever teacher ("bm25", "dense") with its own index, for candidates another retriever found too.

def _teacher_params(cfg: Config, ctx: Context) -> dict[str, Any]:
    from negmine.encode import resolve_model

    sc, teachers, paths, stores = cfg["score"], [], {}, {}
    for spec in teacher_specs(cfg):
        t = {"name": spec["name"], "score_type": teacher_type(cfg, spec)}
        if "retriever" in spec:
            t["retriever"] = spec["retriever"]
        else:
            path = resolve_model(spec["model"], f"[ensemble] teachers {spec['name']!r} model")
            fp = ctx.fingerprint(path)
            runtime = resolved_backend({**sc, "kind": spec["kind"]}, path)
            settings = {**{k: spec[k] for k in MODEL_KEYS}, "precision": resolved_precision({**sc, "backend": runtime}),
                        "device": sc["device"], "backend": runtime}
            t.update({"model": fp, **{k: spec[k] for k in KEY_SETTINGS}, "precision": settings["precision"]})
            if runtime != "torch":  # every model teacher runs on [score] backend; torch keys stay as they were
                t["backend"] = runtime
            paths[spec["name"]] = str(path)
            stores[spec["name"]] = str(store_dir(ctx.cache_root, fp, settings))
        teachers.append(t)
    p = {"teachers": teachers, "model_paths": paths, "stores": stores, "batch_size": sc["batch_size"],
         "batch_tokens": sc["batch_tokens"], "device": sc["device"], "flush_pairs": sc["flush_pairs"],
         "workers": sc["workers"],
         "memory_budget": cfg["run"]["memory_budget"]}
    # a retriever teacher's section (how BM25 reads a query), less what changes only the speed of its stages
    from negmine.config import SPEED_ONLY
    from negmine.retrievers import RETRIEVERS

    p["sections"] = {}
    for t in teachers:
        if "retriever" in t:
            r = RETRIEVERS[t["retriever"]]
            fast = {k for st in r.stages for k in st.unkeyed}
            p["sections"][r.name] = {k: v for k, v in (cfg.get(r.section) or {}).items()
                                     if (r.section, k) not in SPEED_ONLY and k not in fast}
    return p


def _teacher_reads(cfg: Config) -> tuple[str, ...]:
    from negmine.retrievers import RETRIEVERS

    names = [s["retriever"] for s in teacher_specs(cfg) if "retriever" in s]
    return ("ingest", "retrieve") + tuple(dict.fromkeys(r for n in names for r in RETRIEVERS[n].pair_reads))


# candidate pairs a retriever teacher scores at a time: the stage's memory follows this, not the pool's size
TEACHER_CHUNK_ROWS = 1 << 18


def score_teachers(inputs: Inputs, params: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
    """Every teacher's score of every candidate and positive: `teacher_scores.parquet` (the retrieve stage's
    candidate rows, in order) and `teacher_positive_scores.parquet`, a float32 column a teacher, each teacher's
    name and score type in the files' metadata.

    The candidates are read and written TEACHER_CHUNK_ROWS at a time: a retriever teacher scores a chunk with its
    own scorer, a model teacher reads it through its pair store (`PairScores`, as the [score] stage does)."""
    from negmine.retrievers import RETRIEVERS

    ingest_dir = inputs["ingest"]
    queries = tables.mined_queries(ingest_dir)
    qids = queries["query_id"].combine_chunks()
    query_texts = queries["text"].to_pylist()
    cand_path = inputs["retrieve"] / schema.CANDIDATES_FILE
    pos_q, pos_d, pos_rows, pos_qpos = tables.positive_pairs(ingest_dir, qids)
    pos_rows = np.asarray(pos_rows, dtype=np.int64)
    pos_qpos = np.asarray(pos_qpos, dtype=np.int64)
    n_c = pq.ParquetFile(cand_path).metadata.num_rows

    def batches() -> Iterator[pa.RecordBatch]:
        return pq.ParquetFile(cand_path).iter_batches(batch_size=TEACHER_CHUNK_ROWS, columns=["query_id", "doc_idx"])

    def pairs() -> Iterator[tuple[pa.Array, np.ndarray]]:  # a model teacher's chunks: the batches, the positives
        for b in batches():
            yield b.column(0), b.column(1).to_numpy()
        yield pa.array(pos_q, pa.string()), pos_rows

    def retriever_scores(t: Mapping[str, Any], qpos: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Its own scorer (negmine.retrievers), reading the entries its stages made."""
        r = RETRIEVERS[t["retriever"]]
        settings = {**params["sections"][t["retriever"]], "memory_budget": params["memory_budget"]}
        return np.asarray(r.score_pairs({s: inputs[s] for s in r.pair_reads}, settings, query_texts, qpos, rows),
                          dtype=np.float32)

    names = [t["name"] for t in params["teachers"]]
    meta = {b"negmine.teachers": json.dumps([{"name": t["name"], "score_type": t["score_type"]}
                                             for t in params["teachers"]]).encode()}
    out_schema = pa.schema([("query_id", pa.string()), ("doc_idx", pa.int64()),
                            *((n, pa.float32()) for n in names)], metadata=meta)
    with tables.Texts(ingest_dir) as texts, tempfile.TemporaryDirectory(dir=out_dir, prefix=".pairs-") as tmp:
        stores: dict[str, PairScores] = {}  # model teachers: their pairs scored first, then read chunk by chunk
        for t in params["teachers"]:
            if "retriever" not in t:
                tp = {**{k: t[k] for k in KEY_SETTINGS}, "precision": t["precision"],
                      "backend": t.get("backend", "torch"), "teacher": t["model"],
                      "batch_size": params["batch_size"], "batch_tokens": params["batch_tokens"],
                      "device": params["device"], "flush_pairs": params["flush_pairs"], "workers": params["workers"]}
                (Path(tmp) / t["name"]).mkdir()
                stores[t["name"]] = PairScores(tp, Path(params["model_paths"][t["name"]]),
                                               Path(params["stores"][t["name"]]), texts, pairs, Path(tmp) / t["name"])
                stores[t["name"]].fill()
        from_store = {name: iter(ps) for name, ps in stores.items()}
        with pq.ParquetWriter(out_dir / TEACHERS_FILE, out_schema) as writer:
            for batch in bar(batches(), total=-(-n_c // TEACHER_CHUNK_ROWS), desc="teachers", unit="chunk"):
                qpos = pc.index_in(batch.column(0), value_set=qids).to_numpy(zero_copy_only=False).astype(np.int64)
                rows = batch.column(1).to_numpy().astype(np.int64)
                cols = {t["name"]: retriever_scores(t, qpos, rows) if "retriever" in t else next(from_store[t["name"]])
                        for t in params["teachers"]}
                writer.write_table(pa.table({"query_id": batch.column(0), "doc_idx": batch.column(1),
                                             **{n: pa.array(v, pa.float32()) for n, v in cols.items()}},
                                            schema=out_schema))
        pos_scores = {t["name"]: retriever_scores(t, pos_qpos, pos_rows) if "retriever" in t
                      else next(from_store[t["name"]]) for t in params["teachers"]}
    stats = {t["name"]: {"score_type": t["score_type"], "retriever": t["retriever"]} if "retriever" in t else
             {"score_type": t["score_type"], "kind": t["kind"], "distinct_pairs": stores[t["name"]].distinct,
              "scored_now": stores[t["name"]].new, "from_store": stores[t["name"]].distinct - stores[t["name"]].new}
             for t in params["teachers"]}
    pos_cols = {"query_id": pa.array(pos_q, pa.string()), "doc_id": pa.array(pos_d, pa.string()),
                "doc_idx": pa.array(pos_rows, pa.int64())}
    pq.write_table(pa.table({**pos_cols, **{n: pa.array(v, pa.float32()) for n, v in pos_scores.items()}})
                   .replace_schema_metadata(meta), out_dir / TEACHER_POSITIVES_FILE)
    return {"teachers": stats, "candidates": n_c, "positives": len(pos_q)}


TEACHERS_STAGE = Stage(
    name="teachers", version="1", command="score", reads=_teacher_reads, params=_teacher_params, section="ensemble",
    run=score_teachers, outputs=(TEACHERS_FILE, TEACHER_POSITIVES_FILE), enabled=uses_teachers,
    unkeyed={"model_paths": "where the models are; their files enter the key by their content (teachers)",
             "stores": "the pair stores shared by runs of each teacher and settings (keyed by both)",
             "batch_size": "speed only", "device": "speed only",
             "batch_tokens": "speed and memory only (scores equal within float rounding)",
             "flush_pairs": "how much a killed run loses, not the scores",
             "workers": "speed only: teacher actors on the Ray engine",
             "memory_budget": "sizes the BM25 product blocks: bounds memory, not the scores"})
