"""What happened to every candidate of a query: the story behind `negmine inspect` and the report's examples.

Read from a run's stage entries (run.json names them), for a handful of queries only: the retrieved candidates
(ranks and every retriever's and the teacher's scores), the exclude stage's `excluded.parquet` (each removed row
with its `reason`: positive, query_text, duplicate_of_positive, or the filter that dropped it), `kept.parquet`
(each kept row's relax level) and the sample stage's negatives. The thresholds come from the stage entries'
`meta.json` (the parameters their keys were computed from), so a reason names the setting that caused it. Every
file is streamed batch by batch and only the asked queries' rows are kept: memory grows with those, not the run.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negmine import schema, tables
from negmine.errors import NegmineError

# what each exclusion means, in words
EXCLUDED = {"positive": "a known positive of the query",
            "query_text": "the query's own text",
            "duplicate_of_positive": "an exact duplicate of a positive (normalised text)"}


@dataclass
class Candidate:
    """One retrieved document of a query (or a pad-random filler) and what became of it."""

    doc_id: str
    doc_idx: int | None
    rank: int | None  # raw retrieval rank (1-based); None for a pad-random filler
    score: float | None  # the pool's score (the retriever's, or fused RRF)
    retriever: str | None
    retriever_scores: dict[str, tuple[int, float]] = field(default_factory=dict)  # name: (rank, score)
    teacher_score: float | None = None
    outcome: str = ""  # sampled | not sampled | excluded | removed
    reason: str = ""  # why, with the setting and threshold that decided it
    code: str = ""  # the reason in one word: positive, query_text, duplicate_of_positive, a filter's name
    # (perc-pos, skip_top, ...), sampled, pad-random, outside_window, query_dropped, not_drawn
    title: str = ""
    text: str = ""


@dataclass
class Positive:
    doc_id: str
    doc_idx: int
    grade: int
    rank: int | None  # where the retrieval ranked it; None: not retrieved
    retriever_score: float | None  # on the retriever's scale (None for a fused pool)
    teacher_score: float | None
    title: str = ""
    text: str = ""


@dataclass
class QueryStory:
    query_id: str
    text: str
    positives: list[Positive]
    candidates: list[Candidate]  # in rank order; pad-random fillers last
    score_type: str
    note: str = ""  # the query's shortage outcome, when it matters

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.candidates:
            out[c.outcome] = out.get(c.outcome, 0) + 1
        return out


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.4g}"


def _rows(path: Path, query_ids: pa.Array, columns: list[str] | None = None) -> pa.Table:
    """The rows of `query_ids` in a Parquet table, read batch by batch (memory: those rows and one batch)."""
    pf = pq.ParquetFile(path, pre_buffer=False)
    names = columns or pf.schema_arrow.names
    parts = [pa.Table.from_batches([b]).filter(pc.is_in(b["query_id"], value_set=query_ids))
             for b in pf.iter_batches(batch_size=65_536, columns=names)]
    return pa.concat_tables(parts) if parts else pf.schema_arrow.empty_table().select(names)


def doc_parts(ingest_dir: Path, idx: Iterable[int]) -> dict[int, tuple[str, str]]:
    """(title, text) of some corpus rows, reading only the row groups that hold them."""
    rows = sorted(set(int(i) for i in idx))
    if not rows:
        return {}
    pf = pq.ParquetFile(ingest_dir / tables.CORPUS, pre_buffer=False)
    starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
    out: dict[int, tuple[str, str]] = {}
    for g in range(pf.num_row_groups):
        inside = [r for r in rows if starts[g] <= r < starts[g + 1]]
        if inside:
            t = pf.read_row_group(g, columns=["title", "text"]).take(pa.array(np.array(inside) - starts[g]))
            out.update(zip(inside, zip(t["title"].to_pylist(), t["text"].to_pylist())))
    return out


def _meta(entry: Path) -> dict[str, Any]:
    try:
        return json.loads((entry / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise NegmineError(f"{entry / 'meta.json'}: unreadable ({exc}); run `negmine run` again to rebuild the "
                           "cache entry") from None


def _filter_reason(why: str, f: Mapping[str, Any], s: float | None, s_pos: float | None,
                   teacher: float | None, rank: int | None) -> str:
    """A filter's reason with the setting and threshold that decided it."""
    from negmine.filters import FILTERS

    if why in FILTERS:
        flt = FILTERS[why]
        return (f"filter {why} ({flt.help}; {flt.option} = {f[flt.option]}, positive_score = "
                f"{f['positive_score']}): s = {_fmt(s)}, s_pos = {_fmt(s_pos)}")
    if why == "skip_top":
        return f"skip_top = {f['skip_top']}: rank {rank} is among the first {f['skip_top']}"
    if why == "score_window":
        return f"score window [{f['min_score']}, {f['max_score']}]: s = {_fmt(s)}"
    if why == "ce_absolute":
        return f"ce_max_probability = {f['ce_max_probability']} (RocketQA keeps p < it): teacher = {_fmt(teacher)}"
    if why == "ce_relative":
        return (f"ce_margin = {f['ce_margin']} (drop if ce > weakest positive's ce - margin): "
                f"teacher = {_fmt(teacher)}")
    if why == "near_duplicate_minhash":
        return f"near-duplicate of a positive: MinHash Jaccard >= near_dup_jaccard = {f['near_dup_jaccard']}"
    if why == "near_duplicate_embedding":
        return f"near-duplicate of a positive: embedding cosine >= near_dup_cosine = {f['near_dup_cosine']}"
    return why


