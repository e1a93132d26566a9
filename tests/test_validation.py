"""Input validation: bad input gives one clear line on stderr, exit code 2, no traceback and nothing written.

Each test builds a tiny input in tmp_path and runs the CLI (`negmine run`) on it. `--skip-invalid` turns
record-level problems into counted warnings; valid inputs of every format ingest into the normalised tables.
"""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from negmine.cli import app

REPO = Path(__file__).resolve().parents[1]
GENERATED_ID = re.compile(r"^[qd][0-9a-f]{16}$")

# Six small documents about animals and two queries with one positive each: enough for BM25 to find candidates.
DOCS = [
    {"_id": "d1", "title": "Cats", "text": "cats purr and sleep in the sun"},
    {"_id": "d2", "title": "Dogs", "text": "dogs bark and fetch sticks in the park"},
    {"_id": "d3", "title": "Birds", "text": "birds sing and fly over the park"},
    {"_id": "d4", "title": "Fish", "text": "fish swim in the cold river"},
    {"_id": "d5", "title": "Horses", "text": "horses run across the green field"},
    {"_id": "d6", "title": "Cows", "text": "cows graze in the green field and sleep"},
]
QUERIES = [
    {"_id": "q1", "text": "which animals sleep in the sun"},
    {"_id": "q2", "text": "animals in the park"},
]
QRELS = [("q1", "d1", "1"), ("q2", "d2", "1")]
QRELS_HEADER = "query-id\tcorpus-id\tscore"

# Query/positive pairs for the pair formats; "animals in the park" appears twice (two positives).
PAIRS = [
    {"query": "which animals sleep in the sun", "positive": "cats purr and sleep in the sun"},
    {"query": "animals in the park", "positive": "dogs bark and fetch sticks in the park"},
    {"query": "animals in the park", "positive": "birds sing and fly over the park"},
    {"query": "who swims in the river", "positive": "fish swim in the cold river"},
]


# --------------------------------------------------------------------------------------------------- helpers


def _line(item: Any) -> str:
    """A record as one JSONL line; a str is written as given (to plant malformed lines)."""
    return item if isinstance(item, str) else json.dumps(item)


def write_jsonl(path: Path, items: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(_line(i) + "\n" for i in items), encoding="utf-8")
    return path


def write_beir(root: Path, docs: list[Any] | None = None, queries: list[Any] | None = None,
               qrels: list[Any] | None = None, split: str = "train") -> Path:
    """A BEIR folder; qrels rows are tuples (joined by tabs) or raw strings; the header line comes first."""
    folder = root / "beir"
    write_jsonl(folder / "corpus.jsonl", DOCS if docs is None else docs)
    write_jsonl(folder / "queries.jsonl", QUERIES if queries is None else queries)
    rows = QRELS if qrels is None else qrels
    lines = [QRELS_HEADER] + [r if isinstance(r, str) else "\t".join(r) for r in rows]
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_parquet(path: Path, records: list[dict[str, str]]) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def run_cli(tmp_path: Path, input_path: Path, *extra: str):
    """`negmine run` on `input_path` with the cache and the output folder inside tmp_path."""
    args = ["run", "-i", str(input_path), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
            "-q", "--set", "retrieve.top_k=5", "--set", "sample.rank_max=0", "--set", "sample.num_negatives=2",
            *extra]
    return CliRunner().invoke(app, args)


def assert_nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists(), "the output folder was created for a rejected input"
    cache = tmp_path / "cache"
    if cache.exists():
        assert list(cache.glob("*/*/meta.json")) == [], "a cache entry was written for a rejected input"
        assert list(cache.glob("*/.tmp-*")) == [], "a temporary cache folder was left behind"
        assert list(cache.glob("*/last.json")) == [], "a stage recorded a key for a rejected input"


def assert_rejected(result, tmp_path: Path, *fragments: str) -> str:
    """Exit code 2, one `error:` line on stderr containing every fragment, no traceback, nothing written."""
    stderr = result.stderr.strip()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "\n" not in stderr, f"expected one line on stderr, got:\n{stderr}"
    assert stderr.startswith("error:"), stderr
    assert "Traceback" not in result.output and "Traceback" not in stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    for fragment in fragments:
        assert fragment in stderr, f"{fragment!r} not in {stderr!r}"
    assert_nothing_written(tmp_path)
    return stderr


