"""Shared machinery of the readers: validation with locations, and the normalised tables they produce."""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import numpy as np

from negmine import schema, tables
from negmine.errors import InputError
from negmine.hashing import norm_hash, text_id
from negmine.tables import join_title

_BATCH = 50_000


@dataclass
class Loc:
    path: Path
    line: int | None = None
    where: str = "line"


@dataclass
class Problems:
    """Record-level problems: raised at once, or (with skip_invalid) counted and reported as warnings."""

    skip_invalid: bool
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def __call__(self, loc: Loc, kind: str, problem: str, fix: str) -> None:
        err = InputError(loc.path, problem, fix, loc.line, loc.where)
        if not self.skip_invalid:
            raise err
        self.counts[kind] += 1
        if len(self.examples) < 5:
            self.examples.append(str(err))

    @property
    def total(self) -> int:
        """Problems seen so far: a reader compares it before and after a record to drop the whole record."""
        return sum(self.counts.values())

    def summary(self) -> dict[str, Any]:
        return {"skipped": dict(self.counts), "skipped_total": sum(self.counts.values()),
                "examples": self.examples}


def read_jsonl(path: Path, problems: Problems) -> Iterator[tuple[Loc, dict]]:
    """Yield (location, object) for each non-blank line; a line that is not a JSON object is a problem."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise InputError(path, f"cannot open ({exc.strerror})", "check the path and its permissions") from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            loc = Loc(path, lineno)
            try:
                obj = json.loads(raw)
            except UnicodeDecodeError:
                problems(loc, "malformed", "not UTF-8 text", "re-encode the file as UTF-8")
                continue
            except json.JSONDecodeError as exc:
                problems(loc, "malformed", f"not valid JSON ({exc.msg} at column {exc.colno})",
                         "fix the line so that it holds one JSON object")
                continue
            except RecursionError:
                problems(loc, "malformed", "JSON nested too deeply to read",
                         "flatten the record: one object of string fields")
                continue
            if b"\\u" in raw and _LONE_SURROGATE.search(raw) and not _encodable(obj):
                # JSON allows "\ud800" alone, but it is no character: Parquet and UTF-8 files cannot hold it
                problems(loc, "malformed", "a string holds a lone surrogate escape (such as \\ud800), which is "
                         "not a character", "write the character itself, or its full surrogate pair")
                continue
            if not isinstance(obj, dict):
                problems(loc, "malformed", f"expected a JSON object, got {type(obj).__name__}",
                         "write one object per line, such as {\"_id\": ..., \"text\": ...}")
                continue
            yield loc, obj


_LONE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def _encodable(obj: Any) -> bool:
    """Every string in a parsed JSON value encodes as UTF-8 (no lone surrogates)."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def get_str(obj: dict, key: str, loc: Loc, problems: Problems, *, required: bool = True,
            allow_empty: bool = False, kind: str = "missing_field") -> str | None:
    """A string field; ids given as integers are accepted and kept as their decimal text."""
    if key not in obj or obj[key] is None:
        if required:
            problems(loc, kind, f"missing field {key!r}", f"add a {key!r} field to the record")
        return None
    value = obj[key]
    if isinstance(value, int) and not isinstance(value, bool) and key.endswith("id"):
        value = str(value)
    if not isinstance(value, str):
        problems(loc, "wrong_type", f"field {key!r} must be a string, got {type(value).__name__}",
                 f"write {key!r} as a JSON string")
        return None
    if not allow_empty and not value.strip():
        problems(loc, "empty_text", f"field {key!r} is empty", "give it a non-empty text or remove the record"
                 " (--skip-invalid skips such records)")
        return None
    return value


