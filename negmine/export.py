"""Export stage: mined negatives as the files trainers read, in Parquet, JSONL and a Hugging Face `DatasetDict`
saved to disk (formats: `negmine.formats`; the DatasetDict: `negmine.hf_dict`).

Provenance (version, every parameter, input fingerprints, stage keys) goes into each Parquet file's metadata and
into provenance.json. Writers stream query chunk by query chunk.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from json.encoder import encode_basestring  # the C escaper json uses without ensure_ascii
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from negmine import report, schema, tables
from negmine import hf_dict as hf_out
from negmine.formats import FORMATS, Options, QueryRecord, Tables, empty_rows
from negmine.io import read_parquet
from negmine.progress import bar
from negmine.stage import Config, Context, Inputs, Params, Stage, thaw

VERSION = "7"  # bumped when the stage's output changes; 6: report.html and the reports' examples; 7: scores.svg


def _query_groups(negatives_path: Path) -> Iterator[list[tuple[str, dict[str, list]]]]:
    """Chunks of (query id, its negative rows), in the order sampling wrote them."""
    pf = pq.ParquetFile(negatives_path)
    for g in range(pf.num_row_groups):
        t = pf.read_row_group(g)
        if t.num_rows == 0:
            continue
        qids = t["query_id"].to_numpy(zero_copy_only=False)
        cols = {n: t[n].to_pylist() for n in ("doc_id", "doc_idx", "rank", "score", "teacher_score",
                                               "filter_score", "retriever")}
        bounds = [0] + (np.flatnonzero(qids[1:] != qids[:-1]) + 1).tolist() + [len(qids)]
        yield [(str(qids[a]), {n: v[a:b] for n, v in cols.items()}) for a, b in zip(bounds[:-1], bounds[1:])]


# json.dumps(..., ensure_ascii=False) builds a new encoder per call; one encoder writes the same bytes
_JSON = json.JSONEncoder(ensure_ascii=False)


def _json_float(v: float) -> str:
    if v != v:
        return "NaN"
    if v in (math.inf, -math.inf):
        return "Infinity" if v > 0 else "-Infinity"
    return float.__repr__(v)


_SCALAR = {str: encode_basestring, int: int.__repr__, float: _json_float, bool: lambda v: "true" if v else "false",
           type(None): lambda v: "null"}


def _json_column(values: list, memo: dict[str, str]) -> list[str]:
    """Each value as `_JSON` encodes it. A query's text repeats on each of its rows (triplets) and a document's in
    every format, so each distinct text is escaped once (`memo`: a chunk's escaped texts)."""

    def one(v: Any) -> str:
        if type(v) is str:
            enc = memo.get(v)
            if enc is None:
                enc = memo[v] = encode_basestring(v)
            return enc
        scalar = _SCALAR.get(type(v))
        if scalar is not None:
            return scalar(v)
        if type(v) is list:  # a row's negatives' texts, ids or scores
            return "[" + ", ".join([one(x) for x in v]) + "]"
        return _JSON.encode(v)

    return [one(v) for v in values]


def _jsonl(rows: dict[str, list], memo: dict[str, str] | None = None) -> str:
    """JSON Lines of column lists, byte for byte what `_JSON.encode(row) + "\\n"` writes for each row."""
    line = "{" + ", ".join(encode_basestring(name).replace("%", "%%") + ": %s" for name in rows) + "}\n"
    memo = {} if memo is None else memo
    return "".join([line % values for values in zip(*(_json_column(v, memo) for v in rows.values()))])


class _Sink:
    """One output table (Parquet, JSONL, or one split of the hf DatasetDict), written under a temporary name.

    A Parquet sink encodes and compresses its row groups on `writer_thread` (pyarrow releases the GIL there), so
    that work overlaps the JSONL encoding, which holds the GIL; one write of a sink is in flight at a time, in
    order, so memory holds at most one pending chunk a sink and the file is the one a direct write makes.
    """

    def __init__(self, path: Path, schema: pa.Schema, metadata: dict[bytes, bytes], kind: str,
                 writer_thread: ThreadPoolExecutor | None = None) -> None:
        self.path, self.kind, self.rows = path, kind, 0
        self.thread, self.pending = (writer_thread if kind == "parquet" else None), None
        if kind == "hf":
            self.schema = schema.with_metadata({**metadata, **hf_out.arrow_metadata(schema)})
            path.mkdir(parents=True)
            self.writer = pa.ipc.new_stream(str(path / hf_out.DATA_FILE), self.schema)
        elif kind == "parquet":
            self.schema = schema.with_metadata(metadata)
            self.writer = pq.ParquetWriter(path, self.schema)
        else:
            self.schema = schema
            self.fh = open(path, "w", encoding="utf-8")

    def write(self, rows: dict[str, list], memo: dict[str, str] | None = None) -> None:
        n = len(next(iter(rows.values()))) if rows else 0
        if n == 0:
            return
        self.rows += n
        if self.kind == "jsonl":
            self.fh.write(_jsonl(rows, memo))
            return
        table = pa.table(rows, schema=self.schema)
        self._wait()
        if self.thread is None:
            self.writer.write_table(table)
        else:
            self.pending = self.thread.submit(self.writer.write_table, table)

    def _wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()  # a failed write raises here, in the export's own thread

    def close(self) -> None:
        if self.kind == "jsonl":
            self.fh.close()
            return
        try:
            self._wait()
        finally:
            self.writer.close()
        if self.kind == "hf":
            hf_out.finish_split(self.path, self.schema)


def _table_path(out_dir: Path, fmt: str, part: str, file_type: str) -> Path:
    """`<format>[-<companion>].<file type>`; the hf file type: that table's split folder in `hf/`."""
    if file_type == "hf":
        return out_dir / hf_out.FOLDER / hf_out.split_name(fmt, part)
    return out_dir / f"{fmt}{'-' + part if part else ''}.{file_type}"


def _scores_by_pair(path: Path | None) -> dict[tuple[str, str], float]:
    if path is None:
        return {}
    t = read_parquet(path, columns=["query_id", "doc_id", "teacher_score"])
    return dict(zip(zip(t["query_id"].to_pylist(), t["doc_id"].to_pylist()), t["teacher_score"].to_pylist()))


def _only_positives(rec: QueryRecord, keep: list[int]) -> QueryRecord | None:
    """The record with only the positives at `keep` (None when none is left)."""
    if not keep:
        return None

    def pick(values: list | None) -> list | None:
        return None if values is None else [values[i] for i in keep]

    return QueryRecord(rec.qid, rec.text, pick(rec.pos_ids), pick(rec.pos_titles), pick(rec.pos_bodies),
                       pick(rec.pos_texts), pick(rec.pos_teacher), pick(rec.pos_scores), rec.neg, rec.neg_titles,
                       rec.neg_bodies, rec.neg_texts, rec.cluster)


def export(params: Mapping[str, Any], ingest_dir: Path, negatives_path: Path, provenance: dict[str, Any],
           out_dir: Path, teacher_positives: Path | None = None, source_positives: Path | None = None,
           relabeled: Path | None = None, clusters: Path | None = None,
           negative_teachers: Path | None = None, texts: tables.Texts | None = None) -> dict[str, Any]:
    """Write every configured format. `teacher_positives` / `source_positives` hold the positives' teacher
    scores and the scores on the filters' scale (teacher's or retriever's; None for fused RRF scores);
    `relabeled`, candidates a judge made positives (negmine.judge), joins every format's positives; `clusters`,
    each query's topic cluster (negmine.cluster): a `cluster_id` in the audit layout and the clustered layouts
    (negmine.formats.clustered); `negative_teachers`, which teacher of an ensemble gave each negative
    (negmine.samplers.ensemble); `texts`, an open text store of the ingest entry (one is made and dropped here
    if not given)."""
    if texts is not None:
        return _export(texts, params, ingest_dir, negatives_path, provenance, out_dir, teacher_positives,
                       source_positives, relabeled, clusters, negative_teachers)
    with tables.Texts(ingest_dir) as own:
        return _export(own, params, ingest_dir, negatives_path, provenance, out_dir, teacher_positives,
                       source_positives, relabeled, clusters, negative_teachers)


def _add_relabeled(path: Path | None, positives: dict[str, tuple[list[str], list[int]]],
                   teacher: dict[tuple[str, str], float], source: dict[tuple[str, str], float]) -> int:
    """Append a judge's relabelled candidates to their queries' positives (after the known ones), with their
    scores; returns how many."""
    if path is None:
        return 0
    t = read_parquet(path)
    for q, d, i, ts, fs in zip(*(t[n].to_pylist() for n in ("query_id", "doc_id", "doc_idx", "teacher_score",
                                                              "filter_score"))):
        ids, idx = positives[q]
        if d not in ids:
            ids.append(d)
            idx.append(i)
            teacher[(q, d)] = ts
            if source:
                source[(q, d)] = fs
    return t.num_rows


def _export(texts: tables.Texts, params: Mapping[str, Any], ingest_dir: Path, negatives_path: Path,
            provenance: dict[str, Any], out_dir: Path, teacher_positives: Path | None,
            source_positives: Path | None, relabeled: Path | None = None,
            clusters_path: Path | None = None, negative_teachers: Path | None = None) -> dict[str, Any]:
    positives = tables.positives_by_query(ingest_dir)
    query_ids = tables.mined_query_ids(ingest_dir)
    teacher, source = _scores_by_pair(teacher_positives), _scores_by_pair(source_positives)
    n_relabeled = _add_relabeled(relabeled, positives, teacher, source)
    clusters: dict[str, int] = {}
    if clusters_path is not None:
        ct = read_parquet(clusters_path)
        clusters = dict(zip(ct["query_id"].to_pylist(), ct["cluster_id"].to_pylist()))
    opts = Options(params["num_negatives"], teacher_positives is not None, params["scores"], params["score_type"],
                   clusters_path is not None, ensemble=negative_teachers is not None)
    given_by: dict[tuple[str, str], str] = {}
    if negative_teachers is not None:
        t = read_parquet(negative_teachers, columns=["query_id", "doc_id", "teacher"])
        given_by = dict(zip(zip(t["query_id"].to_pylist(), t["doc_id"].to_pylist()), t["teacher"].to_pylist()))
    formats = {fmt: FORMATS[fmt] for fmt in params["formats"]}
    # every table a format writes: its main one ("") and its companions, each in every file type
    schemas: dict[tuple[str, str], pa.Schema] = {}
    for fmt, f in formats.items():
        schemas[(fmt, "")] = f.schema(opts)
        schemas.update({(fmt, part): sch for part, sch in (f.companions(opts) if f.companions else {}).items()})
    metadata = {b"negmine": json.dumps(provenance, sort_keys=True).encode("utf-8")}
    writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="negmine-parquet")
    sinks = {(fmt, part, ft): _Sink(_table_path(out_dir, fmt, part, ft), sch, metadata, ft, writer_thread)
             for (fmt, part), sch in schemas.items() for ft in params["file_types"]}
    seen: dict[str, dict[str, set[str]]] = {fmt: {} for fmt in formats}

    def new_batch() -> dict[str, Any]:
        return {fmt: Tables(empty_rows(schemas[(fmt, "")]),
                            {part: empty_rows(sch) for (g, part), sch in schemas.items() if g == fmt and part},
                            seen[fmt]) if f.companions else empty_rows(schemas[(fmt, "")])
                for fmt, f in formats.items()}

    def write(batch: dict[str, Any]) -> None:
        memo: dict[str, str] = {}  # the chunk's texts escaped for JSON once, whatever format repeats them
        for (fmt, part, _), sink in sinks.items():
            rows = batch[fmt]
            sink.write((rows.companions[part] if part else rows.main) if isinstance(rows, Tables) else rows, memo)

    skipped: dict[str, int] = {}
    written: set[str] = set()
    seen_pairs: set[tuple[str, str]] = set()
    repeated: dict[str, int] = {}

    def lookup(groups: list[tuple[str, dict[str, list]]]) -> dict[int, tuple[str, str]]:
        """(title, text) of every corpus row a chunk's records name, read in one batch: export costs grow with
        the rows written, not with queries x corpus."""
        rows = sorted({i for qid, neg in groups for i in (*positives[qid][1], *neg["doc_idx"])})
        return dict(zip(rows, zip(*texts.parts(rows)))) if rows else {}

    def record(qid: str, neg: dict[str, list], found: dict[int, tuple[str, str]]) -> QueryRecord:
        pos_ids, pos_idx = positives[qid]
        if opts.ensemble:
            neg = {**neg, "teacher": [given_by.get((qid, d)) for d in neg["doc_id"]]}
        pt, pb = [found[i][0] for i in pos_idx], [found[i][1] for i in pos_idx]
        nt, nb = [found[i][0] for i in neg["doc_idx"]], [found[i][1] for i in neg["doc_idx"]]
        return QueryRecord(qid, texts.queries[qid], pos_ids, pt, pb, texts.join(pt, pb),
                           [teacher[(qid, d)] for d in pos_ids] if opts.teacher else None,
                           [source[(qid, d)] for d in pos_ids] if source else None,
                           neg, nt, nb, texts.join(nt, nb), clusters.get(qid))

    try:
        for chunk in bar(_query_groups(negatives_path), desc="export", unit="chunk"):
            batch = new_batch()
            found = lookup(chunk)
            for qid, neg in chunk:
                written.add(qid)
                rec = record(qid, neg, found)
                # ids that share a query text are one question (their positives are pooled at exclusion): a
                # (text, positive) pair already written under another id would only repeat training rows
                fresh = [i for i, d in enumerate(rec.pos_ids) if (rec.text, d) not in seen_pairs]
                seen_pairs.update((rec.text, d) for d in rec.pos_ids)
                text_rec = rec if len(fresh) == len(rec.pos_ids) else _only_positives(rec, fresh)
                for fmt, f in formats.items():
                    if f.every_query:
                        f.rows(rec, opts, batch[fmt], skipped)
                    elif text_rec is None:
                        repeated[fmt] = repeated.get(fmt, 0) + 1
                    else:
                        f.rows(text_rec, opts, batch[fmt], skipped)
            write(batch)
        # queries whose sampling gave no negative: every-query formats list them with empty lists, others skip them
        empty = {n: [] for n in ("doc_id", "doc_idx", "rank", "score", "teacher_score", "filter_score",
                                 "retriever")}
        batch = new_batch()
        left = [(qid, empty) for qid in query_ids.to_pylist() if qid not in written and qid in positives]
        for a in range(0, len(left), 4096):
            part = left[a:a + 4096]
            found = lookup(part)
            for qid, neg in part:
                rec = record(qid, neg, found)
                for fmt, f in formats.items():
                    if f.every_query:
                        f.rows(rec, opts, batch[fmt], skipped)
                    else:
                        skipped[fmt] = skipped.get(fmt, 0) + 1
        write(batch)
    finally:
        try:
            for sink in sinks.values():
                sink.close()
        finally:
            writer_thread.shutdown(wait=True)
    if "hf" in params["file_types"]:
        hf_out.finish_dict(out_dir / hf_out.FOLDER, [hf_out.split_name(fmt, part) for fmt, part in schemas])
    files = {sink.path.relative_to(out_dir).as_posix(): sink.rows for sink in sinks.values()}
    stats = {"files": files, "queries_with_negatives": len(written), "queries_left_out": skipped,
             "repeated_queries_written_once": repeated}
    if clusters_path is not None:
        from negmine.formats import clustered

        negs = {qid: neg for chunk in _query_groups(negatives_path) for qid, neg in chunk}
        layout = {f: schemas[(f, "")] for f in clustered.clustered_formats(formats)}
        stats["clustered_rows"] = clustered.write(
            out_dir, layout, opts, layout, clusters, negs, query_ids.to_pylist(), lookup, record,
            lambda path, sch, kind: _Sink(path, sch, metadata, kind), hf_out.finish_dict)
    if relabeled is not None:
        stats["relabeled_positives"] = n_relabeled
    return stats


