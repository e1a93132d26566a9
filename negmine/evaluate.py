"""`negmine eval`: how good are mined negatives, before anyone trains on them.

(a) candidate recall: the share of known positives the retriever found in its top-k;
(b) false negatives: the run is mined with a fraction of each multi-positive query's positives hidden
    (`[input] holdout_frac`); a hidden positive that comes out as a negative is a measured false negative. Rates
    come with 95% confidence intervals from a bootstrap over queries (negatives of one query are not independent);
(c) hardness: the rank and score of the kept negatives and their gap to the query's weakest positive;
(d) ECI (negmine.eci): one training-free score that balances hardness against safety under a frozen encoder,
    the same encoder for every run so that presets compare (bench/README.md says how well it ranks presets by
    the nDCG@10 of the retriever trained on them).
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from negmine import schema, tables
from negmine.errors import InputError, NegmineError
from negmine.io import read_parquet


def read_qrels(path: Path, min_score: int) -> dict[str, set[str]]:
    """Positives of a qrels file, BEIR or TREC (see `negmine.ingest.beir.iter_qrels`)."""
    out: dict[str, set[str]] = defaultdict(set)
    if not path.is_file():
        raise InputError(path, "qrels file not found", "give a TSV with query-id, corpus-id, score")
    from negmine.ingest.beir import iter_qrels  # one reader for every qrels file: no layout guessed twice

    for _, q, d, score in iter_qrels(path, None):
        if score >= min_score:
            out[q].add(d)
    return out


def bootstrap_ci(num: np.ndarray, den: np.ndarray, seed: int = 0, n: int = 2000) -> list[float]:
    """95% percentile interval of sum(num) / sum(den), resampling queries with replacement."""
    if len(den) == 0 or den.sum() == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(den), size=(n, len(den)))
    d = den[idx].sum(axis=1)
    ratios = np.where(d > 0, num[idx].sum(axis=1) / np.maximum(d, 1), np.nan)
    lo, hi = np.nanpercentile(ratios, [2.5, 97.5])
    return [float(lo), float(hi)]


def _stats(v: np.ndarray) -> dict[str, float]:
    v = v[np.isfinite(v)]
    if not len(v):
        return {"count": 0}
    return {"count": int(len(v)), "mean": float(v.mean()), "median": float(np.median(v)),
            "p10": float(np.quantile(v, 0.1)), "p90": float(np.quantile(v, 0.9))}


def _negatives(stages: dict[str, Path]) -> Path:
    """A run's exported negatives: an LLM judge's after sampling (negmine.judge), else sampling's."""
    return stages.get("judge", stages["sample"]) / schema.NEGATIVES_FILE


def eci_of_run(stages: dict[str, Path], model: str = "", seed: int = 0) -> dict[str, Any]:
    """ECI of a run's negatives: each mined query with its known positives and its sampled negatives, under the
    frozen encoder `model` ("" = the packaged all-MiniLM-L6-v2), against a seeded sample of random documents."""
    from negmine.eci import RANDOM_DOCS, eci_from_texts
    from negmine.encode import quiet_hf, resolve_model

    path = resolve_model(model, "--eci-model")
    ing = stages["ingest"]
    texts = tables.Texts(ing)
    neg = read_parquet(_negatives(stages), columns=["query_id", "doc_idx"])
    negs: dict[str, list[int]] = defaultdict(list)
    for q, i in zip(neg["query_id"].to_pylist(), neg["doc_idx"].to_pylist()):
        negs[q].append(i)
    groups = [(texts.queries[q], texts.docs(rows), texts.docs(sorted(set(negs.get(q, [])))))
              for q, (_, rows) in sorted(tables.positives_by_query(ing).items()) if rows]
    n = tables.num_docs(ing)
    rand_rows = sorted(np.random.default_rng(seed).choice(n, size=min(RANDOM_DOCS, n), replace=False).tolist())
    quiet_hf()
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    return {"model": model or "all-MiniLM-L6-v2 (packaged)",
            **eci_from_texts(encoder, groups, texts.docs(rand_rows))}