def ingest_entry(tmp_path: Path) -> Path:
    entries = list((tmp_path / "cache" / "ingest").glob("*/meta.json"))
    assert len(entries) == 1, entries
    return entries[0].parent


def ingest_stats(tmp_path: Path) -> dict[str, Any]:
    return json.loads((ingest_entry(tmp_path) / "meta.json").read_text())["stats"]


def ingest_tables(tmp_path: Path) -> tuple[list[dict], list[dict], list[dict]]:
    entry = ingest_entry(tmp_path)
    return tuple(pq.read_table(entry / f"{name}.parquet").to_pylist() for name in ("corpus", "queries", "qrels"))


def assert_succeeded(result, tmp_path: Path) -> None:
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert (tmp_path / "out" / "triplet.jsonl").is_file()
    assert (tmp_path / "out" / "report.json").is_file()


# ------------------------------------------------------------------------------------------------ BEIR folders


def test_beir_malformed_json_line_names_file_line_and_fix(tmp_path):
    docs = [*DOCS[:2], '{"_id": "d3", "title": "Birds", "text": "birds sing', *DOCS[3:]]
    folder = write_beir(tmp_path, docs=docs)
    err = assert_rejected(run_cli(tmp_path, folder), tmp_path, "corpus.jsonl", "line 3", "not valid JSON")
    assert "fix the line" in err


def test_beir_json_line_that_is_not_an_object_is_rejected(tmp_path):
    folder = write_beir(tmp_path, docs=[*DOCS, '["d7", "a list, not an object"]'])
    assert_rejected(run_cli(tmp_path, folder), tmp_path, "corpus.jsonl", "line 7", "expected a JSON object")


def test_beir_document_missing_text_field_is_rejected(tmp_path):
    docs = [*DOCS[:3], {"_id": "d4", "title": "Fish"}, *DOCS[4:]]
    folder = write_beir(tmp_path, docs=docs)
    assert_rejected(run_cli(tmp_path, folder), tmp_path, "corpus.jsonl", "line 4", "missing field 'text'",
                    "add a 'text' field")


def test_beir_query_missing_id_field_is_rejected(tmp_path):
    folder = write_beir(tmp_path, queries=[QUERIES[0], {"text": "animals in the park"}])
    assert_rejected(run_cli(tmp_path, folder), tmp_path, "queries.jsonl", "line 2", "missing field '_id'",
                    "add a '_id' field")


def test_beir_document_with_empty_title_and_text_is_rejected(tmp_path):
    folder = write_beir(tmp_path, docs=[*DOCS, {"_id": "d7", "title": "", "text": "  "}])
    err = assert_rejected(run_cli(tmp_path, folder), tmp_path, "corpus.jsonl", "line 7", "'d7'",
                          "empty title and text")
    assert "--skip-invalid" in err


def test_beir_query_with_empty_text_is_rejected(tmp_path):
    folder = write_beir(tmp_path, queries=[QUERIES[0], {"_id": "q2", "text": ""}])
    assert_rejected(run_cli(tmp_path, folder), tmp_path, "queries.jsonl", "line 2", "field 'text' is empty")


def test_beir_document_id_repeated_with_different_text_is_rejected(tmp_path):
    folder = write_beir(tmp_path, docs=[*DOCS, {"_id": "d2", "title": "Dogs", "text": "another text"}])
    assert_rejected(run_cli(tmp_path, folder), tmp_path, "corpus.jsonl", "line 7", "document id 'd2'",
                    "different text", "unique id")


def test_beir_query_id_repeated_with_different_text_is_rejected(tmp_path):
    folder = write_beir(tmp_path, queries=[*QUERIES, {"_id": "q1", "text": "another question"}])
    assert_rejected(run_cli(tmp_path, folder), tmp_path, "queries.jsonl", "line 3", "query id 'q1'",
                    "different text", "unique id")


def test_beir_identical_repeated_records_are_accepted_and_counted(tmp_path):
    folder = write_beir(tmp_path, docs=[*DOCS, DOCS[0]], queries=[*QUERIES, QUERIES[1]])
    result = run_cli(tmp_path, folder)
    assert_succeeded(result, tmp_path)
    stats = ingest_stats(tmp_path)
    assert stats["documents"] == len(DOCS)
    assert stats["repeated_identical_records"] == {"documents": 1, "queries": 1}


