"""`negmine init DATA`: a starter config that validates and runs, its preset chosen from the data."""
from __future__ import annotations

import csv
import json
import tomllib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import ROOT, SAMPLE, SHARED, write_beir
from negmine.cli import app
from negmine.config import load_config, validate
from negmine.pipeline import mine
from negmine.starter import PRESETS

# each bundled dataset, the preset its positives a query call for, and the options it needs
DATASETS = {
    "sample": (SAMPLE, "perc-pos-top", []),  # 6.9 positives a query
    "scifact": (SHARED / "scifact", "recommended", []),  # 1.1
    "cisi": (SHARED / "cisi", "perc-pos-top", []),  # 35
    "cranfield": (SHARED / "cranfield", "perc-pos-top", ["--skip-invalid"]),  # 7.2; two empty documents
}


def _init(args: list[str]):
    return CliRunner().invoke(app, ["init", *args])


@pytest.mark.parametrize("name", list(DATASETS))
def test_init_writes_a_valid_config_with_the_preset_the_data_calls_for(name, tmp_path):
    data, preset, options = DATASETS[name]
    if not data.is_dir():
        pytest.skip(f"{data} is not here")
    out = tmp_path / "negmine.toml"
    res = _init([str(data), "-o", str(out), *options])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out) and f"preset {preset}" in res.stderr
    cfg = load_config(out)
    validate(cfg)
    assert Path(cfg["input"]["path"]).resolve() == data.resolve() and cfg["input"]["format"] == "beir"
    for section, values in PRESETS[preset].sections.items():
        for key, value in values.items():
            assert cfg[section][key] == value, (section, key)
    text = out.read_text()
    assert f"# Preset {preset}" in text and "# Why:" in text and "positives a query" in text


def test_init_refuses_to_overwrite_a_file(tmp_path):
    out = tmp_path / "negmine.toml"
    out.write_text("# mine\n")
    res = _init([str(SAMPLE), "-o", str(out)])
    assert res.exit_code == 2 and "already exists" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert out.read_text() == "# mine\n"


def test_init_stops_on_bad_data_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "negmine.toml"
    data = write_beir(tmp_path / "data", [{"_id": "d0", "title": "", "text": ""}, {"_id": "d1", "text": "a"}],
                      [{"_id": "q0", "text": "a"}], [("q0", "d1", 1)])
    res = _init([str(data), "-o", str(out)])
    assert res.exit_code == 2 and "corpus.jsonl, line 1" in res.stderr and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()
    for args, words in (([str(tmp_path / "missing"), "-o", str(out)], "not found"),
                        ([str(SAMPLE), "-o", str(out), "--preset", "nope"], "unknown; choose one of")):
        res = _init(args)
        assert res.exit_code == 2 and words in res.stderr and not out.exists()


def test_init_with_a_preset_uses_it_and_says_what_the_data_would_pick(tmp_path):
    out = tmp_path / "negmine.toml"
    res = _init([str(SAMPLE), "--preset", "bm25", "-o", str(out)])
    assert res.exit_code == 0, res.output
    cfg = load_config(out)
    assert cfg["retrieve"]["retrievers"] == ["bm25"] and cfg["bm25"]["stemmer"] == "english"
    assert "the data alone would pick perc-pos-top" in out.read_text()


@pytest.mark.parametrize("preset", list(PRESETS))
def test_each_preset_matches_its_file_in_configs(preset):
    """configs/ is not installed with the package, so init keeps the presets' settings: they must not drift."""
    p = PRESETS[preset]
    with open(ROOT / "configs" / p.file, "rb") as fh:
        file = tomllib.load(fh)
    for section in set(file) - {"input"}:
        expected = {k: v for k, v in file[section].items() if not (section == "export" and k == "dir")}
        assert p.sections.get(section, {}) == expected, section
    assert set(p.sections) <= set(file)


def _scifact_slice(folder: Path, queries: int = 12, extra_docs: int = 150) -> Path:
    """The first queries of SciFact's train split with their positives and some other abstracts."""
    src = SHARED / "scifact"
    with open(src / "qrels" / "train.tsv", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))[1:]
    qids = list(dict.fromkeys(q for q, _, _ in rows))[:queries]
    qrels = [(q, d, int(s)) for q, d, s in rows if q in qids]
    wanted = {d for _, d, _ in qrels}
    docs, others = [], 0
    with open(src / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            if doc["_id"] in wanted or others < extra_docs:
                others += doc["_id"] not in wanted
                docs.append(doc)
    with open(src / "queries.jsonl", encoding="utf-8") as fh:
        qs = [q for q in map(json.loads, fh) if q["_id"] in qids]
    return write_beir(folder, docs, qs, qrels)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sample", "scifact-slice"])
def test_the_written_config_runs(name, tmp_path):
    if name == "sample":
        data, preset = SAMPLE, "perc-pos-top"
    else:
        if not (SHARED / "scifact").is_dir():
            pytest.skip("../shared/data/scifact is not here")
        data, preset = _scifact_slice(tmp_path / "scifact"), "recommended"
    out = tmp_path / "cfg" / "negmine.toml"
    out.parent.mkdir()
    res = _init([str(data), "-o", str(out)])
    assert res.exit_code == 0 and f"preset {preset}" in res.stderr, res.output
    result = mine(out, cache_dir=tmp_path / "cache")
    exported = Path(load_config(out)["export"]["dir"])
    assert exported.parent.parent == out.parent  # the output lands beside the config, as its comment says
    rows = pq.read_table(exported / "ids.parquet").to_pylist()
    assert rows and sum(len(r["negative_ids"]) for r in rows) > 0
    assert (exported / "report.html").is_file() and "sample" in result.stages
