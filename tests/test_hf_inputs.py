"""Hugging Face inputs (a saved Dataset or DatasetDict split, a Hub dataset in the local cache) and sharded inputs
(a folder of Parquet shards, a glob of JSONL shards) mine exactly what the same rows mine as one pair file; bad
ones stop with one line and exit code 2."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import negmine
from negmine.cli import app
from conftest import SAMPLE

runner = CliRunner()
FORMATS = "export.formats=['triplet','ids']"


def _pair_rows(with_ids: bool) -> list[dict]:
    """The bundled sample as (query, positive) rows, with its own ids when asked."""
    docs = {d["_id"]: d for d in map(json.loads, (SAMPLE / "corpus.jsonl").read_text().splitlines())}
    queries = {q["_id"]: q["text"] for q in map(json.loads, (SAMPLE / "queries.jsonl").read_text().splitlines())}
    rows = []
    for line in (SAMPLE / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        q, d, score = line.split("\t")
        if int(score) >= 1:
            row = {"query": queries[q], "positive": docs[d]["text"]}
            rows.append({"query_id": f"q{q}", **row, "positive_id": f"doc{d}"} if with_ids else row)
    return rows


def _mine(tmp: Path, name: str, path: str, *extra: str) -> Path:
    out = tmp / f"out-{name}"
    negmine.mine(None, [f"input.path={json.dumps(path)}", f"run.cache_dir='{tmp / ('cache-' + name)}'",
                        f"export.dir='{out}'", FORMATS, "retrieve.top_k=30", *extra])
    return out


def _data(out: Path) -> dict[str, pa.Table]:
    return {n: pq.read_table(out / f"{n}.parquet").replace_schema_metadata(None) for n in ("triplet", "ids")}


def _shards(rows: list[dict], n: int) -> list[list[dict]]:
    size = -(-len(rows) // n)
    return [rows[i:i + size] for i in range(0, len(rows), size)]


@pytest.fixture(scope="module", params=[False, True], ids=["text-ids", "given-ids"])
def single(request, tmp_path_factory) -> tuple[list[dict], dict[str, pa.Table], Path]:
    """The rows as one pair file, and what it mines."""
    tmp = tmp_path_factory.mktemp("single")
    rows = _pair_rows(request.param)
    pq.write_table(pa.Table.from_pylist(rows), tmp / "pairs.parquet")
    data = _data(_mine(tmp, "single", str(tmp / "pairs.parquet")))
    assert data["triplet"].num_rows > 100
    return rows, data, tmp


def _saved_dataset(rows, tmp):
    from datasets import Dataset

    Dataset.from_list(rows).save_to_disk(str(tmp / "saved"), num_shards=2)  # two Arrow files, read in order
    return str(tmp / "saved"), ()


def _saved_dict_split(rows, tmp):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(rows[:7]), "dev": Dataset.from_list(rows)}).save_to_disk(
        str(tmp / "dd"))
    return str(tmp / "dd"), ("input.split='dev'", "input.format='hf'")


def _parquet_shards(rows, tmp):
    (tmp / "shards").mkdir()
    for i, part in enumerate(_shards(rows, 3)):
        pq.write_table(pa.Table.from_pylist(part), tmp / "shards" / f"part-{i}.parquet")
    return str(tmp / "shards"), ()


def _jsonl_glob(rows, tmp):
    (tmp / "j").mkdir()
    for i, part in enumerate(_shards(rows, 11)):  # part-10 comes after part-9: natural order
        (tmp / "j" / f"part-{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    (tmp / "j" / "notes.txt").write_text("not a shard, not matched")
    return str(tmp / "j" / "part-*.jsonl"), ()


@pytest.mark.parametrize("make", [_saved_dataset, _saved_dict_split, _parquet_shards, _jsonl_glob],
                         ids=["saved-dataset", "saved-datasetdict-split", "parquet-shard-folder", "jsonl-glob"])
def test_each_input_kind_mines_what_the_single_pair_file_mines(single, make, tmp_path):
    rows, expected, _ = single
    path, extra = make(rows, tmp_path)
    got = _data(_mine(tmp_path, "x", path, *extra))
    for name in expected:
        assert got[name].equals(expected[name]), name
    if "query_id" in rows[0]:
        assert set(got["ids"]["query_id"].to_pylist()) <= {r["query_id"] for r in rows}  # the given ids, kept


def _fake_hub_cache(root: Path, repo: str, rows: list[dict]) -> None:
    """A Hub dataset as huggingface_hub caches it: refs/main names a snapshot holding the repo's files."""
    folder = root / ("datasets--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    data = folder / "snapshots" / commit / "data"
    data.mkdir(parents=True)
    parts = _shards(rows, 2)
    for i, part in enumerate(parts):
        pq.write_table(pa.Table.from_pylist(part), data / f"train-{i:05d}-of-{len(parts):05d}.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:3]), data / "test-00000-of-00001.parquet")
    (folder / "snapshots" / commit / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n")


@pytest.fixture
def hub_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf-home" / "hub"


def test_a_cached_hub_dataset_mines_what_the_single_pair_file_mines(single, hub_home, tmp_path):
    rows, expected, _ = single
    _fake_hub_cache(hub_home, "someone/pairs", rows)
    got = _data(_mine(tmp_path, "hub", "hf://datasets/someone/pairs", "input.format='hf'"))
    for name in expected:
        assert got[name].equals(expected[name]), name


def test_a_hub_dataset_split_reads_only_that_splits_files(hub_home, tmp_path):
    rows = _pair_rows(True)
    _fake_hub_cache(hub_home, "someone/pairs", rows)
    out = _mine(tmp_path, "hub-test", "hf://datasets/someone/pairs", "input.split='test'")
    assert set(pq.read_table(out / "ids.parquet")["query_id"].to_pylist()) == {r["query_id"] for r in rows[:3]}


def _cli(tmp_path: Path, *args: str, env: dict | None = None):
    return runner.invoke(app, ["run", "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "-q",
                               *args], env=env)


def _one_error_line(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error:") and result.stderr.strip().count("\n") == 0, result.stderr
    for w in words:
        assert w in result.stderr, result.stderr


def test_a_missing_column_in_a_saved_dataset_is_one_line_naming_the_columns(tmp_path):
    from datasets import Dataset

    Dataset.from_list([{"question": "q", "answer": "a"}]).save_to_disk(str(tmp_path / "ds"))
    result = _cli(tmp_path, "-i", str(tmp_path / "ds"), "--set", "input.format='hf'")
    _one_error_line(result, "no column 'query' or 'anchor'", "question, answer", "query_column")
    assert not (tmp_path / "out").exists()


def test_a_missing_id_column_in_shards_is_one_line(tmp_path):
    (tmp_path / "s").mkdir()
    pq.write_table(pa.Table.from_pylist(_pair_rows(False)[:5]), tmp_path / "s" / "a.parquet")
    result = _cli(tmp_path, "-i", str(tmp_path / "s"), "--set", "input.query_id_column='qid'")
    _one_error_line(result, "a.parquet", "no column 'qid'")


@pytest.mark.parametrize("make, words", [
    (lambda p: p.mkdir(), ["is not a dataset", "save_to_disk"]),
    (lambda p: (p.mkdir(), (p / "notes.txt").write_text("x")), ["is not a dataset"]),
    (lambda p: p.with_suffix(".txt").write_text("x") and None, ["is not a dataset"]),
])
def test_a_dataset_path_that_is_not_a_dataset_is_one_line(tmp_path, make, words):
    target = tmp_path / "ds"
    make(target)
    path = target if target.exists() else target.with_suffix(".txt")
    result = _cli(tmp_path, "-i", str(path), "--set", "input.format='hf'")
    _one_error_line(result, *words)
    assert not (tmp_path / "out").exists() and not list((tmp_path / "cache").glob("ingest/*/meta.json"))


def test_a_saved_datasetdict_without_the_split_names_its_splits(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(_pair_rows(False)[:3])}).save_to_disk(str(tmp_path / "dd"))
    result = _cli(tmp_path, "-i", str(tmp_path / "dd"), "--set", "input.split='dev'")
    _one_error_line(result, "no split 'dev'", "splits: train")


def test_a_hub_dataset_not_in_the_cache_offline_is_one_line(tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), "HF_HUB_OFFLINE": "1"}
    result = _cli(tmp_path, "-i", "hf://datasets/someone/absent", "--set", "input.format='hf'", env=env)
    _one_error_line(result, "not in the local Hugging Face cache", "allow_download")
    allowed = _cli(tmp_path, "-i", "hf://datasets/someone/absent", "--set", "input.allow_download=true", env=env)
    _one_error_line(allowed, "HF_HUB_OFFLINE is set")
    assert not (tmp_path / "out").exists()


def test_a_glob_matching_nothing_and_mixed_shards_are_one_line(tmp_path):
    _one_error_line(_cli(tmp_path, "-i", str(tmp_path / "none-*.parquet")), "matches no file")
    (tmp_path / "m").mkdir()
    pq.write_table(pa.Table.from_pylist(_pair_rows(False)[:3]), tmp_path / "m" / "a.parquet")
    (tmp_path / "m" / "b.jsonl").write_text(json.dumps(_pair_rows(False)[3]) + "\n")
    _one_error_line(_cli(tmp_path, "-i", str(tmp_path / "m")), "mixes Parquet and JSONL")


def test_allow_download_is_in_no_key(tmp_path):
    (tmp_path / "s").mkdir()
    pq.write_table(pa.Table.from_pylist(_pair_rows(False)), tmp_path / "s" / "a.parquet")
    first = negmine.mine(None, [f"input.path='{tmp_path / 's'}'", f"run.cache_dir='{tmp_path / 'c'}'",
                                f"export.dir='{tmp_path / 'o'}'"])
    again = negmine.mine(None, [f"input.path='{tmp_path / 's'}'", f"run.cache_dir='{tmp_path / 'c'}'",
                                f"export.dir='{tmp_path / 'o'}'", "input.allow_download=true"])
    assert first.stages["ingest"].key == again.stages["ingest"].key and not again.computed


@pytest.mark.parametrize("setting", ["input.positive_column=''", "input.corpus_text_column='  '"])
def test_an_empty_text_column_name_is_refused_before_any_work(tmp_path, setting):
    result = _cli(tmp_path, "-i", str(SAMPLE), "--set", setting)
    _one_error_line(result, setting.split("=")[0].split(".")[1], "is empty")
    assert not (tmp_path / "cache").exists()


def test_id_columns_are_in_the_ingest_key(tmp_path):
    rows = _pair_rows(True)
    pq.write_table(pa.Table.from_pylist([{**r, "qid2": "x" + r["query_id"]} for r in rows]), tmp_path / "p.parquet")
    base = [f"input.path='{tmp_path / 'p.parquet'}'", f"run.cache_dir='{tmp_path / 'c'}'",
            f"export.dir='{tmp_path / 'o'}'", FORMATS]
    first = negmine.mine(None, base)
    other = negmine.mine(None, base + ["input.query_id_column='qid2'"])
    assert "ingest" in other.computed and first.stages["ingest"].key != other.stages["ingest"].key
    assert all(q.startswith("xq") for q in pq.read_table(tmp_path / "o" / "ids.parquet")["query_id"].to_pylist())