def _aggregate(values: list[float], how: str) -> float | None:
    v = [x for x in values if x is not None and np.isfinite(x)]
    if not v:
        return None
    return float(min(v) if how == "min" else max(v) if how == "max" else np.mean(np.asarray(v, np.float32)))


class Run:
    """A finished run's stage entries, from its output folder's run.json."""

    def __init__(self, folder: Path) -> None:
        path = folder / "run.json"
        if not path.is_file():
            raise NegmineError(f"{folder}: no run.json; give the output folder of a finished `negmine run` "
                               "(a --no-cache run keeps no stage entries to inspect)")
        try:
            run = json.loads(path.read_text())
            self.stages = {k: Path(v) for k, v in run["stages"].items()}
            self.score_type, self.score_source = run["score_type"], run["score_source"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise NegmineError(f"{path}: not a run.json written by negmine ({exc}); run `negmine run` again") \
                from None
        for name in ("ingest", "retrieve", "exclude", "sample"):
            entry = self.stages.get(name)
            if entry is None or not (entry / "meta.json").is_file():
                raise NegmineError(f"{path}: the {name} stage's cache entry {entry} is gone (cache cleared?); "
                                   "run `negmine run` again with the same config to rebuild it")

    def stories(self, query_ids: list[str]) -> Iterator[QueryStory]:
        return stories(self.stages, query_ids, self.score_type)


def stories(stages: Mapping[str, Path], query_ids: list[str], score_type: str, with_texts: bool = True,
            texts_of: Callable[[list[int]], tuple[list[str], list[str]]] | None = None) -> Iterator[QueryStory]:
    """Each asked query's story, in the order asked. `stages` maps stage names to their cache entries;
    `texts_of`, (titles, texts) of corpus rows from an open text store (`tables.Texts.parts`), else the rows
    are read from the corpus file."""
    ingest = stages["ingest"]
    teacher = "score" in stages
    filt = _meta(stages["exclude"])["params"]
    smp = _meta(stages["sample"])["params"]
    ids = pa.array(query_ids, pa.string())
    queries = _rows(ingest / tables.QUERIES, ids, ["query_id", "text"])
    qtext = dict(zip(queries["query_id"].to_pylist(), queries["text"].to_pylist()))
    unknown = [q for q in query_ids if q not in qtext]
    if unknown:
        raise NegmineError(f"query id {unknown[0]!r} is not in this run's queries ({ingest / tables.QUERIES}); "
                           "give an id from the input's queries")
    pos = _rows(ingest / tables.POSITIVES, ids)
    pos = pos.filter(pc.invert(pos["pooled"]))  # the query's own positives, as the exports list them
    cand = _rows((stages["score"] if teacher else stages["retrieve"]) / schema.CANDIDATES_FILE, ids)
    excl = _rows(stages["exclude"] / schema.EXCLUDED_FILE, ids, ["query_id", "doc_id", "reason"])
    kept = _rows(stages["exclude"] / schema.KEPT_FILE, ids, ["query_id", "doc_id", "relax_level"])
    neg = _rows(stages["sample"] / schema.NEGATIVES_FILE, ids)
    retr_pos = stages["retrieve"] / schema.POSITIVE_SCORES_FILE
    pos_scores = {"retriever": _pair_scores(retr_pos, ids) if retr_pos.is_file() else {},
                  "teacher": _pair_scores(stages["score"] / schema.POSITIVE_SCORES_FILE, ids) if teacher else {}}
    by_q = {name: _group(t) for name, t in (("cand", cand), ("excl", excl), ("kept", kept), ("neg", neg),
                                           ("pos", pos))}
    # a teacher ensemble's sampling names the teacher of each negative (negmine.samplers.ensemble)
    from negmine.teachers import NEGATIVE_TEACHERS_FILE

    given = stages["sample"] / NEGATIVE_TEACHERS_FILE
    if given.is_file():
        by_q["given"] = _group(_rows(given, ids, ["query_id", "doc_id", "teacher", "teacher_rank"]))
    # an LLM judge (after sampling, or on the pool before it): its verdicts decide what it removed or relabelled
    judge_name = next((n for n in ("judge", "judge-pool") if n in stages), None)
    judge = _meta(stages[judge_name])["params"] if judge_name else None
    if judge_name:
        by_q["verdict"] = _group(_rows(stages[judge_name] / schema.VERDICTS_FILE, ids,
                                       ["query_id", "doc_id", "verdict"]))
    texts: dict[int, tuple[str, str]] = {}
    if with_texts:
        wanted = [*pos["doc_idx"].to_pylist(), *cand["doc_idx"].to_pylist(), *neg["doc_idx"].to_pylist()]
        if texts_of is None:
            texts = doc_parts(ingest, wanted)
        else:
            rows = sorted(set(int(i) for i in wanted))
            texts = dict(zip(rows, zip(*texts_of(rows)))) if rows else {}
    for qid in query_ids:
        yield _story(qid, qtext[qid], {k: v.get(qid, []) for k, v in by_q.items()}, pos_scores, filt, smp,
                     score_type, texts, judge)


def _group(t: pa.Table) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in t.to_pylist():
        out.setdefault(row["query_id"], []).append(row)
    return out


def _pair_scores(path: Path, ids: pa.Array) -> dict[tuple[str, str], float]:
    t = _rows(path, ids, ["query_id", "doc_id", "teacher_score"])
    return dict(zip(zip(t["query_id"].to_pylist(), t["doc_id"].to_pylist()), t["teacher_score"].to_pylist()))


def _story(qid: str, text: str, rows: Mapping[str, list[dict[str, Any]]], pos_scores: Mapping[str, dict],
           filt: Mapping[str, Any], smp: Mapping[str, Any], score_type: str,
           texts: Mapping[int, tuple[str, str]], judge: Mapping[str, Any] | None = None) -> QueryStory:
    excluded = {r["doc_id"]: r["reason"] for r in rows["excl"]}
    verdict = {r["doc_id"]: r["verdict"] for r in rows.get("verdict", [])}
    level = {r["doc_id"]: r["relax_level"] for r in rows["kept"]}
    sampled = {r["doc_id"] for r in rows["neg"] if r["source"] == "sample"}
    given = {r["doc_id"]: (r["teacher"], r["teacher_rank"]) for r in rows.get("given", [])}
    lo, hi = smp["rank_min"], smp["rank_max"] or smp["top_k"]
    n, policy = smp["num_negatives"], smp["shortage"]
    in_window = [r for r in rows["cand"] if r["doc_id"] in level and lo <= r["rank"] <= hi]
    # the relax level the sample stage reached for this query (it loosens while fewer than n are eligible)
    used = 0
    if policy == "relax":
        steps = int(smp.get("relax_steps", 0))
        while used < steps and sum(level[r["doc_id"]] <= used for r in in_window) < n:
            used += 1
    eligible = sum(level[r["doc_id"]] <= used for r in in_window)
    dropped = policy == "drop" and not rows["neg"] and eligible < n
    teacher_col = filt["score_column"] == "teacher_score"
    source_scores = pos_scores["teacher" if teacher_col else "retriever"]
    s_pos = _aggregate([source_scores.get((qid, p["doc_id"])) for p in rows["pos"]], filt["positive_score"])
    method = filt["method"]
    cands: list[Candidate] = []
    ranks: dict[str, int] = {}
    for r in rows["cand"]:
        d = r["doc_id"]
        ranks[d] = r["rank"]
        c = Candidate(d, r["doc_idx"], r["rank"], r["score"], r["retriever"],
                      {name: (rk, sc) for name, rk, sc in zip(r["retrievers"] or [], r["retriever_ranks"] or [],
                                                              r["retriever_scores"] or [])},
                      r["teacher_score"])
        s = r["teacher_score"] if teacher_col else r["score"]
        if d in excluded:
            why = excluded[d]
            c.code = why
            if why in EXCLUDED:
                c.outcome, c.reason = "excluded", EXCLUDED[why]
            else:
                c.outcome, c.reason = "removed", _filter_reason(why, filt, s, s_pos, r["teacher_score"], r["rank"])
        elif judge and (verdict.get(d) == "false_negative"
                        or (verdict.get(d) == "no_verdict" and judge["on_no_verdict"] == "drop")):
            c.code = "judge"
            if verdict[d] == "no_verdict":
                c.outcome = "removed"
                c.reason = f"no verdict from the judge {judge['model']} (on_no_verdict = drop)"
            elif judge["on_false_negative"] == "relabel":
                c.outcome = "relabelled"
                c.reason = f"judged a false negative by {judge['model']}: relabelled as a positive"
            else:
                c.outcome = "removed"
                c.reason = f"judged a false negative by {judge['model']} (on_false_negative = drop)"
        elif d in sampled:
            c.outcome, c.code = "sampled", "sampled"
            c.reason = f"sampled by {smp['strategy']}" + (
                f" (filter {method} relaxed to level {level[d]})" if level.get(d, 0) > 0 else "")
            if d in given:  # an ensemble: which teacher gave it, at which place of its own ranking
                c.reason = (f"sampled by {smp['ensemble']}-sample ensembling: teacher {given[d][0]}'s "
                            f"#{given[d][1]}")
        elif d not in level:  # neither kept nor removed: the stages disagree with each other
            raise NegmineError(f"query {qid!r}: candidate {d!r} is neither kept nor excluded by the exclude stage; "
                               "the cache entries do not belong together: run `negmine run` again")
        elif level[d] > used:
            c.outcome, c.code = "removed", method
            c.reason = _filter_reason(method, filt, s, s_pos, r["teacher_score"], r["rank"]) + (
                f" (kept only if relaxed to level {level[d]})" if level[d] < 127 else "")
        elif not lo <= r["rank"] <= hi:
            c.outcome, c.code = "not sampled", "outside_window"
            c.reason = f"outside the rank window rank_min..rank_max = {lo}..{hi}"
        elif dropped:
            c.outcome, c.code = "not sampled", "query_dropped"
            c.reason = f"query dropped (shortage = drop: {eligible} eligible, num_negatives = {n})"
        else:
            c.outcome, c.code = "not sampled", "not_drawn"
            c.reason = f"eligible, not drawn by {smp['strategy']} ({len(sampled)} of {eligible} eligible taken)"
            if smp.get("agreement"):  # the teachers' scores are not among these entries: both are possible
                c.reason = (f"eligible, not taken ({len(sampled)} of {eligible} taken) or vetoed by the [ensemble] "
                            f"agreement filter (alpha {smp['agreement_alpha']:g})")
        c.title, c.text = texts.get(r["doc_idx"], ("", ""))
        cands.append(c)
    for r in rows["neg"]:
        if r["source"] == "pad-random":
            c = Candidate(r["doc_id"], r["doc_idx"], None, None, None, outcome="sampled", code="pad-random",
                          reason="pad-random filler (shortage = pad-random): a random document passing the exclusions")
            c.title, c.text = texts.get(r["doc_idx"], ("", ""))
            cands.append(c)
    positives = [Positive(p["doc_id"], p["doc_idx"], p["grade"], ranks.get(p["doc_id"]),
                          pos_scores["retriever"].get((qid, p["doc_id"])),
                          pos_scores["teacher"].get((qid, p["doc_id"])), *texts.get(p["doc_idx"], ("", "")))
                 for p in rows["pos"]]
    if not rows["pos"]:
        note = "not mined: the query has no positive in this input (split)"
    elif dropped:
        note = f"dropped: {eligible} eligible candidates, fewer than num_negatives = {n} (shortage = drop)"
    elif len(rows["neg"]) < n:
        note = f"short: {len(rows['neg'])} of num_negatives = {n} (shortage = {policy})"
    else:
        note = ""
    return QueryStory(qid, text, positives, cands, score_type, note)


def story_lines(st: QueryStory, width: int = 60) -> list[str]:
    """A plain-text rendering (`negmine inspect`): the query, its positives, then every candidate."""
    def short(title: str, text: str) -> str:
        s = " ".join(f"{title} {text}".split()) if title else " ".join(text.split())
        return s if len(s) <= width else s[:width - 1] + "…"

    lines = [f"query {st.query_id}: {short('', st.text)}"]
    if st.note:
        lines.append(f"  {st.note}")
    lines.append(f"positives ({len(st.positives)}):")
    for p in st.positives:
        lines.append(f"  {p.doc_id}  grade {p.grade}  rank {p.rank if p.rank is not None else 'not retrieved'}  "
                     f"retriever {_fmt(p.retriever_score)}  teacher {_fmt(p.teacher_score)}  "
                     f"{short(p.title, p.text)}")
    counts = ", ".join(f"{k} {v}" for k, v in sorted(st.counts().items()))
    lines.append(f"candidates ({len(st.candidates)}: {counts}); scores: {st.score_type}")
    for c in st.candidates:
        per = " ".join(f"{name} #{rk} {_fmt(sc)}" for name, (rk, sc) in c.retriever_scores.items())
        lines.append(f"  {c.rank if c.rank is not None else '-':>4}  {c.doc_id}  {c.outcome.upper()}: {c.reason}")
        lines.append(f"        score {_fmt(c.score)}  [{per or '-'}]  teacher {_fmt(c.teacher_score)}  "
                     f"{short(c.title, c.text)}")
    return lines
