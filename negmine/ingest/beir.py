"""BEIR folders: corpus.jsonl (`_id`, `title`, `text`), queries.jsonl (`_id`, `text`), qrels/<split>.tsv.

Format: Thakur et al., "BEIR: A Heterogeneous Benchmark for Zero-shot Evaluation of IR Models", NeurIPS 2021.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from negmine.errors import InputError
from negmine.ingest.collect import Loc, Problems, TableBuilder, get_str, read_jsonl


def beir_files(folder: Path, split: str) -> dict[str, Path]:
    files = {"corpus": folder / "corpus.jsonl", "queries": folder / "queries.jsonl",
             "qrels": folder / "qrels" / f"{split}.tsv"}
    for name in ("corpus", "queries"):
        if not files[name].is_file():
            raise InputError(files[name], "file not found",
                             "a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv")
    if not files["qrels"].is_file():
        splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        have = f"available splits: {', '.join(splits)}" if splits else "the folder has no qrels/*.tsv"
        raise InputError(files["qrels"], f"no qrels for split {split!r}",
                         f"set [input] split to one of the available splits ({have})")
    return files


def read_beir(folder: Path, split: str, builder: TableBuilder, problems: Problems,
              qrels_format: str = "auto") -> None:
    files = beir_files(folder, split)
    for loc, obj in read_jsonl(files["corpus"], problems):
        doc_id = get_str(obj, "_id", loc, problems)
        if doc_id is None:
            continue
        seen = problems.total
        title = get_str(obj, "title", loc, problems, required=False, allow_empty=True) or ""
        text = get_str(obj, "text", loc, problems, allow_empty=True)
        if text is None or problems.total > seen:  # a skipped record is dropped whole, never half-kept
            continue
        if not text.strip() and not title.strip():
            problems(loc, "empty_text", f"document {doc_id!r} has an empty title and text",
                     "give it a text or remove the record (--skip-invalid skips such records)")
            continue
        builder.add_doc(doc_id, title, text, loc)
    for loc, obj in read_jsonl(files["queries"], problems):
        query_id = get_str(obj, "_id", loc, problems)
        text = get_str(obj, "text", loc, problems) if query_id is not None else None
        if query_id is not None and text is not None:
            builder.add_query(query_id, text, loc)
    read_qrels(files["qrels"], builder, problems, qrels_format)


# BEIR's own header; extra columns after these three are allowed (and ignored) only under this exact header
BEIR_HEADER = ("query-id", "corpus-id", "score")
# first header fields that other BEIR-style writers use; with these the file must have exactly three columns
_QUERY_ID_NAMES = ("query-id", "query_id", "qid")
QRELS_FORMATS = ("auto", "beir", "trec")


def _layout(path: Path, lines: list[tuple[int, str]], qrels_format: str) -> tuple[str, list[str] | None]:
    """("beir" | "trec", the header's fields or None): how the file is read. Never guesses: a file that reads
    both ways is an InputError naming both readings."""
    first_no, first = lines[0] if lines else (1, "")
    header = [f.strip().lower() for f in first.split("\t")]
    if header[0] in _QUERY_ID_NAMES:
        if qrels_format == "trec":
            raise InputError(path, f"starts with a header ({first.strip()!r}) but [input] qrels_format is \"trec\", "
                             "whose files have none", "remove the header, or set [input] qrels_format = \"beir\"",
                             first_no)
        if len(header) > 3 and tuple(header[:3]) != BEIR_HEADER:
            raise InputError(path, f"header {first.strip()!r} has {len(header)} columns and its first three are not "
                             "query-id, corpus-id, score: it reads as BEIR (query-id, corpus-id, score, extra...) or "
                             "as TREC (qid, iter, docid, rel)", "name the first three columns query-id, corpus-id, "
                             "score (BEIR), or remove the header and set [input] qrels_format = \"trec\"", first_no)
        return "beir", header
    if qrels_format != "auto":
        return qrels_format, None
    four = [(n, line) for n, line in lines if len(line.split()) == 4]
    # TREC's second column is the iteration (0, or Q0 in run files) and its fourth the grade: anything else in
    # those places makes the line as likely BEIR with an extra column
    if four and len(four) == len(lines) and all(
            _is_int(f[3]) and (_is_int(f[1]) or f[1].upper() == "Q0") for f in (line.split() for _, line in lines)):
        return "trec", None
    if four:
        n, line = four[0]
        raise InputError(path, f"no header, and {line.strip()!r} has four fields: it reads as TREC (qid, iter, docid, "
                         "rel) or as BEIR with an extra column (query-id, corpus-id, score, ...)",
                         "add the BEIR header query-id<TAB>corpus-id<TAB>score, or set [input] qrels_format = "
                         "\"trec\" (every line qid iter docid rel)", n)
    return "beir", None


def _is_int(text: str) -> bool:
    try:
        return float(text).is_integer()
    except ValueError:
        return False


def iter_qrels(path: Path, problems: Problems | None, qrels_format: str = "auto"
               ) -> Iterator[tuple[Loc, str, str, int]]:
    """(location, query id, document id, integer score) for each judgment of a qrels file.

    BEIR: `query-id<TAB>corpus-id<TAB>score` with an optional header; extra columns only under BEIR's own header.
    TREC: `qid iter docid rel` (space or tab), when `qrels_format = "trec"` or when the file has no header and
    every line has exactly four fields. A byte-order mark is dropped. `problems` None: every problem raises.
    """
    try:
        with open(path, encoding="utf-8-sig", errors="strict") as fh:  # -sig: drop a byte-order mark
            lines = [(n, line.rstrip("\r\n")) for n, line in enumerate(fh, 1) if line.strip()]
    except UnicodeDecodeError:
        raise InputError(path, "not UTF-8 text", "re-encode the file as UTF-8") from None
    layout, header = _layout(path, lines, qrels_format)
    report = problems if problems is not None else Problems(skip_invalid=False)
    extra_ok = header is not None and tuple(header[:3]) == BEIR_HEADER
    if header is not None:
        lines = lines[1:]
    want = 4 if layout == "trec" else 3
    for lineno, line in lines:
        loc = Loc(path, lineno)
        fields = line.split() if layout == "trec" else line.split("\t")  # BEIR ids may hold spaces
        if extra_ok and len(fields) > 3:
            fields = fields[:3]
        if len(fields) != want:
            what = ("4 fields separated by spaces or tabs (qid, iter, docid, rel)" if layout == "trec" else
                    "3 tab-separated fields (query-id, corpus-id, score)")
            fix = "write qid iter docid rel" if layout == "trec" else "separate the fields with single tabs"
            if layout == "beir" and header is None and len(fields) == 4:
                fix = "for TREC qrels (qid iter docid rel) set [input] qrels_format = \"trec\""
            report(loc, "malformed", f"expected {what}, got {len(fields)}", fix)
            continue
        if layout == "trec":
            fields = [fields[0], fields[2], fields[3]]
        qid, did, raw_score = (f.strip() for f in fields)
        if not _is_int(raw_score):
            report(loc, "malformed", f"score {raw_score!r} is not an integer",
                   "write relevance grades as integers (1 = relevant)")
            continue
        yield loc, qid, did, int(float(raw_score))


def read_qrels(path: Path, builder: TableBuilder, problems: Problems, qrels_format: str = "auto") -> None:
    for loc, qid, did, score in iter_qrels(path, problems, qrels_format):
        if qid not in builder.queries:
            problems(loc, "unknown_id", f"query id {qid!r} is not in queries.jsonl",
                     "fix the id, or add the query to queries.jsonl")
            continue
        if did not in builder.doc_content:
            problems(loc, "unknown_id", f"document id {did!r} is not in corpus.jsonl",
                     "fix the id, or add the document to corpus.jsonl")
            continue
        builder.add_qrel(qid, did, score)
