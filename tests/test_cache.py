"""The stage cache: hits and misses per stage, reasons, --force / --no-cache, atomic entries, resume."""
from __future__ import annotations

from pathlib import Path

import pytest

import negmine
from negmine import sample as sample_mod
from negmine.cache import StageCache
# the stages of a BM25 run without a teacher
STAGES = ("ingest", "index", "retrieve", "exclude", "sample", "export")


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_second_run_recomputes_nothing_and_outputs_are_identical(tmp_path, sample_overrides):
    first = negmine.mine(None, sample_overrides)
    assert first.computed == list(STAGES)
    out1 = _files(tmp_path / "out")
    second = negmine.mine(None, sample_overrides)
    assert second.computed == []
    assert all(r.status == "cached" for r in second.stages.values())
    assert _files(tmp_path / "out") == out1


def test_changing_only_sampling_recomputes_only_sampling_and_export(tmp_path, sample_overrides):
    negmine.mine(None, sample_overrides)
    again = negmine.mine(None, sample_overrides + ["sample.seed=7"])
    assert again.computed == ["sample", "export"]
    assert again.stages["sample"].reason == "parameters changed: seed"
    assert again.stages["export"].reason == "upstream changed: sample"


def test_changing_a_filter_never_reindexes_or_reretrieves(tmp_path, sample_overrides):
    negmine.mine(None, sample_overrides)
    again = negmine.mine(None, sample_overrides + ["exclude.duplicates=false"])
    assert again.computed == ["exclude", "sample", "export"]
    assert {again.stages[s].status for s in ("ingest", "index", "retrieve")} == {"cached"}


def test_changing_bm25_parameters_keeps_ingest(tmp_path, sample_overrides):
    negmine.mine(None, sample_overrides)
    again = negmine.mine(None, sample_overrides + ["bm25.k1=1.2"])
    assert again.stages["ingest"].status == "cached"
    assert again.computed == ["index", "retrieve", "exclude", "sample", "export"]
    assert again.stages["index"].reason == "parameters changed: k1"


def test_memory_only_setting_chunk_size_is_not_part_of_the_key(tmp_path, sample_overrides):
    negmine.mine(None, sample_overrides)
    again = negmine.mine(None, sample_overrides + ["retrieve.chunk_size=7"])
    assert again.computed == []


def test_input_file_change_invalidates_ingest_and_says_why(tmp_path):
    from conftest import write_beir

    data = write_beir(tmp_path / "d", [{"_id": f"d{i}", "text": f"alpha beta doc {i}"} for i in range(6)],
                      [{"_id": "q1", "text": "alpha doc"}], [("q1", "d1", 1)])
    over = [f"input.path='{data}'", f"run.cache_dir='{tmp_path / 'c'}'", f"export.dir='{tmp_path / 'o'}'"]
    negmine.mine(None, over)
    with open(data / "corpus.jsonl", "a") as fh:
        fh.write('{"_id": "d9", "text": "alpha gamma"}\n')
    again = negmine.mine(None, over)
    assert again.stages["ingest"].status == "computed"
    assert again.stages["ingest"].reason == "input changed: corpus.jsonl"


def test_force_recomputes_every_stage(tmp_path, sample_overrides):
    negmine.mine(None, sample_overrides)
    forced = negmine.mine(None, sample_overrides, force=True)
    assert forced.computed == list(STAGES)


def test_no_cache_leaves_no_entries(tmp_path, sample_overrides):
    result = negmine.mine(None, sample_overrides, no_cache=True)
    assert result.computed == list(STAGES)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*/*/meta.json"))
    assert (tmp_path / "out" / "triplet.parquet").is_file()


def test_a_stage_that_fails_midway_leaves_no_entry_and_the_rerun_resumes(tmp_path, sample_overrides, monkeypatch):
    real = sample_mod.sample

    def crash(*args, **kwargs):
        out_dir = args[3]  # sample(params, ingest_dir, kept_path, out_dir)
        (out_dir / "negatives.parquet").write_bytes(b"half a file")
        raise RuntimeError("killed")

    monkeypatch.setattr(sample_mod, "sample", crash)
    with pytest.raises(RuntimeError):
        negmine.mine(None, sample_overrides)
    cache = tmp_path / "cache"
    assert not (cache / "sample").exists()  # no entry, no temporary folder, no empty stage folder
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(sample_mod, "sample", real)
    resumed = negmine.mine(None, sample_overrides)
    assert resumed.computed == ["sample", "export"]


def test_a_failed_export_keeps_the_previous_output_files(tmp_path, sample_overrides, monkeypatch):
    from negmine import export as export_mod

    negmine.mine(None, sample_overrides)
    before = _files(tmp_path / "out")

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_mod, "export", crash)
    with pytest.raises(RuntimeError):
        negmine.mine(None, sample_overrides + ["sample.seed=3"])
    assert _files(tmp_path / "out") == before


def test_cache_ls_and_clear(tmp_path, sample_overrides):
    negmine.mine(None, sample_overrides)
    cache = StageCache(tmp_path / "cache")
    assert sorted(e["stage"] for e in cache.entries()) == sorted(STAGES)
    assert cache.clear("sample") == 1
    assert sorted(e["stage"] for e in cache.entries()) == sorted(set(STAGES) - {"sample"})
    rerun = negmine.mine(None, sample_overrides)
    assert rerun.computed == ["sample"]  # export's key is unchanged, so its entry is reused
    assert cache.clear() == len(STAGES)
    assert cache.entries() == []


def test_low_memory_setting_runs_and_is_in_no_key(tmp_path, sample_overrides):
    first = negmine.mine(None, sample_overrides)
    low = negmine.mine(None, sample_overrides + ["run.low_memory=true"])
    assert low.computed == [] and low.stages["export"].key == first.stages["export"].key
