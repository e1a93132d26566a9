"""Export stage: mined negatives as the files trainers read, in Parquet and JSONL (formats: `negmine.formats`).

Provenance (version, every parameter, input fingerprints, stage keys) goes into each Parquet file's metadata and
into provenance.json. Writers stream query chunk by query chunk.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from negmine import report, schema, tables
from negmine.formats import FORMATS, Options, QueryRecord, empty_rows
from negmine.progress import bar
from negmine.stage import Config, Context, Inputs, Params, Stage, thaw

VERSION = "5"  # bumped when the stage's output changes; 5: the stage contract, the report written here


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


class _Sink:
    """One output file (Parquet or JSONL) of one format, written under a temporary name.

    A Parquet sink encodes and compresses its row groups on `writer_thread` (pyarrow releases the GIL there), so
    that work overlaps the JSONL encoding, which holds the GIL; one write of a sink is in flight at a time, in
    order, so memory holds at most one pending chunk a sink and the file is the one a direct write makes.
    """

    def __init__(self, path: Path, schema: pa.Schema, metadata: dict[bytes, bytes],
                 writer_thread: ThreadPoolExecutor | None = None) -> None:
        self.path, self.schema = path, schema.with_metadata(metadata)
        self.parquet = path.suffix == ".parquet"
        self.rows = 0
        self.thread, self.pending = writer_thread, None
        if self.parquet:
            self.writer = pq.ParquetWriter(path, self.schema)
        else:
            self.fh = open(path, "w", encoding="utf-8")

    def write(self, rows: dict[str, list]) -> None:
        n = len(next(iter(rows.values()))) if rows else 0
        if n == 0:
            return
        self.rows += n
        if self.parquet:
            table = pa.table(rows, schema=self.schema)
            self._wait()
            if self.thread is None:
                self.writer.write_table(table)
            else:
                self.pending = self.thread.submit(self.writer.write_table, table)
        else:
            names, encode = list(rows), _JSON.encode
            self.fh.writelines(encode(dict(zip(names, values))) + "\n" for values in zip(*(rows[k] for k in names)))

    def _wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()  # a failed write raises here, in the export's own thread

    def close(self) -> None:
        if self.parquet:
            try:
                self._wait()
            finally:
                self.writer.close()
        else:
            self.fh.close()


def _scores_by_pair(path: Path | None) -> dict[tuple[str, str], float]:
    if path is None:
        return {}
    t = pq.read_table(path, columns=["query_id", "doc_id", "teacher_score"])
    return dict(zip(zip(t["query_id"].to_pylist(), t["doc_id"].to_pylist()), t["teacher_score"].to_pylist()))


def _only_positives(rec: QueryRecord, keep: list[int]) -> QueryRecord | None:
    """The record with only the positives at `keep` (None when none is left)."""
    if not keep:
        return None

    def pick(values: list | None) -> list | None:
        return None if values is None else [values[i] for i in keep]

    return QueryRecord(rec.qid, rec.text, pick(rec.pos_ids), pick(rec.pos_titles), pick(rec.pos_bodies),
                       pick(rec.pos_texts), pick(rec.pos_teacher), pick(rec.pos_scores), rec.neg, rec.neg_titles,
                       rec.neg_bodies, rec.neg_texts)


def export(params: Mapping[str, Any], ingest_dir: Path, negatives_path: Path, provenance: dict[str, Any],
           out_dir: Path, teacher_positives: Path | None = None, source_positives: Path | None = None
           ) -> dict[str, Any]:
    """Write every configured format. `teacher_positives` / `source_positives` hold the positives' teacher
    scores and the scores on the filters' scale (teacher's or retriever's; None for fused RRF scores)."""
    with tables.Texts(ingest_dir) as texts:
        return _export(texts, params, ingest_dir, negatives_path, provenance, out_dir, teacher_positives,
                       source_positives)


