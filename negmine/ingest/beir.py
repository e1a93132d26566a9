"""BEIR folders: corpus.jsonl (`_id`, `title`, `text`), queries.jsonl (`_id`, `text`), qrels/<split>.tsv.

Format: Thakur et al., "BEIR: A Heterogeneous Benchmark for Zero-shot Evaluation of IR Models", NeurIPS 2021.
"""
from __future__ import annotations

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


def read_beir(folder: Path, split: str, builder: TableBuilder, problems: Problems) -> None:
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
    read_qrels(files["qrels"], builder, problems)


def read_qrels(path: Path, builder: TableBuilder, problems: Problems) -> None:
    """TSV lines `query-id<TAB>corpus-id<TAB>score`, with an optional header line."""
    with open(path, encoding="utf-8", errors="strict") as fh:
        try:
            lines = list(enumerate(fh, 1))
        except UnicodeDecodeError:
            raise InputError(path, "not UTF-8 text", "re-encode the file as UTF-8") from None
    for lineno, line in lines:
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        loc = Loc(path, lineno)
        fields = line.split("\t")
        if lineno == 1 and len(fields) >= 2 and fields[0].strip().lower() in ("query-id", "query_id", "qid"):
            continue
        if len(fields) == 4:  # TREC layout: qid, iteration, docid, score
            fields = [fields[0], fields[2], fields[3]]
        if len(fields) != 3:
            problems(loc, "malformed", f"expected 3 tab-separated fields (query-id, corpus-id, score), "
                     f"got {len(fields)}", "separate the fields with single tabs")
            continue
        qid, did, raw_score = (f.strip() for f in fields)
        try:
            score = int(float(raw_score)) if float(raw_score).is_integer() else None
        except ValueError:
            score = None
        if score is None:
            problems(loc, "malformed", f"score {raw_score!r} is not an integer",
                     "write relevance grades as integers (1 = relevant)")
            continue
        if qid not in builder.queries:
            problems(loc, "unknown_id", f"query id {qid!r} is not in queries.jsonl",
                     "fix the id, or add the query to queries.jsonl")
            continue
        if did not in builder.doc_content:
            problems(loc, "unknown_id", f"document id {did!r} is not in corpus.jsonl",
                     "fix the id, or add the document to corpus.jsonl")
            continue
        builder.add_qrel(qid, did, score)
