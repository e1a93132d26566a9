"""negmine's audit layout: ids, ranks and scores, no texts; one row per mined query (empty lists when none);
with [cluster] on, the query's `cluster_id` too."""
from __future__ import annotations

import pyarrow as pa

from negmine.formats import Format, Options, QueryRecord, register


def schema(o: Options) -> pa.Schema:
    s, f = pa.string(), pa.list_(pa.float32())
    cols = [("query_id", s), ("positive_ids", pa.list_(s)), ("negative_ids", pa.list_(s)),
            ("negative_ranks", pa.list_(pa.int32())), ("negative_scores", f), ("negative_retrievers", pa.list_(s))]
    cols += [("positive_teacher_scores", f), ("negative_teacher_scores", f)] if o.teacher else []
    return pa.schema(cols + ([("cluster_id", pa.int32())] if o.clusters else [])
                     + ([("negative_teachers", pa.list_(s))] if o.ensemble else []))


def rows(q: QueryRecord, o: Options, out: dict, skipped: dict) -> None:
    out["query_id"].append(q.qid)
    out["positive_ids"].append(q.pos_ids)
    out["negative_ids"].append(q.neg["doc_id"])
    out["negative_ranks"].append(q.neg["rank"])
    out["negative_scores"].append(q.neg["score"])
    out["negative_retrievers"].append(q.neg["retriever"])
    if o.teacher:
        out["positive_teacher_scores"].append(q.pos_teacher)
        out["negative_teacher_scores"].append(q.neg["teacher_score"])
    if o.clusters:
        out["cluster_id"].append(q.cluster)
    if o.ensemble:  # which teacher of the ensemble gave each negative
        out["negative_teachers"].append(q.neg["teacher"])


register(Format("ids", schema, rows, every_query=True, help="ids, ranks and scores (audits)"))