def _export(texts: tables.Texts, params: Mapping[str, Any], ingest_dir: Path, negatives_path: Path,
            provenance: dict[str, Any], out_dir: Path, teacher_positives: Path | None,
            source_positives: Path | None) -> dict[str, Any]:
    positives = tables.positives_by_query(ingest_dir)
    query_ids = tables.mined_query_ids(ingest_dir)
    teacher, source = _scores_by_pair(teacher_positives), _scores_by_pair(source_positives)
    opts = Options(params["num_negatives"], teacher_positives is not None, params["scores"])
    formats = {fmt: FORMATS[fmt] for fmt in params["formats"]}
    schemas = {fmt: f.schema(opts) for fmt, f in formats.items()}
    metadata = {b"negmine": json.dumps(provenance, sort_keys=True).encode("utf-8")}
    writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="negmine-parquet")
    sinks = {(fmt, ft): _Sink(out_dir / f"{fmt}.{ft}", schemas[fmt], metadata, writer_thread)
             for fmt in formats for ft in params["file_types"]}
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
        pt, pb = [found[i][0] for i in pos_idx], [found[i][1] for i in pos_idx]
        nt, nb = [found[i][0] for i in neg["doc_idx"]], [found[i][1] for i in neg["doc_idx"]]
        return QueryRecord(qid, texts.queries[qid], pos_ids, pt, pb, texts.join(pt, pb),
                           [teacher[(qid, d)] for d in pos_ids] if opts.teacher else None,
                           [source[(qid, d)] for d in pos_ids] if source else None,
                           neg, nt, nb, texts.join(nt, nb))

    try:
        for chunk in bar(_query_groups(negatives_path), desc="export", unit="chunk"):
            batch = {fmt: empty_rows(schemas[fmt]) for fmt in formats}
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
            for (fmt, _), sink in sinks.items():
                sink.write(batch[fmt])
        # queries whose sampling gave no negative: every-query formats list them with empty lists, others skip them
        empty = {n: [] for n in ("doc_id", "doc_idx", "rank", "score", "teacher_score", "filter_score",
                                 "retriever")}
        batch = {fmt: empty_rows(schemas[fmt]) for fmt in formats}
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
        for (fmt, _), sink in sinks.items():
            sink.write(batch[fmt])
    finally:
        try:
            for sink in sinks.values():
                sink.close()
        finally:
            writer_thread.shutdown(wait=True)
    files = {sink.path.name: sink.rows for sink in sinks.values()}
    return {"files": files, "queries_with_negatives": len(written), "queries_left_out": skipped,
            "repeated_queries_written_once": repeated}


def _reads(cfg: Config) -> tuple[str, ...]:
    return ("ingest", "retrieve") + (("score",) if cfg["score"]["teacher"] else ()) + ("exclude", "sample")


def _params(cfg: Config, ctx: Context) -> dict[str, Any]:
    from negmine.config import score_source, score_type

    e = cfg["export"]
    return {"formats": e["formats"], "file_types": e["file_types"], "scores": e["scores"],
            "num_negatives": cfg["sample"]["num_negatives"], "teacher": bool(cfg["score"]["teacher"]),
            "score_source": score_source(cfg), "score_type": score_type(cfg), "provenance": ctx.provenance}


def _run(inputs: Inputs, params: Params, out_dir: Path) -> dict[str, Any]:
    from negmine.retrieve import positive_score_files

    ingest_dir = inputs["ingest"]
    teacher_pos, source_pos = positive_score_files(inputs, params)
    negatives = inputs["sample"] / schema.NEGATIVES_FILE
    # every earlier stage's key: all are in this stage's key through the stages it reads
    prov = {**thaw(params["provenance"]), "stage_keys": {s: r.key for s, r in inputs.log.items()}}
    stats = export(params, ingest_dir, negatives, prov, out_dir, teacher_pos, source_pos)
    (out_dir / "provenance.json").write_text(json.dumps(prov, indent=2, sort_keys=True) + "\n")
    log = {s: {"key": r.key, "status": r.status, "seconds": r.seconds, "stats": r.stats} for s, r in inputs.log.items()}
    rep = report.build(log, negatives, inputs["exclude"] / schema.EXCLUDED_FILE, source_pos, params["score_type"],
                       log["ingest"]["stats"]["positives"], stats)
    rep["negmine_version"] = prov["negmine_version"]
    report.write(rep, negatives, source_pos, out_dir)
    return stats


STAGE = Stage(
    name="export", version=VERSION, command="export", reads=_reads, params=_params, run=_run, section="export",
    outputs=("provenance.json", "report.json", "report.md", "scores.png"),  # and <format>.<file type> each
    reads_log=True)  # the report says how this run's stages went (cached or computed, seconds)
