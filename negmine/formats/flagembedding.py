"""FlagEmbedding's fine-tuning layout (Xiao et al., C-Pack / BGE, 2023): {"query", "pos": [...], "neg": [...]},
one row per query with a negative; with a teacher, `pos_scores` and `neg_scores` for distillation."""
from __future__ import annotations

import pyarrow as pa

from negmine.formats import Format, Options, QueryRecord, left_out, register


def schema(o: Options) -> pa.Schema:
    s, f = pa.string(), pa.list_(pa.float32())
    cols = [("query", s), ("pos", pa.list_(s)), ("neg", pa.list_(s))]
    return pa.schema(cols + ([("pos_scores", f), ("neg_scores", f)] if o.teacher else []))


def rows(q: QueryRecord, o: Options, out: dict, skipped: dict) -> None:
    if left_out(q, "flagembedding", skipped):
        return
    out["query"].append(q.text)
    out["pos"].append(q.pos_texts)
    out["neg"].append(q.neg_texts)
    if o.teacher:
        out["pos_scores"].append(q.pos_teacher)
        out["neg_scores"].append(q.neg["teacher_score"])


register(Format("flagembedding", schema, rows, help="query, pos, neg (FlagEmbedding)"))
