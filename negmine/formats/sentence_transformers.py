"""sentence-transformers training formats (the column layouts of `mine_hard_negatives` and its losses).

sentence-transformers feeds every column but `label`/`score` to the model, in order, so these files hold only
those columns and train without renaming:
- triplet (anchor, positive, negative): one row per (query, positive, negative); MultipleNegativesRankingLoss.
- n-tuple (anchor, positive, negative_1..n): one row per (query, positive); queries short of n are left out.
- labeled-pair (anchor, document, label | score): the positives with 1 and the negatives with 0, or their scores
  with `export.scores`; e.g. BinaryCrossEntropyLoss for a cross-encoder.
- labeled-list (anchor, documents, labels | scores): one row per (query, positive): [positive, negatives...];
  e.g. LambdaLoss / ListNetLoss.
- margin-mse (anchor, positive, negative, label): label = s(positive) - s(negative) on the teacher's scale
  (Hofstätter et al., "Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge Distillation",
  2020); MarginMSELoss.
"""
from __future__ import annotations

import pyarrow as pa

from negmine.formats import Format, Options, QueryRecord, left_out, register

S, F = pa.string(), pa.float32()


def triplet_schema(o: Options) -> pa.Schema:
    return pa.schema([("anchor", S), ("positive", S), ("negative", S)])


def triplet_rows(q: QueryRecord, o: Options, rows: dict, skipped: dict) -> None:
    for p in q.pos_texts:
        rows["anchor"] += [q.text] * len(q.neg_texts)
        rows["positive"] += [p] * len(q.neg_texts)
        rows["negative"] += q.neg_texts


def ntuple_schema(o: Options) -> pa.Schema:
    return pa.schema([("anchor", S), ("positive", S)] + [(f"negative_{i}", S) for i in range(1, o.num_negatives + 1)])


def ntuple_rows(q: QueryRecord, o: Options, rows: dict, skipped: dict) -> None:
    if left_out(q, "n-tuple", skipped, o.num_negatives):
        return
    for p in q.pos_texts:
        rows["anchor"].append(q.text)
        rows["positive"].append(p)
        for i in range(o.num_negatives):
            rows[f"negative_{i + 1}"].append(q.neg_texts[i])


def _label_name(o: Options, plural: bool) -> str:
    return ("scores" if plural else "score") if o.scores else ("labels" if plural else "label")


def labeled_pair_schema(o: Options) -> pa.Schema:
    return pa.schema([("anchor", S), ("document", S), (_label_name(o, False), F if o.scores else pa.int64())])


def labeled_pair_rows(q: QueryRecord, o: Options, rows: dict, skipped: dict) -> None:
    label = _label_name(o, False)
    pos_values = q.pos_scores if o.scores else [1] * len(q.pos_texts)
    neg_values = q.neg["filter_score"] if o.scores else [0] * len(q.neg_texts)
    for text, value in zip(q.pos_texts + q.neg_texts, list(pos_values) + list(neg_values)):
        rows["anchor"].append(q.text)
        rows["document"].append(text)
        rows[label].append(value)


def labeled_list_schema(o: Options) -> pa.Schema:
    kind = pa.list_(F) if o.scores else pa.list_(pa.int64())
    return pa.schema([("anchor", S), ("documents", pa.list_(S)), (_label_name(o, True), kind)])


def labeled_list_rows(q: QueryRecord, o: Options, rows: dict, skipped: dict) -> None:
    if left_out(q, "labeled-list", skipped):
        return
    label = _label_name(o, True)
    for i, p in enumerate(q.pos_texts):
        rows["anchor"].append(q.text)
        rows["documents"].append([p] + q.neg_texts)
        rows[label].append([q.pos_scores[i]] + list(q.neg["filter_score"]) if o.scores
                           else [1] + [0] * len(q.neg_texts))


def margin_mse_schema(o: Options) -> pa.Schema:
    return pa.schema([("anchor", S), ("positive", S), ("negative", S), ("label", F)])


def margin_mse_rows(q: QueryRecord, o: Options, rows: dict, skipped: dict) -> None:
    for p, sp in zip(q.pos_texts, q.pos_scores):
        for n, sn in zip(q.neg_texts, q.neg["filter_score"]):
            if sn is None:  # a pad-random filler has no score
                continue
            rows["anchor"].append(q.text)
            rows["positive"].append(p)
            rows["negative"].append(n)
            rows["label"].append(sp - sn)


register(Format("triplet", triplet_schema, triplet_rows, help="anchor, positive, negative"))
register(Format("n-tuple", ntuple_schema, ntuple_rows, help="anchor, positive, negative_1..n"))
register(Format("labeled-pair", labeled_pair_schema, labeled_pair_rows, needs_scores_with_option=True,
                help="anchor, document, label or score"))
register(Format("labeled-list", labeled_list_schema, labeled_list_rows, needs_scores_with_option=True,
                help="anchor, documents, labels or scores"))
register(Format("margin-mse", margin_mse_schema, margin_mse_rows, needs_scores=True,
                help="anchor, positive, negative, label = s(pos) - s(neg)"))
