"""Pair and triplet files (JSONL, Parquet, CSV with text columns), FlagEmbedding JSONL, and extra corpus files.

Texts have no ids here, so each gets a stable one from its content (identical texts share it). A query found in
several rows has several positives. A triplet's negative joins the corpus as a document, not as a judgment.
FlagEmbedding layout: {"query": str, "pos": [str], "neg": [str]} (Xiao et al., C-Pack / BGE, 2023).
"""
from __future__ import annotations

import csv
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from negmine.errors import InputError
from negmine.ingest.collect import Loc, Problems, TableBuilder, get_str, read_jsonl


def read_records(path: Path, problems: Problems) -> Iterator[tuple[Loc, dict]]:
    """Records of a JSONL, Parquet or CSV file, each with its location (line, or row for Parquet)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        yield from read_jsonl(path, problems)
    elif suffix == ".parquet":
        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise InputError(path, f"not a readable Parquet file ({exc})", "check that the file is Parquet") from None
        row = 0
        for batch in pf.iter_batches(batch_size=10_000):
            for rec in batch.to_pylist():
                row += 1
                yield Loc(path, row, "row"), rec
    elif suffix in (".csv", ".tsv"):
        csv.field_size_limit(sys.maxsize)
        with open(path, encoding="utf-8-sig", newline="") as fh:  # -sig: drop an Excel byte-order mark
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            try:
                for rec in reader:
                    if None in rec:
                        problems(Loc(path, reader.line_num), "malformed", "more fields than the header names",
                                 "quote fields that contain the delimiter")
                        continue
                    yield Loc(path, reader.line_num), rec
            except UnicodeDecodeError:
                raise InputError(path, "not UTF-8 text", "re-encode the file as UTF-8") from None
            except csv.Error as exc:
                raise InputError(path, f"malformed CSV ({exc})", "fix the quoting", reader.line_num) from None
    else:
        raise InputError(path, f"unknown file type {suffix!r}", "use .jsonl, .parquet or .csv")


def _columns(path: Path) -> list[str] | None:
    """Column names of a Parquet or CSV file (None for JSONL, whose records may differ)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            return pq.read_schema(path).names
        except Exception as exc:
            raise InputError(path, f"not a readable Parquet file ({exc})", "check that the file is Parquet") from None
    if suffix in (".csv", ".tsv"):
        try:
            with open(path, encoding="utf-8-sig", newline="") as fh:
                header = next(csv.reader(fh, delimiter="\t" if suffix == ".tsv" else ","), None)
        except UnicodeDecodeError:
            raise InputError(path, "not UTF-8 text", "re-encode the file as UTF-8") from None
        except csv.Error as exc:
            raise InputError(path, f"malformed CSV header ({exc})", "fix the quoting", 1) from None
        if header is None:
            raise InputError(path, "the file is empty", "give a file with a header line and one record per line")
        return header
    return None


def _require_columns(path: Path, wanted: list[str]) -> None:
    cols = _columns(path)
    if cols is None:
        return
    missing = [c for c in wanted if c not in cols]
    if missing:
        raise InputError(path, f"no column {missing[0]!r} (columns: {', '.join(cols)})",
                         "name the column with [input] query_column / positive_column / corpus_text_column")


def read_corpus_file(path: Path, builder: TableBuilder, problems: Problems, text_col: str, title_col: str) -> None:
    """An extra corpus: documents that are no query's positive. `_id`/`id`/`doc_id` columns are kept as ids."""
    _require_columns(path, [text_col])
    for loc, rec in read_records(path, problems):
        doc_id = None
        seen = problems.total
        for key in ("_id", "doc_id", "id"):
            if rec.get(key) not in (None, ""):
                doc_id = get_str(rec, key, loc, problems)
                break
        title = get_str(rec, title_col, loc, problems, required=False, allow_empty=True) or ""
        text = get_str(rec, text_col, loc, problems)
        if text is not None and problems.total == seen:  # a skipped record is dropped whole
            builder.add_doc(doc_id, title, text, loc)


@dataclass(frozen=True)
class PairColumns:
    """Which column holds what in a pair input ([input] *_column settings). None: the default when present
    (query: "query", else "anchor"; negative: "negative"; ids: "query_id", "positive_id", "negative_id")."""

    query: str | None
    positive: str
    negative: str | None = None
    query_id: str | None = None
    positive_id: str | None = None
    negative_id: str | None = None
    known: bool = False  # resolved against the input's column names (False: JSONL, record by record)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> PairColumns:
        return cls(params["query_column"], params["positive_column"], params["negative_column"],
                   params["query_id_column"], params["positive_id_column"], params["negative_id_column"])

    def resolve(self, cols: list[str] | None, source: Path) -> PairColumns:
        """The columns to read, given the input's column names (None: JSONL, decided record by record). A named
        column that is missing stops the run with one line listing the columns there are."""
        if cols is None:
            return self
        query = self.query or ("query" if "query" in cols else "anchor")
        wanted = [query, self.positive] + [c for c in (self.negative, self.query_id, self.positive_id,
                                                        self.negative_id) if c]
        missing = [c for c in wanted if c not in cols]
        if missing:
            what = "no column 'query' or 'anchor'" if self.query is None and missing[0] == query else \
                f"no column {missing[0]!r}"
            raise InputError(source, f"{what} (columns: {', '.join(cols)})",
                             "name the column with [input] query_column / positive_column / negative_column / "
                             "*_id_column")

        def auto(given: str | None, default: str) -> str | None:
            return given or (default if default in cols else None)

        return PairColumns(query, self.positive, auto(self.negative, "negative"), auto(self.query_id, "query_id"),
                           auto(self.positive_id, "positive_id"), auto(self.negative_id, "negative_id"), True)