def evaluate(run_dir: Path, qrels: dict[str, set[str]] | None = None, eci_model: str | None = "") -> dict[str, Any]:
    """Evaluate a run's output folder; `eci_model` None skips the ECI score (it encodes the run's texts)."""
    run_file = run_dir / "run.json"
    if not run_file.is_file():
        raise NegmineError(f"{run_dir}: no run.json; give the output folder of a `negmine run` that kept its cache")
    run = json.loads(run_file.read_text())
    stages = {k: Path(v) for k, v in run["stages"].items()}
    for name in ("ingest", "retrieve", "sample", *(("judge",) if "judge" in stages else ())):
        if name not in stages or not stages[name].is_dir():
            raise NegmineError(f"{run_dir}: the {name} stage entry is gone from the cache ({stages.get(name)}); "
                               "run the config again")
    ing = stages["ingest"]
    known = read_parquet(ing / tables.QRELS).to_pylist()
    holdout = read_parquet(ing / tables.HOLDOUT).to_pylist() if (ing / tables.HOLDOUT).is_file() else []
    hidden: dict[str, set[str]] = defaultdict(set)
    for r in holdout:
        hidden[r["query_id"]].add(r["doc_id"])
    cands = read_parquet(stages["retrieve"] / schema.CANDIDATES_FILE, columns=["query_id", "doc_id"]).to_pylist()
    found: dict[str, set[str]] = defaultdict(set)
    for c in cands:
        found[c["query_id"]].add(c["doc_id"])
    mined = set(found) | {r["query_id"] for r in known}
    # (a) recall of the judged positives (the given qrels, else the run's own, hidden ones included)
    if qrels is None:
        qrels = defaultdict(set)
        for r in known:
            qrels[r["query_id"]].add(r["doc_id"])
        for q, ds in hidden.items():
            qrels[q] |= ds
    recall_num, recall_den = [], []
    for q in sorted(mined):
        pos = qrels.get(q, set())
        if pos:
            recall_num.append(len(pos & found.get(q, set())))
            recall_den.append(len(pos))
    rn, rd = np.array(recall_num, dtype=float), np.array(recall_den, dtype=float)
    out: dict[str, Any] = {"queries": len(mined), "candidate_recall": {
        "positives": int(rd.sum()), "retrieved": int(rn.sum()),
        "recall": float(rn.sum() / rd.sum()) if rd.sum() else float("nan"), "ci95": bootstrap_ci(rn, rd)}}
    # (b) false negatives among the mined negatives
    neg = read_parquet(_negatives(stages),  # the judge's, when one ran after sampling
                        columns=["query_id", "doc_id", "rank", "filter_score"]).to_pylist()
    negs: dict[str, list[dict]] = defaultdict(list)
    for r in neg:
        negs[r["query_id"]].append(r)
    if holdout:
        per_query = []
        fn_num, neg_den, hid_den = [], [], []
        for q in sorted(hidden):
            ids = {r["doc_id"] for r in negs.get(q, [])}
            hits = len(ids & hidden[q])
            per_query.append({"query_id": q, "hidden": len(hidden[q]), "negatives": len(ids), "false_negatives": hits})
            fn_num.append(hits)
            neg_den.append(len(ids))
            hid_den.append(len(hidden[q]))
        fnum, nden, hden = (np.array(x, dtype=float) for x in (fn_num, neg_den, hid_den))
        out["false_negatives"] = {
            "held_out_positives": int(hden.sum()), "queries_with_held_out": len(hidden),
            "false_negatives": int(fnum.sum()), "negatives_of_those_queries": int(nden.sum()),
            "rate_among_negatives": float(fnum.sum() / nden.sum()) if nden.sum() else float("nan"),
            "rate_among_negatives_ci95": bootstrap_ci(fnum, nden),
            "share_of_held_out_mined_as_negatives": float(fnum.sum() / hden.sum()) if hden.sum() else float("nan"),
            "share_ci95": bootstrap_ci(fnum, hden),
            "queries_with_a_false_negative": int((fnum > 0).sum()),
            "per_query": per_query}
    # (c) hardness: ranks, scores, and the gap to the query's weakest positive (on the filters' scale)
    ranks = np.array([r["rank"] if r["rank"] is not None else np.nan for r in neg], dtype=float)
    scores = np.array([r["filter_score"] if r["filter_score"] is not None else np.nan for r in neg], dtype=float)
    gaps = np.full(len(neg), np.nan)
    src = stages.get("score") if run.get("score_source") == "teacher" else stages["retrieve"]
    if src is not None and (src / schema.POSITIVE_SCORES_FILE).is_file():
        pos = read_parquet(src / schema.POSITIVE_SCORES_FILE, columns=["query_id", "teacher_score"])
        weakest: dict[str, float] = {}
        for q, s in zip(pos["query_id"].to_pylist(), pos["teacher_score"].to_pylist()):
            weakest[q] = min(s, weakest.get(q, s))
        gaps = np.array([weakest.get(r["query_id"], np.nan) for r in neg], dtype=float) - scores
    out["hardness"] = {"score_type": run.get("score_type"), "negatives": len(neg), "rank": _stats(ranks),
                       "score": _stats(scores), "gap_weakest_positive_minus_negative": _stats(gaps)}
    if eci_model is not None:
        out["eci"] = eci_of_run(stages, eci_model)
    return out


