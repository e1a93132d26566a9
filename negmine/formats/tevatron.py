"""Tevatron's training layout (Gao et al., "Tevatron: An Efficient and Flexible Toolkit for Dense Retrieval",
2022): query_id, query, positive_passages and negative_passages as lists of {docid, title, text}."""
from __future__ import annotations

import pyarrow as pa

from negmine.formats import Format, Options, QueryRecord, left_out, register

PASSAGE = pa.struct([("docid", pa.string()), ("title", pa.string()), ("text", pa.string())])


def schema(o: Options) -> pa.Schema:
    return pa.schema([("query_id", pa.string()), ("query", pa.string()),
                      ("positive_passages", pa.list_(PASSAGE)), ("negative_passages", pa.list_(PASSAGE))])


def rows(q: QueryRecord, o: Options, out: dict, skipped: dict) -> None:
    if left_out(q, "tevatron", skipped):
        return
    out["query_id"].append(q.qid)
    out["query"].append(q.text)
    out["positive_passages"].append([{"docid": d, "title": t, "text": x}
                                     for d, t, x in zip(q.pos_ids, q.pos_titles, q.pos_bodies)])
    out["negative_passages"].append([{"docid": d, "title": t, "text": x}
                                     for d, t, x in zip(q.neg["doc_id"], q.neg_titles, q.neg_bodies)])


register(Format("tevatron", schema, rows, help="query_id, query, positive/negative_passages"))