def test_beir_qrel_with_unknown_query_id_is_rejected(tmp_path):
    folder = write_beir(tmp_path, qrels=[*QRELS, ("q9", "d3", "1")])
    assert_rejected(run_cli(tmp_path, folder), tmp_path, "train.tsv", "line 4", "query id 'q9'",
                    "not in queries.jsonl")


def test_beir_qrel_with_unknown_document_id_is_rejected(tmp_path):
    folder = write_beir(tmp_path, qrels=[("q1", "d1", "1"), ("q2", "d99", "1")])
    assert_rejected(run_cli(tmp_path, folder), tmp_path, "train.tsv", "line 3", "document id 'd99'",
                    "not in corpus.jsonl")


def test_beir_qrels_line_with_wrong_number_of_fields_is_rejected(tmp_path):
    folder = write_beir(tmp_path, qrels=[QRELS[0], "q2\td2"])
    assert_rejected(run_cli(tmp_path, folder), tmp_path, "train.tsv", "line 3", "expected 3 tab-separated fields",
                    "got 2", "single tabs")


def test_beir_qrels_line_with_space_separated_fields_is_rejected(tmp_path):
    folder = write_beir(tmp_path, qrels=["q1 d1 1", QRELS[1]])
    assert_rejected(run_cli(tmp_path, folder), tmp_path, "train.tsv", "line 2", "got 1")


@pytest.mark.parametrize("score", ["high", "1.5", ""])
def test_beir_qrels_non_integer_score_is_rejected(tmp_path, score):
    folder = write_beir(tmp_path, qrels=[QRELS[0], ("q2", "d2", score)])
    assert_rejected(run_cli(tmp_path, folder), tmp_path, "train.tsv", "line 3", f"score {score!r}",
                    "not an integer", "integers")


def test_beir_missing_qrels_split_lists_available_splits(tmp_path):
    folder = write_beir(tmp_path)
    (folder / "qrels" / "test.tsv").write_text(QRELS_HEADER + "\nq1\td1\t1\n", encoding="utf-8")
    err = assert_rejected(run_cli(tmp_path, folder, "--set", "input.split=dev"), tmp_path, "dev.tsv",
                          "no qrels for split 'dev'", "available splits: test, train")
    assert "split" in err.split(";", 1)[1]  # the fix names the setting to change


def test_beir_folder_without_queries_file_is_rejected(tmp_path):
    folder = write_beir(tmp_path)
    (folder / "queries.jsonl").unlink()
    assert_rejected(run_cli(tmp_path, folder), tmp_path, "queries.jsonl", "file not found")


# ------------------------------------------------------------------------------------------- FlagEmbedding JSONL


def _fe_records() -> list[dict[str, Any]]:
    return [
        {"query": "which animals sleep in the sun", "pos": ["cats purr and sleep in the sun"],
         "neg": ["cows graze in the green field and sleep"]},
        {"query": "animals in the park", "pos": ["dogs bark and fetch sticks in the park"],
         "neg": ["birds sing and fly over the park", "fish swim in the cold river"]},
    ]


def test_flagembedding_pos_given_as_string_says_to_wrap_it_in_a_list(tmp_path):
    records = _fe_records()
    records[1]["pos"] = "dogs bark and fetch sticks in the park"
    path = write_jsonl(tmp_path / "train.jsonl", records)
    assert_rejected(run_cli(tmp_path, path), tmp_path, "train.jsonl", "line 2", "'pos' is a string",
                    "wrap it in a list")


def test_flagembedding_pos_missing_is_rejected(tmp_path):
    records = _fe_records()
    del records[1]["pos"]
    path = write_jsonl(tmp_path / "train.jsonl", records)
    assert_rejected(run_cli(tmp_path, path), tmp_path, "train.jsonl", "line 2", "missing field 'pos'")


def test_flagembedding_pos_missing_in_first_record_is_still_read_as_flagembedding(tmp_path):
    records = _fe_records()
    del records[0]["pos"]
    path = write_jsonl(tmp_path / "train.jsonl", records)
    assert_rejected(run_cli(tmp_path, path), tmp_path, "train.jsonl", "line 1", "missing field 'pos'")


