"""The pipeline: ingest -> index -> retrieve -> exclude -> sample -> export, each stage cached by content.

`mine()` is the Python entry point behind `negmine run`; `until=` stops after a given stage (the per-stage CLI
commands use it). Each stage's key includes the keys of the stages it reads, so changing a sampling parameter
recomputes sampling and export only, and changing a filter never re-indexes or re-retrieves.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from negmine import __version__, bm25, export, ingest, report, retrieve, sample
from negmine.cache import StageCache, StageResult
from negmine.config import load_config
from negmine.errors import ConfigError
from negmine.filters import exclude
from negmine.hashing import FingerprintMemo
from negmine.io import atomic_path, atomic_write_text

log = logging.getLogger("negmine.pipeline")
STAGES = ("ingest", "index", "retrieve", "score", "exclude", "sample", "export")


@dataclass
class RunResult:
    config: dict[str, Any]
    stages: dict[str, StageResult] = field(default_factory=dict)
    outputs: list[Path] = field(default_factory=list)

    @property
    def computed(self) -> list[str]:
        return [s for s, r in self.stages.items() if r.status == "computed"]


def _provenance(cfg: dict[str, Any], inputs: dict[str, str], keys: dict[str, str]) -> dict[str, Any]:
    """What made these files: no timestamps or output paths, so equal runs give byte-equal files."""
    config = {s: dict(v) for s, v in cfg.items() if s != "run"}
    config["export"].pop("dir", None)
    prov = {"negmine_version": __version__, "config": config, "inputs": inputs, "stage_keys": keys}
    from negmine.precision import resolved_settings

    prov.update(resolved_settings(cfg))  # what "auto" meant on the machine that made these files
    return prov


def mine(config: str | Path | dict[str, Any] | None = None, overrides: list[str] | dict[str, Any] | None = None,
         *, until: str = "export", force: bool = False, no_cache: bool = False, cache_dir: str | Path | None = None,
         on_stage: Callable[[StageResult], None] | None = None) -> RunResult:
    """Run the pipeline up to `until` and return each stage's result and the exported files.

    `config` is a TOML path, an already loaded config (from `load_config`), or None for the defaults; `overrides`
    are `section.key=value` strings or a {"section.key": value} dict.
    """
    if until not in STAGES:
        raise ValueError(f"until must be one of {STAGES}")
    cfg = config if isinstance(config, dict) else load_config(config, overrides)
    if isinstance(config, dict) and overrides:
        raise ValueError("pass overrides to load_config when giving a loaded config")
    tmp_root = tempfile.mkdtemp(prefix="negmine-nocache-") if no_cache else None
    root = Path(tmp_root or cache_dir or cfg["run"]["cache_dir"])
    try:
        return _run(cfg, StageCache(root, force=force, persistent=not no_cache), until, on_stage)
    finally:
        if tmp_root:
            shutil.rmtree(tmp_root, ignore_errors=True)


def _run(cfg: dict[str, Any], cache: StageCache, until: str,
         on_stage: Callable[[StageResult], None] | None) -> RunResult:
    result = RunResult(cfg)
    inp = cfg["input"]
    source, stype = check_score_types(cfg)
    if cfg["run"]["low_memory"]:
        from negmine.memory import tune_malloc

        tune_malloc()
    memo = FingerprintMemo(cache.root / "fingerprints.json")
    files = ingest.input_files(inp)
    inputs = {str(p): memo(p) for p in files}
    memo.save()
    keys: dict[str, str] = {}

    def step(stage: str, version: str, params: dict[str, Any], upstream: list[str],
             compute: Callable[[Path], dict[str, Any]], stage_inputs: dict[str, str] | None = None,
             resumable: bool = False) -> StageResult:
        r = cache.run(stage, version, params, {u: keys[u] for u in upstream}, stage_inputs or {}, compute,
                      resumable=resumable)
        keys[stage] = r.key
        result.stages[stage] = r
        if on_stage:
            on_stage(r)
        return r

    r_ing = step("ingest", ingest.VERSION, inp, [], lambda out: ingest.ingest(inp, out), inputs)
    if until == "ingest":
        return result
    ing = r_ing.path
    retrievers = cfg["retrieve"]["retrievers"]
    index_dirs = _index_stages(cfg, step, ing, memo)
    if until == "index":
        return result
    r_ret = _retrieve_stages(cfg, step, ing, index_dirs, retrievers)
    if until == "retrieve":
        return result
    query_ids = retrieve.queries_to_mine(ing, inp["min_positive_score"])["query_id"].combine_chunks()
    r_cand, positive_scores = r_ret, None
    if cfg["score"]["teacher"]:  # a configured teacher always runs: never silently skipped
        from negmine import score

        sc = cfg["score"]
        teacher_path = _resolve_teacher(sc["teacher"])
        teacher_fp = _model_fingerprint(teacher_path, memo)
        params = {"teacher": teacher_fp, **score.key_settings(sc)}  # precision as resolved on this machine
        store = score.store_dir(cache.root, teacher_fp, sc)
        r_cand = step("score", score.VERSION, params, ["ingest", "retrieve"],
                      lambda out: score.score(sc, teacher_path, store, ing, r_ret.path / "candidates.parquet",
                                              query_ids, inp["min_positive_score"], inp["use_title"],
                                              inp["title_sep"], out))
        positive_scores = r_cand.path / "positives.parquet"
    if until == "score":
        return result
    fparams = cfg["filter"]
    score_column = "teacher_score" if source == "teacher" else "score"
    pos_scores = positive_scores if source == "teacher" else (
        r_ret.path / "positives.parquet" if (r_ret.path / "positives.parquet").is_file() else None)
    vectors = None
    exc_upstream = ["ingest", r_cand.stage]
    if fparams["near_dup_cosine"] is not None:
        from negmine.dense import DenseSearcher

        vectors = DenseSearcher(cfg["dense"], index_dirs["encode"]).doc_vectors
        exc_upstream.append("encode")
    texts = export.Texts(ing, inp["use_title"], inp["title_sep"]) if fparams["near_dup_jaccard"] is not None \
        else None
    r_exc = step("exclude", exclude.VERSION, {**cfg["exclude"], **fparams, "score_column": score_column},
                 exc_upstream,
                 lambda out: exclude.exclude(cfg["exclude"], fparams, ing, r_cand.path / "candidates.parquet",
                                             query_ids, inp["min_positive_score"], out, score_column=score_column,
                                             positive_scores=pos_scores, teacher_positive_scores=positive_scores,
                                             texts=texts, vectors=vectors))
    if until == "exclude":
        return result
    r_smp = step("sample", sample.VERSION, {**cfg["sample"], "top_k": cfg["retrieve"]["top_k"]},
                 ["ingest", "exclude"],
                 lambda out: sample.sample(cfg["sample"], cfg["exclude"], cfg["retrieve"]["top_k"], ing,
                                           r_exc.path / "candidates.parquet", query_ids, inp["min_positive_score"],
                                           out, fparams["relax_steps"]))
    if until == "sample":
        return result
    exp_params = {k: v for k, v in cfg["export"].items() if k != "dir"}
    exp_params["num_negatives"] = cfg["sample"]["num_negatives"]

    def do_export(out: Path) -> dict[str, Any]:
        prov = _provenance(cfg, inputs, dict(keys))
        stats = export.export(cfg["export"], cfg["sample"]["num_negatives"], ing, r_smp.path / "negatives.parquet",
                              query_ids, inp["min_positive_score"], inp["use_title"], inp["title_sep"], prov, out,
                              positive_scores, pos_scores)
        (out / "provenance.json").write_text(json.dumps(prov, indent=2, sort_keys=True) + "\n")
        stages = {s: {"key": r.key, "status": r.status, "seconds": r.seconds, "stats": r.stats}
                  for s, r in result.stages.items()}
        rep = report.build(stages, r_smp.path / "negatives.parquet", r_exc.path / "excluded.parquet", pos_scores,
                           stype, r_ing.stats["positives"], stats)
        rep["negmine_version"] = __version__
        report.write(rep, r_smp.path / "negatives.parquet", pos_scores, out)
        return stats

    r_exp = step("export", export.VERSION, exp_params, ["ingest", "sample"], do_export)
    result.outputs = _publish(r_exp.path, Path(cfg["export"]["dir"]))
    # where this output's stage entries live, for `negmine eval` (not part of any output's content); a
    # throwaway cache (--no-cache) is gone after the run, so then there is nothing to point at
    run_json = Path(cfg["export"]["dir"]) / "run.json"
    if cache.persistent:
        atomic_write_text(run_json, json.dumps(
            {"cache_dir": str(cache.root), "score_type": stype, "score_source": source,
             "stages": {s: str(r.path) for s, r in result.stages.items()}}, indent=2) + "\n")
        result.outputs.append(run_json)
    else:
        run_json.unlink(missing_ok=True)
    return result


def check_score_types(cfg: dict[str, Any]) -> tuple[str, str]:
    """Which score the filters and samplers read (teacher or retriever) and its type; refuse a threshold meant
    for another type before any work starts."""
    from negmine.filters import POSITIVE_AWARE
    from negmine.score import score_type

    f, retrievers = cfg["filter"], cfg["retrieve"]["retrievers"]
    teacher = score_type(cfg["score"]) if cfg["score"]["teacher"] else None
    if len(retrievers) > 1:
        retriever_type = "rrf"
    elif retrievers[0] == "bm25":
        retriever_type = "bm25"
    else:
        retriever_type = "cosine" if cfg["dense"]["normalize"] else "dot"
    source = f["score_source"]
    if source == "teacher" and not teacher:
        raise ConfigError("[filter] score_source is \"teacher\" but no [score] teacher is configured")
    if source == "auto":
        source = "teacher" if teacher else "retriever"
    stype = teacher if source == "teacher" else retriever_type
    if f["method"] != "none":
        _, _, allowed = POSITIVE_AWARE[f["method"]]
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
    needs_scores = [f for f in cfg["export"]["formats"] if f == "margin-mse"] + (
        [f for f in cfg["export"]["formats"] if f in ("labeled-pair", "labeled-list")] if cfg["export"]["scores"]
        else [])
    if needs_scores and stype == "rrf":
        raise ConfigError(f"[export] {needs_scores[0]} needs positive and negative scores on one scale; fused (RRF) "
                          "scores have none for positives: configure a [score] teacher")
    if cfg["sample"]["strategy"] == "simans" and stype == "rrf":
        raise ConfigError("[sample] simans needs positive scores; fused (RRF) scores have none: configure a "
                          "[score] teacher")
    return source, stype


def _resolve_teacher(name: str) -> Path:
    from negmine.encode import resolve_model

    if not name:
        raise ConfigError("[score] teacher is empty")
    return resolve_model(name, "[score] teacher")


def _model_fingerprint(path: Path, memo: FingerprintMemo) -> str:
    from negmine.encode import model_fingerprint

    fp = model_fingerprint(path, memo)
    memo.save()
    return fp


def _index_stages(cfg: dict[str, Any], step: Callable[..., StageResult], ing: Path,
                  memo: FingerprintMemo) -> dict[str, Path | None]:
    """The BM25 index and/or the dense embeddings (and approximate index) that the retrievers need."""
    inp, dirs = cfg["input"], {}
    text = {"use_title": inp["use_title"], "title_sep": inp["title_sep"]}
    if "bm25" in cfg["retrieve"]["retrievers"]:
        dirs["index"] = step("index", bm25.VERSION, {**cfg["bm25"], **text}, ["ingest"],
                             lambda out: bm25.build_index(cfg["bm25"], ing / "corpus.parquet", inp["use_title"],
                                                          inp["title_sep"], out)).path
    if "dense" in cfg["retrieve"]["retrievers"]:
        from negmine import dense, encode

        d = cfg["dense"]
        model_path = encode.resolve_model(d["model"])
        # precision as resolved on this machine: "auto" never enters a key
        params = {"model": _model_fingerprint(model_path, memo), **encode.key_settings(d), **text}
        query_texts = retrieve.queries_to_mine(ing, inp["min_positive_score"])["text"].to_pylist()
        dirs["encode"] = step("encode", encode.VERSION, params, ["ingest"],
                              lambda out: encode.encode(d, model_path, ing, query_texts, inp["use_title"],
                                                        inp["title_sep"], out), resumable=True).path
        dirs["ann"] = None
        if d["index"] != "flat":
            ann_params = {"index": d["index"], "hnsw_m": d["hnsw_m"], "hnsw_ef_construction": d["hnsw_ef_construction"],
                          "ivf_nlist": d["ivf_nlist"]}
            dirs["ann"] = step("ann", dense.VERSION, ann_params, ["encode"],
                               lambda out: dense.build_ann(d, dirs["encode"], out)).path
    return dirs


def _retrieve_stages(cfg: dict[str, Any], step: Callable[..., StageResult], ing: Path,
                     dirs: dict[str, Path | None], retrievers: list[str]) -> StageResult:
    """One retriever: its candidates are the stage `retrieve`. Several: each is cached on its own
    (`retrieve-bm25`, `retrieve-dense`), so adding a retriever never recomputes another, then fused."""
    inp, r, d = cfg["input"], cfg["retrieve"], cfg["dense"]
    single = len(retrievers) == 1
    stages: dict[str, StageResult] = {}
    # chunk_size only bounds memory, so it is in no key
    if "bm25" in retrievers:
        stages["bm25"] = step("retrieve" if single else "retrieve-bm25", retrieve.VERSION, {"top_k": r["top_k"]},
                              ["ingest", "index"],
                              lambda out: retrieve.retrieve_bm25(cfg["bm25"], r, ing, dirs["index"],
                                                                 inp["min_positive_score"], out))
    if "dense" in retrievers:
        params = {"top_k": r["top_k"], "index": d["index"]}
        if d["index"] == "hnsw":
            params["hnsw_ef_search"] = d["hnsw_ef_search"]
        elif d["index"] == "ivf":
            params["ivf_nprobe"] = d["ivf_nprobe"]
        stages["dense"] = step("retrieve" if single else "retrieve-dense", retrieve.VERSION, params,
                               ["ingest", "encode"] + (["ann"] if dirs.get("ann") else []),
                               lambda out: retrieve.retrieve_dense(d, r, ing, dirs["encode"], dirs.get("ann"),
                                                                   inp["min_positive_score"], out))
    if single:
        return stages[retrievers[0]]
    fuse_params = {"retrievers": retrievers, "fusion": r["fusion"], "rrf_k": r["rrf_k"], "top_k": r["top_k"]}
    if r["fusion"] == "union":
        fuse_params["union_quota"] = r["union_quota"]
    return step("retrieve", retrieve.VERSION, fuse_params, ["ingest"] + [f"retrieve-{n}" for n in retrievers],
                lambda out: retrieve.fuse_candidates(r, ing, [stages[n].path / "candidates.parquet"
                                                              for n in retrievers], retrievers,
                                                     inp["min_positive_score"], out))


MANIFEST = ".negmine-outputs.json"


def _publish(entry: Path, out_dir: Path) -> list[Path]:
    """Copy the export entry's files into the output folder, each file atomically.

    Files that an earlier run published here and this one does not (a format or file type taken out of the
    config) are removed, so the folder holds one run's outputs; a file negmine did not write is never touched.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / MANIFEST
    try:
        before = set(json.loads(manifest.read_text()))
    except (OSError, ValueError, TypeError):
        before = set()
    outputs = []
    for src in sorted(entry.iterdir()):
        if src.name == "meta.json" or not src.is_file():
            continue
        dest = out_dir / src.name
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
        outputs.append(dest)
    for name in sorted(before - {p.name for p in outputs}):
        stale = out_dir / name
        if "/" not in name and stale.is_file():
            stale.unlink()
            log.info("removed %s: the previous run's output, not produced by this one", stale)
    atomic_write_text(manifest, json.dumps(sorted(p.name for p in outputs)) + "\n")
    return outputs


__all__ = ["mine", "RunResult", "STAGES"]