def read_pairs(path: Path, builder: TableBuilder, problems: Problems, columns: PairColumns) -> None:
    """One pair file (JSONL, Parquet or CSV)."""
    add_pairs(read_records(path, problems), columns.resolve(_columns(path), path), builder, problems)


def _record_id(rec: dict, col: str | None, loc: Loc, problems: Problems) -> tuple[bool, str | None]:
    """(ok, id) of a record's id column; no column: (True, None), so the text's hash is the id."""
    if col is None:
        return True, None
    seen = problems.total
    value = get_str(rec, col, loc, problems)
    return problems.total == seen and value is not None, value


def add_pairs(records: Iterable[tuple[Loc, dict]], cols: PairColumns, builder: TableBuilder,
              problems: Problems) -> None:
    """Pair records into the tables: a (query, positive) judgment each, a negative as a plain document. Ids come
    from the id columns when there are any, else from the texts (identical texts share one)."""
    for loc, rec in records:
        qcol = cols.query or ("query" if "query" in rec or "anchor" not in rec else "anchor")
        query = get_str(rec, qcol, loc, problems)
        positive = get_str(rec, cols.positive, loc, problems) if query is not None else None
        if query is None or positive is None:
            continue
        ncol = cols.negative or ("negative" if "negative" in rec else None)
        seen = problems.total
        negative = get_str(rec, ncol, loc, problems, required=cols.negative is not None) if ncol else None
        ok_q, qid = _record_id(rec, cols.query_id or _present(rec, "query_id", cols), loc, problems)
        ok_p, pid = _record_id(rec, cols.positive_id or _present(rec, "positive_id", cols), loc, problems)
        ok_n, nid = _record_id(rec, (cols.negative_id or _present(rec, "negative_id", cols))
                               if negative is not None else None, loc, problems)
        if problems.total > seen or not (ok_q and ok_p and ok_n):  # a skipped record is dropped whole
            continue
        qid = builder.add_query(qid, query, loc)
        did = builder.add_doc(pid, "", positive, loc)
        if qid is not None and did is not None:
            builder.add_qrel(qid, did, 1)
        if negative is not None:
            builder.add_doc(nid, "", negative, loc)


def _present(rec: dict, name: str, cols: PairColumns) -> str | None:
    """A default id column found in a record of an input whose columns were not known up front (JSONL)."""
    return name if not cols.known and rec.get(name) not in (None, "") else None


def _str_list(rec: dict, key: str, loc: Loc, problems: Problems, required: bool) -> list[str] | None:
    value = rec.get(key)
    if value is None:
        if required:
            problems(loc, "missing_field", f"missing field {key!r}", f"add {key!r} as a list of texts")
        return [] if not required else None
    if isinstance(value, str):
        problems(loc, "wrong_type", f"{key!r} is a string, not a list",
                 f'wrap it in a list: "{key}": ["..."]')
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems(loc, "wrong_type", f"{key!r} must be a list of strings", f'write "{key}": ["text", ...]')
        return None
    if any(not v.strip() for v in value):
        problems(loc, "empty_text", f"{key!r} holds an empty text", "remove the empty entry")
        return None
    if required and not value:
        problems(loc, "empty_text", f"{key!r} is an empty list", "give at least one positive text")
        return None
    return value


def read_flagembedding(path: Path, builder: TableBuilder, problems: Problems) -> None:
    for loc, rec in read_jsonl(path, problems):
        query = get_str(rec, "query", loc, problems)
        if query is None:
            continue
        pos = _str_list(rec, "pos", loc, problems, required=True)
        neg = _str_list(rec, "neg", loc, problems, required=False)
        if pos is None or neg is None:
            continue
        qid = builder.add_query(None, query, loc)
        if qid is None:
            continue
        for text in pos:
            did = builder.add_doc(None, "", text, loc)
            if did is not None:
                builder.add_qrel(qid, did, 1)
        for text in neg:
            builder.add_doc(None, "", text, loc)


def sniff_jsonl(path: Path) -> str:
    """'flagembedding' when the first parseable record has `pos` (or `neg` and no `positive`), else 'pairs'."""
    import json

    seen_bad = False
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.strip():
                try:
                    obj = json.loads(raw)
                except ValueError:
                    seen_bad = True  # the reader reports the bad line with its number; look further
                    continue
                if isinstance(obj, dict) and ("pos" in obj or ("neg" in obj and "positive" not in obj)):
                    return "flagembedding"  # a first record lacking `pos` is then reported as such
                return "pairs"
    if seen_bad:
        return "pairs"
    raise InputError(path, "the file is empty", "give a file with one JSON record per line")