def _reads(cfg: Config) -> tuple[str, ...]:
    from negmine.config import judge_stage

    judge = judge_stage(cfg)
    return ("ingest", "retrieve") + (("score",) if cfg["score"]["teacher"] else ()) + ("exclude", "sample") + (
        (judge,) if judge else ()) + (("cluster",) if cfg["cluster"]["on"] else ())


def _params(cfg: Config, ctx: Context) -> dict[str, Any]:
    from negmine.config import score_source, score_type

    e = cfg["export"]
    return {"formats": e["formats"], "file_types": e["file_types"], "scores": e["scores"],
            "num_negatives": cfg["sample"]["num_negatives"], "teacher": bool(cfg["score"]["teacher"]),
            "score_source": score_source(cfg), "score_type": score_type(cfg), "provenance": ctx.provenance,
            "report_seed": cfg["sample"]["seed"]}  # draws the report's example queries


def _run(inputs: Inputs, params: Params, out_dir: Path) -> dict[str, Any]:
    from negmine.retrieve import positive_score_files

    ingest_dir = inputs["ingest"]
    teacher_pos, source_pos = positive_score_files(inputs, params)
    # an LLM judge (negmine.judge): after sampling its negatives are the ones exported; either way the candidates
    # it relabelled join the positives
    negatives = (inputs["judge"] if "judge" in inputs else inputs["sample"]) / schema.NEGATIVES_FILE
    judge = next((inputs[n] for n in ("judge", "judge-pool") if n in inputs), None)
    relabeled = judge / schema.RELABELED_FILE if judge is not None else None
    from negmine.formats.clustered import CLUSTERS_FILE

    clusters = inputs["cluster"] / CLUSTERS_FILE if "cluster" in inputs else None
    # every earlier stage's key: all are in this stage's key through the stages it reads
    prov = {**thaw(params["provenance"]), "stage_keys": {s: r.key for s, r in inputs.log.items()}}
    # an ensemble's sample stage names the teacher of each negative (negmine.samplers.ensemble)
    from negmine.teachers import NEGATIVE_TEACHERS_FILE

    given_by = inputs["sample"] / NEGATIVE_TEACHERS_FILE
    with tables.Texts(ingest_dir) as texts:  # one copy of the corpus's texts, for the rows and the examples
        stats = export(params, ingest_dir, negatives, prov, out_dir, teacher_pos, source_pos, relabeled, clusters,
                       given_by if given_by.is_file() else None, texts)
        _report(inputs, params, ingest_dir, negatives, source_pos, out_dir, prov, stats, texts)
    return stats