def test_flagembedding_pos_empty_list_is_rejected(tmp_path):
    records = _fe_records()
    records[1]["pos"] = []
    path = write_jsonl(tmp_path / "train.jsonl", records)
    assert_rejected(run_cli(tmp_path, path), tmp_path, "train.jsonl", "line 2", "'pos' is an empty list",
                    "at least one positive")


# -------------------------------------------------------------------------------------------------- pair files


def test_jsonl_pairs_missing_positive_field_is_rejected(tmp_path):
    rows = [dict(r) for r in PAIRS]
    del rows[2]["positive"]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    assert_rejected(run_cli(tmp_path, path), tmp_path, "pairs.jsonl", "line 3", "missing field 'positive'")


def test_csv_pairs_missing_column_lists_existing_columns(tmp_path):
    path = write_csv(tmp_path / "pairs.csv", ["query", "answer"], [[p["query"], p["positive"]] for p in PAIRS])
    err = assert_rejected(run_cli(tmp_path, path), tmp_path, "pairs.csv", "no column 'positive'",
                          "columns: query, answer", "positive_column")
    assert "line" not in err.split(";", 1)[0]  # a file-level problem: no line number


def test_parquet_pairs_empty_query_text_reports_row(tmp_path):
    rows = [dict(r) for r in PAIRS]
    rows[1]["query"] = "   "
    path = write_parquet(tmp_path / "pairs.parquet", rows)
    assert_rejected(run_cli(tmp_path, path), tmp_path, "pairs.parquet", "row 2", "field 'query' is empty")