def evaluate_run(run: Path, *, qrels: Path | None = None, holdout_frac: float = 0.0,
                 overrides: list[str] | None = None, cache_dir: Path | None = None,
                 on_stage: Callable[[Any], None] | None = None,
                 eci_model: str | None = "") -> tuple[Path, dict[str, Any]]:
    """Evaluate a run: an output folder, or a config that is mined first. With `holdout_frac` the config is mined
    with that fraction of each multi-positive query's positives hidden, into `<export dir>-holdout<F>` (never over
    the config's own outputs). Returns the folder evaluated and the result."""
    folder = Path(run)
    if folder.is_file():
        from negmine.config import load_config, parse_override
        from negmine.pipeline import mine

        items = {f"{section}.{key}": value for section, key, value in map(parse_override, overrides or [])}
        items["export.hub_repo"] = None  # evaluating publishes nothing: a held-out run must never reach the Hub
        cfg = load_config(folder, items)
        if holdout_frac:  # values, not TOML text: any path works, quotes included
            items.update({"input.holdout_frac": holdout_frac,
                          "export.dir": f"{cfg['export']['dir']}-holdout{holdout_frac:g}"})
            cfg = load_config(folder, items)
        mine(cfg, cache_dir=cache_dir, on_stage=on_stage)
        folder = Path(cfg["export"]["dir"])
    elif holdout_frac or overrides:
        raise NegmineError("--holdout-frac and --set need a config to mine with; give the config, not a folder")
    min_score = 1
    prov = folder / "provenance.json"
    if prov.is_file():
        min_score = json.loads(prov.read_text())["config"]["input"]["min_positive_score"]
    return folder, evaluate(folder, read_qrels(qrels, min_score) if qrels else None, eci_model)


def table(result: dict[str, Any]) -> str:
    r = result["candidate_recall"]
    lines = [f"queries: {result['queries']}",
             f"candidate recall: {r['retrieved']}/{r['positives']} = {r['recall']:.3f} "
             f"(95% CI {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f})"]
    fn = result.get("false_negatives")
    if fn:
        lines += [f"held-out positives: {fn['held_out_positives']} over {fn['queries_with_held_out']} queries",
                  f"false negatives: {fn['false_negatives']} of {fn['negatives_of_those_queries']} negatives = "
                  f"{fn['rate_among_negatives']:.3f} (95% CI {fn['rate_among_negatives_ci95'][0]:.3f}-"
                  f"{fn['rate_among_negatives_ci95'][1]:.3f}); {fn['share_of_held_out_mined_as_negatives']:.3f} "
                  f"of held-out positives were mined as negatives; {fn['queries_with_a_false_negative']} queries "
                  "have at least one"]
    h = result["hardness"]
    for name in ("rank", "score", "gap_weakest_positive_minus_negative"):
        d = h[name]
        if d.get("count"):
            lines.append(f"{name.replace('_', ' ')} ({h['score_type'] if name != 'rank' else 'raw rank'}): "
                         f"mean {d['mean']:.4g}, median {d['median']:.4g}, p10 {d['p10']:.4g}, p90 {d['p90']:.4g}")
    e = result.get("eci")
    if e:
        from negmine.eci import fmt

        lines.append(f"ECI ({e['model']}, frozen): {fmt(e['eci'], 4)} over {e['queries']} queries; hardness "
                     f"{fmt(e['hardness_mean'])}, safety {fmt(e['safety_mean'])}, {e['unsafe_negatives']} of "
                     f"{e['negatives']} negatives at or above their best positive")
    return "\n".join(lines)
