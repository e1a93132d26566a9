"""sentence-transformers' id layout: the tables `sentence_transformers.util.resolve_ids` joins at training time.

A rows table (`query_id`, `document_ids` = [positive, negative_1 .. negative_n], `scores` on the filters' scale in
the same order) and two lookup tables, `st-ids-queries` (`query_id`, `text`) and `st-ids-documents`
(`document_id`, `text`), each holding every id the rows name, once. This is the layout of
`lightonai/ms-marco-en-bge` that sentence-transformers 6 trains from directly:

    train.set_transform(resolve_ids({"query_id": queries, "document_ids": documents}))
    # rows of {"query", "document_1" (the positive), "document_2" .. "document_{n+1}", "scores"}

One row per (query, positive); a query short of n negatives is left out (counted), because resolve_ids' default
`output_format="columns"` needs lists of one length. `scores` is left out where the scores are fused RRF ranks
(positives have none); a pad-random filler has no score (null). Ids are strings.
"""
from __future__ import annotations

import pyarrow as pa

from negmine.formats import Format, Options, QueryRecord, Tables, left_out, register

S = pa.string()


def _has_scores(o: Options) -> bool:
    return o.score_type != "rrf"


def schema(o: Options) -> pa.Schema:
    cols = [("query_id", S), ("document_ids", pa.list_(S))]
    return pa.schema(cols + ([("scores", pa.list_(pa.float32()))] if _has_scores(o) else []))


def companions(o: Options) -> dict[str, pa.Schema]:
    return {"queries": pa.schema([("query_id", S), ("text", S)]),
            "documents": pa.schema([("document_id", S), ("text", S)])}


def _lookup(t: Tables, table: str, ids: list[str], texts: list[str]) -> None:
    seen, rows = t.seen.setdefault(table, set()), t.companions[table]
    id_col = next(iter(rows))  # query_id or document_id: the table's first column
    for i, text in zip(ids, texts):
        if i not in seen:
            seen.add(i)
            rows[id_col].append(i)
            rows["text"].append(text)


def rows(q: QueryRecord, o: Options, t: Tables, skipped: dict) -> None:
    if left_out(q, "st-ids", skipped, o.num_negatives):
        return
    neg_ids = list(q.neg["doc_id"][:o.num_negatives])
    neg_scores = list(q.neg["filter_score"][:o.num_negatives])
    for i, pos in enumerate(q.pos_ids):
        t.main["query_id"].append(q.qid)
        t.main["document_ids"].append([pos] + neg_ids)
        if _has_scores(o):
            t.main["scores"].append([q.pos_scores[i]] + neg_scores)
    _lookup(t, "queries", [q.qid], [q.text])
    _lookup(t, "documents", q.pos_ids + neg_ids, q.pos_texts + q.neg_texts[:o.num_negatives])


register(Format("st-ids", schema, rows, companions=companions,
                help="query_id, document_ids, scores + queries and documents tables (resolve_ids)"))