def test_csv_pairs_not_utf8_is_rejected_with_exit_2(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes("query,positive\ncaf\u00e9 in the park,dogs bark in the park\n".encode("latin-1"))
    assert_rejected(run_cli(tmp_path, path), tmp_path, "pairs.csv", "not UTF-8", "re-encode the file as UTF-8")


def test_empty_csv_pairs_file_says_it_is_empty(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("", encoding="utf-8")
    assert_rejected(run_cli(tmp_path, path), tmp_path, "pairs.csv", "the file is empty")


def test_csv_pairs_with_byte_order_mark_ingest(tmp_path):
    # Excel's "CSV UTF-8" starts with a byte-order mark, which must not become part of the first column's name
    path = write_csv(tmp_path / "pairs.csv", ["query", "positive"], [[p["query"], p["positive"]] for p in PAIRS])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert_succeeded(run_cli(tmp_path, path), tmp_path)
    _check_pair_tables(tmp_path)


def test_empty_jsonl_file_says_it_is_empty(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    assert_rejected(run_cli(tmp_path, path), tmp_path, "pairs.jsonl", "the file is empty")


def test_flagembedding_with_malformed_first_line_is_still_detected(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", ['{"query": ', *_fe_records()])
    assert_rejected(run_cli(tmp_path, path), tmp_path, "train.jsonl", "line 1", "not valid JSON")
    result = run_cli(tmp_path, path, "--skip-invalid")
    assert_succeeded(result, tmp_path)
    stats = ingest_stats(tmp_path)
    assert stats["format"] == "flagembedding"
    assert stats["skipped"] == {"malformed": 1} and stats["queries"] == 2


# ------------------------------------------------------------------------------------------------ --skip-invalid


def _beir_with_bad_records(tmp_path: Path) -> Path:
    docs = [*DOCS[:2], '{"_id": "d3", "title": ', *DOCS[3:], {"_id": "d7", "title": "", "text": ""}]
    return write_beir(tmp_path, docs=docs, qrels=[*QRELS, ("q2", "d7", "1")])


@pytest.mark.parametrize("how", [["--skip-invalid"], ["--set", "input.skip_invalid=true"]],
                         ids=["cli-flag", "config"])
def test_skip_invalid_skips_and_counts_bad_records_and_writes_outputs(tmp_path, how):
    folder = _beir_with_bad_records(tmp_path)
    result = run_cli(tmp_path, folder, *how)
    assert_succeeded(result, tmp_path)
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert "skipped 3 invalid records" in warnings[0]
    assert "corpus.jsonl, line 3" in warnings[0]  # the first example names its location
    stats = ingest_stats(tmp_path)
    assert stats["skipped"] == {"malformed": 1, "empty_text": 1, "unknown_id": 1}
    assert stats["skipped_total"] == 3
    assert stats["documents"] == len(DOCS) - 1
    assert stats["qrels"] == 2
    corpus, _, qrels = ingest_tables(tmp_path)
    assert {d["doc_id"] for d in corpus} == {"d1", "d2", "d4", "d5", "d6"}
    assert ("q2", "d7") not in {(r["query_id"], r["doc_id"]) for r in qrels}
    report_md = (tmp_path / "out" / "report.md").read_text()
    assert "Input records skipped as invalid: 3 (empty_text 1, malformed 1, unknown_id 1)." in report_md


def test_skip_invalid_still_fails_when_nothing_valid_remains(tmp_path):
    folder = write_beir(tmp_path, docs=['{"_id": ', {"_id": "d2", "title": "", "text": ""}],
                        qrels=[("q1", "d2", "1")])
    assert_rejected(run_cli(tmp_path, folder, "--skip-invalid"), tmp_path, "no documents")


# ------------------------------------------------------------------------------------------------- valid inputs


def test_valid_beir_folder_keeps_its_ids(tmp_path):
    folder = write_beir(tmp_path)
    result = run_cli(tmp_path, folder)
    assert_succeeded(result, tmp_path)
    assert result.stderr.strip() == ""
    corpus, queries, qrels = ingest_tables(tmp_path)
    assert [d["doc_id"] for d in corpus] == [d["_id"] for d in DOCS]
    assert [q["query_id"] for q in queries] == ["q1", "q2"]
    assert {(r["query_id"], r["doc_id"], r["score"]) for r in qrels} == {("q1", "d1", 1), ("q2", "d2", 1)}
    stats = ingest_stats(tmp_path)
    assert stats["format"] == "beir" and stats["skipped_total"] == 0


def test_beir_integer_ids_are_kept_as_decimal_text(tmp_path):
    docs = [{**d, "_id": i} for i, d in enumerate(DOCS, 1)]
    queries = [{**q, "_id": 100 + i} for i, q in enumerate(QUERIES, 1)]
    folder = write_beir(tmp_path, docs=docs, queries=queries, qrels=[("101", "1", "1"), ("102", "2", "1")])
    assert_succeeded(run_cli(tmp_path, folder), tmp_path)
    corpus, queries_t, _ = ingest_tables(tmp_path)
    assert [d["doc_id"] for d in corpus] == [str(i) for i in range(1, len(DOCS) + 1)]
    assert [q["query_id"] for q in queries_t] == ["101", "102"]


def _check_pair_tables(tmp_path: Path, extra_docs: int = 0) -> None:
    """The PAIRS content: 3 distinct queries, 4 positives; the repeated query has two positives."""
    corpus, queries, qrels = ingest_tables(tmp_path)
    assert len(queries) == 3
    assert len(corpus) == 4 + extra_docs
    assert all(GENERATED_ID.match(q["query_id"]) and q["query_id"][0] == "q" for q in queries)
    assert all(GENERATED_ID.match(d["doc_id"]) and d["doc_id"][0] == "d" for d in corpus)
    qid = {q["text"]: q["query_id"] for q in queries}
    did = {d["text"]: d["doc_id"] for d in corpus}
    park = {r["doc_id"] for r in qrels if r["query_id"] == qid["animals in the park"]}
    assert park == {did["dogs bark and fetch sticks in the park"], did["birds sing and fly over the park"]}
    assert len(qrels) == 4


def test_valid_jsonl_pairs_merge_repeated_query_into_one_with_two_positives(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    assert_succeeded(run_cli(tmp_path, path), tmp_path)
    _check_pair_tables(tmp_path)
    assert ingest_stats(tmp_path)["repeated_identical_records"] == {"queries": 1}


def test_valid_csv_pairs_ingest(tmp_path):
    path = write_csv(tmp_path / "pairs.csv", ["query", "positive"], [[p["query"], p["positive"]] for p in PAIRS])
    assert_succeeded(run_cli(tmp_path, path), tmp_path)
    _check_pair_tables(tmp_path)


def test_valid_parquet_pairs_ingest(tmp_path):
    path = write_parquet(tmp_path / "pairs.parquet", PAIRS)
    assert_succeeded(run_cli(tmp_path, path), tmp_path)
    _check_pair_tables(tmp_path)


def test_identical_texts_share_one_id(tmp_path):
    # one text is the positive of two queries and also another row's negative: one document, one id
    shared = "dogs bark and fetch sticks in the park"
    rows = [
        {"query": "animals in the park", "positive": shared, "negative": "fish swim in the cold river"},
        {"query": "who barks", "positive": shared, "negative": "birds sing and fly over the park"},
        {"query": "who swims", "positive": "fish swim in the cold river", "negative": shared},
    ]
    path = write_jsonl(tmp_path / "triplets.jsonl", rows)
    assert_succeeded(run_cli(tmp_path, path), tmp_path)
    corpus, queries, qrels = ingest_tables(tmp_path)
    texts = [d["text"] for d in corpus]
    assert sorted(texts) == sorted({shared, "fish swim in the cold river", "birds sing and fly over the park"})
    shared_id = next(d["doc_id"] for d in corpus if d["text"] == shared)
    assert sum(r["doc_id"] == shared_id for r in qrels) == 2
    assert len({q["query_id"] for q in queries}) == 3


def test_generated_ids_are_stable_across_formats(tmp_path):
    """The same text gets the same id whichever file format carries it."""
    ids = []
    writers = (("a.jsonl", lambda p: write_jsonl(p, PAIRS)), ("b.parquet", lambda p: write_parquet(p, PAIRS)))
    for name, writer in writers:
        sub = tmp_path / name.split(".")[0]
        sub.mkdir()
        assert_succeeded(run_cli(sub, writer(sub / name)), sub)
        corpus, queries, _ = ingest_tables(sub)
        ids.append(({d["text"]: d["doc_id"] for d in corpus}, {q["text"]: q["query_id"] for q in queries}))
    assert ids[0] == ids[1]


def test_valid_flagembedding_with_negatives_ingests(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", _fe_records())
    assert_succeeded(run_cli(tmp_path, path), tmp_path)
    stats = ingest_stats(tmp_path)
    assert stats["format"] == "flagembedding"
    corpus, queries, qrels = ingest_tables(tmp_path)
    assert len(queries) == 2 and len(qrels) == 2
    assert len(corpus) == 5  # 2 positives + 3 distinct negatives, which join the corpus without judgments
    assert all(GENERATED_ID.match(d["doc_id"]) and d["doc_id"][0] == "d" for d in corpus)
    assert all(GENERATED_ID.match(q["query_id"]) and q["query_id"][0] == "q" for q in queries)
    positives = {d["doc_id"] for d in corpus if d["text"].startswith(("cats", "dogs"))}
    assert {r["doc_id"] for r in qrels} == positives


# ----------------------------------------------------------------------------------------- the real console script


def test_console_script_exits_2_without_traceback_on_bad_input(tmp_path):
    docs = [*DOCS[:1], "{not json", *DOCS[1:]]
    folder = write_beir(tmp_path, docs=docs)
    proc = subprocess.run(
        [sys.executable, "-m", "negmine", "run", "-i", str(folder), "--out", str(tmp_path / "out"),
         "--cache-dir", str(tmp_path / "cache"), "-q", "--set", "retrieve.top_k=5"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    stderr = proc.stderr.strip()
    assert "\n" not in stderr, stderr
    assert stderr.startswith("error:") and "corpus.jsonl, line 2" in stderr, stderr
    assert proc.stdout == ""
    assert_nothing_written(tmp_path)


def test_skip_invalid_drops_a_record_with_a_bad_optional_field_whole(tmp_path):
    from conftest import write_beir
    import negmine

    docs = [{"_id": f"d{i}", "title": "", "text": f"alpha beta {i}"} for i in range(6)]
    docs.append({"_id": "bad", "title": 5, "text": "alpha with a numeric title"})
    data = write_beir(tmp_path / "d", docs, [{"_id": "q", "text": "alpha"}], [("q", "d0", 1)])
    result = negmine.mine(None, [f"input.path='{data}'", "input.skip_invalid=true",
                                 f"run.cache_dir='{tmp_path / 'c'}'", f"export.dir='{tmp_path / 'o'}'"])
    stats = result.stages["ingest"].stats
    assert stats["documents"] == 6 and stats["skipped"] == {"wrong_type": 1}