class TableBuilder:
    """Collects documents, queries and judgments, checking ids; streams the corpus to Parquet in batches."""

    def __init__(self, out_dir: Path, problems: Problems, use_title: bool, title_sep: str) -> None:
        self.out_dir = out_dir
        self.problems = problems
        self.use_title = use_title
        self.title_sep = title_sep
        # id -> content key: detects one id given two different texts; position gives doc_idx
        self.doc_content: dict[str, str] = {}
        self.content_to_doc: dict[str, str] = {}
        self.query_content: dict[str, str] = {}
        self.queries: dict[str, str] = {}
        self.qrels: dict[tuple[str, str], int] = {}
        self.repeated = Counter()
        self._buf: dict[str, list] = {n: [] for n in schema.CORPUS.names}
        self._writer = pq.ParquetWriter(out_dir / tables.CORPUS, schema.CORPUS)

    def joined(self, title: str, text: str) -> str:
        return join_title(title, text, self.use_title, self.title_sep)

    def add_doc(self, doc_id: str | None, title: str, text: str, loc: Loc) -> str | None:
        """Add a document; without an id it gets one from its text. Returns the id, or None if rejected."""
        content = text_id(f"{title}\x00{text}", "")
        if doc_id is None:
            doc_id = self.content_to_doc.get(content) or "d" + content
        seen = self.doc_content.get(doc_id)
        if seen is not None:
            if seen != content:
                self.problems(loc, "conflicting_id", f"document id {doc_id!r} appears again with a different text",
                              "give each document a unique id, or remove the repeated record")
                return None
            self.repeated["documents"] += 1
            return doc_id
        self.doc_content[doc_id] = content
        self.content_to_doc.setdefault(content, doc_id)
        joined = self.joined(title, text)
        for name, value in (("doc_id", doc_id), ("title", title), ("text", text), ("hash", norm_hash(joined)),
                            ("text_hash", norm_hash(text))):
            self._buf[name].append(value)
        if len(self._buf["doc_id"]) >= _BATCH:
            self._flush()
        return doc_id

    def add_query(self, query_id: str | None, text: str, loc: Loc) -> str | None:
        content = text_id(text, "")
        if query_id is None:
            query_id = "q" + content
        seen = self.query_content.get(query_id)
        if seen is not None:
            if seen != content:
                self.problems(loc, "conflicting_id", f"query id {query_id!r} appears again with a different text",
                              "give each query a unique id, or remove the repeated record")
                return None
            self.repeated["queries"] += 1
            return query_id
        self.query_content[query_id] = content
        self.queries[query_id] = text
        return query_id

    def add_qrel(self, query_id: str, doc_id: str, score: int) -> None:
        key = (query_id, doc_id)
        if key in self.qrels:
            self.repeated["qrels"] += 1
        # the higher grade wins when a pair is judged twice
        self.qrels[key] = max(score, self.qrels.get(key, score))

    def _flush(self) -> None:
        if self._buf["doc_id"]:
            self._writer.write_table(pa.table(self._buf, schema=schema.CORPUS))
            self._buf = {n: [] for n in schema.CORPUS.names}

    def hold_out(self, frac: float, seed: int, min_positive_score: int) -> list[tuple[str, str, int]]:
        """Hide a fraction of each multi-positive query's positives (at least one, never all), seeded per query.

        For `negmine eval`: the miner never sees the hidden pairs, so a hidden positive that comes out as a
        negative is a measured false negative.
        """
        from negmine.hashing import seed_for

        by_query: dict[str, list[str]] = {}
        for (q, d), score in sorted(self.qrels.items()):
            if score >= min_positive_score:
                by_query.setdefault(q, []).append(d)
        hidden = []
        for q, docs in by_query.items():
            if len(docs) < 2:
                continue
            k = min(len(docs) - 1, max(1, round(frac * len(docs))))
            rng = np.random.default_rng(seed_for(seed, q))
            for d in sorted(rng.choice(docs, size=k, replace=False).tolist()):
                hidden.append((q, d, self.qrels.pop((q, d))))
        return hidden

    def close(self, min_positive_score: int, source: Path, holdout_frac: float = 0.0,
              holdout_seed: int = 0) -> dict[str, Any]:
        hidden = self.hold_out(holdout_frac, holdout_seed, min_positive_score) if holdout_frac > 0 else []
        pq.write_table(pa.table({"query_id": [h[0] for h in hidden], "doc_id": [h[1] for h in hidden],
                                 "score": [h[2] for h in hidden]}, schema=schema.QRELS),
                       self.out_dir / tables.HOLDOUT)
        self._flush()
        self._writer.close()
        if not self.doc_content:
            raise InputError(source, "no documents", "the corpus must hold at least one valid document")
        q_ids = list(self.queries)
        pq.write_table(pa.table({"query_id": q_ids, "text": [self.queries[q] for q in q_ids],
                                 "hash": [norm_hash(self.queries[q]) for q in q_ids]}, schema=schema.QUERIES),
                       self.out_dir / tables.QUERIES)
        pairs = sorted(self.qrels.items())
        pq.write_table(pa.table({"query_id": [k[0] for k, _ in pairs], "doc_id": [k[1] for k, _ in pairs],
                                 "score": [v for _, v in pairs]}, schema=schema.QRELS),
                       self.out_dir / tables.QRELS)
        positives = [k for k, v in pairs if v >= min_positive_score]
        mined = {q for q, _ in positives}
        if not mined:
            raise InputError(source, f"no query has a positive (a judgment with score >= {min_positive_score})",
                             "check the qrels split or lower [input] min_positive_score")
        return {"documents": len(self.doc_content), "queries": len(self.queries), "qrels": len(pairs),
                "held_out_positives": len(hidden),
                "positives": len(positives), "queries_with_positives": len(mined),
                "repeated_identical_records": dict(self.repeated), **self.problems.summary()}