def _report(inputs: Inputs, params: Params, ingest_dir: Path, negatives: Path, source_pos: Path | None,
            out_dir: Path, prov: dict[str, Any], stats: dict[str, Any], texts: tables.Texts) -> None:
    (out_dir / "provenance.json").write_text(json.dumps(prov, indent=2, sort_keys=True) + "\n")
    log = {s: {"key": r.key, "status": r.status, "seconds": r.seconds, "stats": r.stats} for s, r in inputs.log.items()}
    rep = report.build(log, negatives, inputs["exclude"] / schema.EXCLUDED_FILE, source_pos, params["score_type"],
                       log["ingest"]["stats"]["positives"], stats)
    rep["negmine_version"] = prov["negmine_version"]
    # the examples: a seeded handful of mined queries, read from the entries this stage reads (their keys are in
    # its key), only those queries' rows
    from negmine.story import stories

    picked = report.pick_examples(tables.mined_query_ids(ingest_dir).to_pylist(), params["report_seed"])
    entries = {name: inputs[name] for name in inputs}
    examples = list(stories(entries, picked, params["score_type"], texts_of=texts.parts))
    rep["examples"] = [report.example_summary(st) for st in examples]
    report.write(rep, negatives, source_pos, out_dir, examples)


STAGE = Stage(
    name="export", version=VERSION, command="export", reads=_reads, params=_params, run=_run, section="export",
    # and <format>.<file type> each
    outputs=("provenance.json", "report.json", "report.md", "report.html", "scores.svg"),
    reads_log=True)  # the report says how this run's stages went (cached or computed, seconds)
