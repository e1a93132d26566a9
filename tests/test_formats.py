"""Every export format loads with `datasets.load_dataset`, and the sentence-transformers formats train one step
with their loss without renaming a column."""
from __future__ import annotations

from pathlib import Path

import pytest

import negmine
from conftest import SAMPLE

ALL = ["triplet", "n-tuple", "labeled-pair", "labeled-list", "margin-mse", "flagembedding", "tevatron", "ids"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_cross_encoder) -> Path:
    tmp = tmp_path_factory.mktemp("formats")
    formats = "[" + ",".join(f"'{f}'" for f in ALL) + "]"
    negmine.mine(None, [f"input.path='{SAMPLE}'", f"run.cache_dir='{tmp / 'c'}'", f"export.dir='{tmp / 'o'}'",
                        f"export.formats={formats}", "retrieve.top_k=20", "sample.num_negatives=3",
                        f"score.teacher='{tiny_cross_encoder}'", "score.activation='logit'"])
    return tmp / "o"


@pytest.mark.parametrize("fmt", ALL)
@pytest.mark.parametrize("file_type, builder", [("parquet", "parquet"), ("jsonl", "json")])
def test_every_format_loads_with_datasets(exported, fmt, file_type, builder):
    from datasets import load_dataset

    ds = load_dataset(builder, data_files=str(exported / f"{fmt}.{file_type}"), split="train")
    assert ds.num_rows > 0
    expected = {
        "triplet": ["anchor", "positive", "negative"],
        "n-tuple": ["anchor", "positive", "negative_1", "negative_2", "negative_3"],
        "labeled-pair": ["anchor", "document", "label"],
        "labeled-list": ["anchor", "documents", "labels"],
        "margin-mse": ["anchor", "positive", "negative", "label"],
        "flagembedding": ["query", "pos", "neg", "pos_scores", "neg_scores"],
        "tevatron": ["query_id", "query", "positive_passages", "negative_passages"],
    }.get(fmt)
    if expected:
        assert ds.column_names == expected
    row = ds[0]
    if fmt == "tevatron":
        assert set(row["positive_passages"][0]) == {"docid", "title", "text"}
    if fmt == "labeled-list":
        assert row["labels"][0] == 1 and set(row["labels"][1:]) == {0}
    if fmt == "margin-mse":
        assert isinstance(row["label"], float)


def _train_bi(model_dir: Path, ds, loss_name: str, tmp: Path) -> None:
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers import SentenceTransformerTrainingArguments

    model = SentenceTransformer(str(model_dir), device="cpu")
    loss = getattr(losses, loss_name)(model)
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp), max_steps=1, per_device_train_batch_size=4,
                                                report_to=[], save_strategy="no", use_cpu=True,
                                                dataloader_num_workers=0, disable_tqdm=True)
    SentenceTransformerTrainer(model=model, args=args, train_dataset=ds.select(range(8)), loss=loss).train()


def _train_ce(model_dir: Path, ds, loss_name: str, tmp: Path) -> None:
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, losses
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments

    model = CrossEncoder(str(model_dir), device="cpu", local_files_only=True)
    loss = getattr(losses, loss_name)(model)
    args = CrossEncoderTrainingArguments(output_dir=str(tmp), max_steps=1, per_device_train_batch_size=4,
                                         report_to=[], save_strategy="no", use_cpu=True, dataloader_num_workers=0,
                                         disable_tqdm=True)
    CrossEncoderTrainer(model=model, args=args, train_dataset=ds.select(range(8)), loss=loss).train()


@pytest.mark.slow
@pytest.mark.parametrize("fmt, kind, loss", [
    ("triplet", "bi", "MultipleNegativesRankingLoss"),
    ("n-tuple", "bi", "MultipleNegativesRankingLoss"),
    ("margin-mse", "bi", "MarginMSELoss"),
    ("labeled-pair", "ce", "BinaryCrossEntropyLoss"),
    ("labeled-list", "ce", "LambdaLoss"),
])
def test_one_training_step_accepts_the_format(exported, tiny_bi_encoders, tiny_cross_encoder, tmp_path, fmt, kind,
                                              loss):
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=str(exported / f"{fmt}.parquet"), split="train")
    if kind == "bi":
        _train_bi(tiny_bi_encoders[0], ds, loss, tmp_path)
    else:
        _train_ce(tiny_cross_encoder, ds, loss, tmp_path)


def test_jsonl_rows_are_byte_for_byte_what_the_json_module_writes():
    """Export writes JSON Lines column by column (each distinct text escaped once a chunk); every value kind must
    come out exactly as json.JSONEncoder(ensure_ascii=False) writes it."""
    import json

    from negmine.export import _jsonl

    rows = {"anchor": ["q\u2028\"x", "é\\", None, "a%s%%"], "score": [1.5, float("nan"), float("inf"), -float("inf")],
            "ids": [["a", "b"], [], ["\n", [1, None]], ["x", 2.5, float("nan")]], "n": [1, True, False, 10**20], "f": [0.1, 1e-300, -0.0, 3.0],
            "%weird\"key": ["1", "2", "3", "4"], "nested": [{"a": [1.0]}, None, {}, {"b": "\t"}]}
    enc = json.JSONEncoder(ensure_ascii=False)
    want = "".join(enc.encode(dict(zip(rows, v))) + "\n" for v in zip(*rows.values()))
    assert _jsonl(rows) == want
    assert _jsonl({"a": []}) == ""
