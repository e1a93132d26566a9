"""Trust in CI (issue #15): no silent misreads of qrels, a cache that verifies what it serves, concurrent runs on
one cache that all succeed, settings that cannot be NaN or out of range, and clean failures (one line, exit 2)
when memory or disk run out, or 130/143 on SIGINT/SIGTERM, leaving the previous outputs as they were."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import negmine
from negmine.cli import app
from conftest import SAMPLE, write_beir

REPO = Path(__file__).resolve().parents[1]
DOCS = [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate([
    "cats purr and sleep in the sun", "dogs bark and fetch sticks in the park", "birds sing and fly over the park",
    "fish swim in the cold river", "horses run across the green field", "cows graze in the green field and sleep"])]
QUERIES = [{"_id": "q0", "text": "which animals sleep in the sun"}, {"_id": "q1", "text": "animals in the park"}]


def _beir_with_qrels(root: Path, qrels_text: str, encoding: str = "utf-8") -> Path:
    folder = write_beir(root / "beir", DOCS, QUERIES, [])
    (folder / "qrels" / "train.tsv").write_text(qrels_text, encoding=encoding)
    return folder


def _cli(tmp_path: Path, *args: str):
    return CliRunner().invoke(app, [*args, "--cache-dir", str(tmp_path / "cache"), "-q"])


def _run(tmp_path: Path, data: Path, *extra: str):
    return _cli(tmp_path, "run", "-i", str(data), "-o", str(tmp_path / "out"), "--set", "retrieve.top_k=5",
                "--set", "sample.num_negatives=2", "--set", "export.formats=['ids']", *extra)


def _one_line_error(result, code: int = 2) -> str:
    err = result.stderr.strip()
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "\n" not in err and err.startswith("error:"), err
    assert "Traceback" not in result.output
    return err


def _qrels_rows(tmp_path: Path) -> list[tuple[str, str, int]]:
    entry = next((tmp_path / "cache" / "ingest").glob("*/meta.json")).parent
    return [(r["query_id"], r["doc_id"], r["score"]) for r in pq.read_table(entry / "qrels.parquet").to_pylist()]


def _negatives(tmp_path: Path) -> dict[str, list[str]]:
    rows = [json.loads(line) for line in (tmp_path / "out" / "ids.jsonl").read_text().splitlines()]
    return {r["query_id"]: r["negative_ids"] for r in rows}


# --------------------------------------------------------------------------------------------------- 1. qrels


def test_a_fourth_annotator_column_under_the_beir_header_keeps_the_positive(tmp_path):
    data = _beir_with_qrels(tmp_path, "query-id\tcorpus-id\tscore\tannotator\nq0\td0\t1\t7\nq1\td1\t1\tchecked\n")
    result = _run(tmp_path, data)
    assert result.exit_code == 0, result.output
    assert sorted(_qrels_rows(tmp_path)) == [("q0", "d0", 1), ("q1", "d1", 1)]
    negatives = _negatives(tmp_path)
    assert "d0" not in negatives["q0"] and "d1" not in negatives["q1"]


def test_headerless_four_field_lines_read_as_trec_qrels(tmp_path):
    data = _beir_with_qrels(tmp_path, "q0 0 d0 1\nq1\tQ0\td1\t2\n")
    assert _run(tmp_path, data).exit_code == 0
    assert sorted(_qrels_rows(tmp_path)) == [("q0", "d0", 1), ("q1", "d1", 2)]


def test_qrels_format_trec_reads_space_separated_lines(tmp_path):
    data = _beir_with_qrels(tmp_path, "q0 0 d0 1\nq1 0 d1 1\n")
    assert _run(tmp_path, data, "--set", "input.qrels_format='trec'").exit_code == 0
    assert sorted(_qrels_rows(tmp_path)) == [("q0", "d0", 1), ("q1", "d1", 1)]


@pytest.mark.parametrize("text,fragments", [
    # the line: as TREC it would judge document "1" with grade 7, as BEIR d0 with grade 1
    ("q0\td0\t1\t7\nq1\td1\t1\t7\n", ("line 1", "TREC (qid, iter, docid, rel)", "BEIR", "qrels_format")),
    ("qid\tdocid\trel\tannotator\nq0\td0\t1\tx\n", ("line 1", "TREC (qid, iter, docid, rel)", "BEIR",
                                                   "query-id, corpus-id, score")),
    ("q0\td0\t1\nq1 0 d1 1\n", ("line 2", "TREC", "BEIR")),
])
def test_qrels_that_read_two_ways_are_refused_naming_both_readings(tmp_path, text, fragments):
    err = _one_line_error(_run(tmp_path, _beir_with_qrels(tmp_path, text)))
    for fragment in ("train.tsv", *fragments):
        assert fragment in err, err
    assert not (tmp_path / "cache").exists()  # nothing written: no fingerprints.json, no empty ingest/


def test_a_header_with_qrels_format_trec_is_refused(tmp_path):
    data = _beir_with_qrels(tmp_path, "query-id\tcorpus-id\tscore\nq0\td0\t1\n")
    err = _one_line_error(_run(tmp_path, data, "--set", "input.qrels_format='trec'"))
    assert "header" in err and "qrels_format" in err


def test_a_byte_order_mark_in_qrels_is_accepted_and_keeps_the_first_judgment(tmp_path):
    data = _beir_with_qrels(tmp_path, "query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\n", encoding="utf-8-sig")
    assert _run(tmp_path, data).exit_code == 0
    assert sorted(_qrels_rows(tmp_path)) == [("q0", "d0", 1), ("q1", "d1", 1)]
    headerless = _beir_with_qrels(tmp_path / "b", "q0\td0\t1\nq1\td1\t1\n", encoding="utf-8-sig")
    assert _run(tmp_path / "b", headerless, "--skip-invalid").exit_code == 0
    assert sorted(_qrels_rows(tmp_path / "b")) == [("q0", "d0", 1), ("q1", "d1", 1)]


def test_a_toml_config_with_a_byte_order_mark_loads(tmp_path):
    from negmine.config import load_config

    path = tmp_path / "c.toml"
    path.write_text("[sample]\nseed = 7\n", encoding="utf-8-sig")
    assert load_config(path)["sample"]["seed"] == 7


@pytest.mark.parametrize("line,problem", [
    ('{"_id": "d9", "text": "bad \\ud800 text"}', "lone surrogate"),
    ('{"_id": "d9", "text": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
])
def test_unrepresentable_json_lines_give_file_and_line(tmp_path, line, problem):
    data = write_beir(tmp_path / "beir", DOCS, QUERIES, [("q0", "d0", 1)])
    with open(data / "corpus.jsonl", "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
    err = _one_line_error(_run(tmp_path, data))
    assert "corpus.jsonl, line 7" in err and problem in err


# ------------------------------------------------------------------------------------- 2. a verifying cache


DATA = ("triplet", "n-tuple", "flagembedding", "ids", "provenance")


def _files(out: Path) -> dict[str, bytes]:
    """The mined data and its provenance (the report also records which stages were cached)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name.startswith(DATA)}


def _entry(tmp_path: Path, stage: str) -> Path:
    entries = [p.parent for p in (tmp_path / "cache" / stage).glob("*/meta.json")]
    assert len(entries) == 1, entries
    return entries[0]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_negatives(path: Path) -> None:  # a valid Parquet file with fewer rows: sizes differ, content too
    table = pq.read_table(path)
    pq.write_table(table.slice(0, 3), path)


def _zero(path: Path) -> None:  # same size, all zero bytes
    path.write_bytes(bytes(path.stat().st_size))


CORRUPTIONS = {
    "truncated export file": ("export", "triplet.parquet", _truncate),
    "edited but valid negatives": ("sample", "negatives.parquet", _edit_negatives),
    "zeroed index file": ("index", None, _zero),
    "missing candidates": ("retrieve", "candidates.parquet", lambda p: p.unlink()),
    "broken meta.json": ("ingest", "meta.json", _truncate),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_damaged_entry_is_reported_recomputed_and_never_used(tmp_path, sample_overrides, case, caplog):
    stage, name, damage = CORRUPTIONS[case]
    negmine.mine(None, sample_overrides)
    clean = _files(tmp_path / "out")
    entry = _entry(tmp_path, stage)
    target = entry / name if name else max((p for p in entry.rglob("*") if p.is_file() and p.name != "meta.json"),
                                           key=lambda p: p.stat().st_size)
    damage(target)
    (tmp_path / "out" / "triplet.parquet").unlink()  # so the output must come from a sound entry again
    again = negmine.mine(None, sample_overrides)
    assert again.stages[stage].status == "computed"
    assert again.stages[stage].reason == "cached entry damaged"
    assert [r.message for r in caplog.records if "damaged" in r.message], "the damage was not reported"
    assert _files(tmp_path / "out") == clean
    assert again.computed == [stage]  # the entry's key did not change, so nothing downstream reruns


def test_a_zeroed_dense_shard_is_recomputed(tmp_path, tiny_bi_encoders):
    over = [f"input.path='{SAMPLE}'", f"run.cache_dir='{tmp_path / 'cache'}'", f"export.dir='{tmp_path / 'out'}'",
            "retrieve.retrievers=['dense']", f"dense.model='{tiny_bi_encoders[0]}'", "retrieve.top_k=10",
            "export.formats=['triplet','ids']"]
    negmine.mine(None, over)
    clean = _files(tmp_path / "out")
    _zero(_entry(tmp_path, "encode") / "docs-00000.npy")
    again = negmine.mine(None, over)
    assert again.stages["encode"].status == "computed"
    assert _files(tmp_path / "out") == clean


def test_cache_verify_finds_an_edited_file_and_ls_marks_a_truncated_one(tmp_path, sample_overrides):
    negmine.mine(None, sample_overrides)
    runner = CliRunner()
    root = str(tmp_path / "cache")
    assert runner.invoke(app, ["cache", "verify", "--cache-dir", root]).exit_code == 0
    _zero(_entry(tmp_path, "sample") / "negatives.parquet")  # same size: only a content hash sees it
    verify = runner.invoke(app, ["cache", "verify", "--cache-dir", root])
    assert verify.exit_code == 2
    assert "damaged: sample" in verify.stdout and "negatives.parquet" in verify.stdout
    _truncate(_entry(tmp_path, "retrieve") / "candidates.parquet")
    listing = runner.invoke(app, ["cache", "ls", "--cache-dir", root])
    damaged = [line for line in listing.stdout.splitlines() if line.endswith("DAMAGED")]
    assert len(damaged) == 1 and damaged[0].startswith("retrieve")
    assert runner.invoke(app, ["cache", "verify", "--cache-dir", root, "--remove"]).exit_code == 2
    assert runner.invoke(app, ["cache", "verify", "--cache-dir", root]).exit_code == 0


def test_stale_temporary_folders_are_cleaned_and_resume_state_is_kept(tmp_path, sample_overrides):
    negmine.mine(None, sample_overrides)
    stage_dir = tmp_path / "cache" / "sample"
    key = _entry(tmp_path, "sample").name
    stale_tmp = stage_dir / f".tmp-{'0' * 64}-abc"
    stale_partial = stage_dir / f".partial-{key}"  # its entry is complete: useless
    resume = stage_dir / f".partial-{'1' * 64}"  # no entry: resume state of a killed run
    for folder in (stale_tmp, stale_partial, resume):
        folder.mkdir()
        (folder / "half.parquet").write_bytes(b"half")
        os.utime(folder, (time.time() - 3600, time.time() - 3600))
    negmine.mine(None, sample_overrides + ["sample.seed=7"])
    assert not stale_tmp.exists() and not stale_partial.exists()
    assert resume.exists()
    assert not list(stage_dir.glob(".lock-*"))


def test_a_cached_run_records_no_memory_only_setting_in_provenance(tmp_path, sample_overrides):
    negmine.mine(None, sample_overrides + ["retrieve.chunk_size=7"])
    again = negmine.mine(None, sample_overrides + ["retrieve.chunk_size=9"])
    assert again.computed == []
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert "chunk_size" not in prov["config"]["retrieve"]
    assert prov["config"]["retrieve"]["top_k"] == 100


def test_a_damaged_pair_store_part_is_reported_and_its_pairs_scored_again(tmp_path, tiny_cross_encoder, caplog):
    over = [f"input.path='{SAMPLE}'", f"run.cache_dir='{tmp_path / 'cache'}'", f"export.dir='{tmp_path / 'out'}'",
            f"score.teacher='{tiny_cross_encoder}'", "retrieve.top_k=10", "score.flush_pairs=200",
            "export.formats=['ids']"]
    first = negmine.mine(None, over)
    clean = _files(tmp_path / "out")
    parts = sorted((tmp_path / "cache" / "pairs").glob("*/part-*.parquet"))
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts[:2])
    _zero(parts[0])  # same size: only its content name shows the damage
    _truncate(parts[1])
    rescored = negmine.mine(None, over, force=True)
    damaged = [r.message for r in caplog.records if "pair store part" in r.message]
    assert len(damaged) == 2
    assert rescored.stages["score"].stats["scored_now"] == rows
    assert _files(tmp_path / "out") == clean
    assert first.stages["score"].stats["distinct_pairs"] == rescored.stages["score"].stats["distinct_pairs"]


def test_publishing_refuses_an_export_file_that_changed_after_it_was_recorded(tmp_path, sample_overrides):
    from negmine.publish import DamagedEntryError, publish

    negmine.mine(None, sample_overrides)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    entry = _entry(tmp_path, "export")
    _zero(entry / "triplet.jsonl")
    with pytest.raises(DamagedEntryError, match="triplet.jsonl"):
        publish(entry, tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


# ------------------------------------------------------------------------------------ 3. concurrent runs


def _spawn(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "NEGMINE_PROGRESS": "0"}
    return subprocess.Popen([sys.executable, "-m", "negmine", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _concurrent(tmp_path: Path, sets: list[str], n: int = 4) -> list[dict[str, bytes]]:
    """n processes started at once on one config and one cache; two of them publish into the same folder."""
    config = tmp_path / "c.toml"
    config.write_text(f"[input]\npath = '{SAMPLE}'\n[run]\ncache_dir = '{tmp_path / 'cache'}'\n")
    outs = [tmp_path / "out-a", tmp_path / "out-a", *(tmp_path / f"out-{i}" for i in range(2, n))]
    procs = [_spawn(["run", str(config), "-q", "-o", str(out), *[a for s in sets for a in ("--set", s)]], tmp_path)
             for out in outs]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    cache = tmp_path / "cache"
    leftovers = [p for p in cache.rglob(".*") if p.name.startswith((".tmp-", ".partial-", ".lock", ".damaged-",
                                                                       ".old-"))]
    assert leftovers == []
    for stage_dir in cache.iterdir():
        if stage_dir.is_dir() and stage_dir.name != "pairs":
            assert len(list(stage_dir.glob("*/meta.json"))) == 1, stage_dir  # each entry computed once
    return [_files(out) for out in sorted(set(outs))]


def test_four_simultaneous_bm25_runs_on_one_cache_all_succeed_with_identical_outputs(tmp_path):
    results = _concurrent(tmp_path, ["export.formats=['triplet','ids']"])
    assert results[0] and all(r == results[0] for r in results)


def test_four_simultaneous_dense_runs_on_one_cache_all_succeed_with_identical_outputs(tmp_path, tiny_bi_encoders):
    results = _concurrent(tmp_path, ["retrieve.retrievers=['dense']", f"dense.model='{tiny_bi_encoders[0]}'",
                                     "dense.shard_size=100", "retrieve.top_k=20", "export.formats=['ids']"])
    assert results[0] and all(r == results[0] for r in results)


def test_four_simultaneous_teacher_runs_on_one_cache_all_succeed_with_identical_outputs(tmp_path,
                                                                                      tiny_cross_encoder):
    results = _concurrent(tmp_path, [f"score.teacher='{tiny_cross_encoder}'", "retrieve.top_k=10",
                                     "score.flush_pairs=200", "export.formats=['ids']"])
    assert results[0] and all(r == results[0] for r in results)
    parts = list((tmp_path / "cache" / "pairs").glob("*/part-*.parquet"))
    pairs = pa.concat_tables([pq.read_table(p) for p in parts])
    assert pairs.num_rows == pairs.group_by(["qkey", "dkey"]).aggregate([]).num_rows  # no pair scored twice


# ------------------------------------------------------------------------------------------ 4. validation


@pytest.mark.parametrize("setting,fragment", [
    ("bm25.k1=nan", "[bm25] k1 is nan"), ("bm25.k1=inf", "[bm25] k1 is inf"), ("bm25.b=1.5", "in [0, 1]"),
    ("bm25.delta=-inf", "[bm25] delta"), ("sample.temperature=nan", "[sample] temperature"),
    ("filter.margin=nan", "[filter] margin"), ("filter.alpha=2.0", "[filter] alpha"),
    ("filter.ce_max_probability=inf", "[filter] ce_max_probability"), ("filter.tau=-inf", "[filter] tau"),
    ("sample.simans_b=nan", "[sample] simans_b"), ("input.holdout_frac=nan", "[input] holdout_frac"),
    ("export.dir=''", "[export] dir is empty"), ("filter.near_dup_cosine=1.5", "[filter] near_dup_cosine"),
])
def test_nan_infinite_out_of_range_and_empty_settings_are_refused_before_any_work(tmp_path, setting, fragment):
    result = _cli(tmp_path, "run", "-i", str(SAMPLE), "-o", str(tmp_path / "out"), "--set", setting)
    err = _one_line_error(result)
    assert fragment in err, err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_every_numeric_setting_has_a_range():
    from negmine.config import OPTIONAL_NUMBERS, RANGES, defaults

    numeric = {(s, k) for s, t in defaults().items() for k, v in t.items()
               if (s, k) in OPTIONAL_NUMBERS or (isinstance(v, (int, float)) and not isinstance(v, bool))}
    assert numeric == set(RANGES)


def test_an_output_folder_that_cannot_be_created_is_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    err = _one_line_error(_cli(tmp_path, "run", "-i", str(SAMPLE), "-o", str(tmp_path / "file" / "out")))
    assert "is a file" in err
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------------- 5. resources, publishing, signals


def _previous_run(tmp_path: Path) -> tuple[list[str], dict[str, bytes]]:
    args = ["run", "-i", str(SAMPLE), "-o", str(tmp_path / "out"), "--set",
            "export.formats=['triplet','n-tuple','ids']"]
    assert _cli(tmp_path, *args).exit_code == 0
    return args, {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}


def test_a_full_output_disk_leaves_the_previous_outputs_exactly_as_they_were(tmp_path, monkeypatch):
    from negmine import publish as publish_mod

    args, before = _previous_run(tmp_path)
    real, calls = publish_mod._copy, []

    def full_disk(src, dest):
        calls.append(dest)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dest)

    monkeypatch.setattr(publish_mod, "_copy", full_disk)
    # another seed: every data file would change, and ids.jsonl would go
    err = _one_line_error(_cli(tmp_path, *args[:-1], "export.formats=['triplet','n-tuple']", "--set",
                               "sample.seed=7", "--set", "sample.strategy='random'"))
    assert "no space left" in err and str(tmp_path / "out") in err and "stage 'export'" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def test_a_full_cache_disk_is_one_line_naming_the_stage_and_leaves_no_entry(tmp_path, monkeypatch):
    from negmine import sample as sample_mod

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sample_mod, "sample", full_disk)
    err = _one_line_error(_cli(tmp_path, "run", "-i", str(SAMPLE), "-o", str(tmp_path / "out")))
    assert "no space left" in err and "stage 'sample'" in err and str(tmp_path / "cache" / "sample") in err
    assert not (tmp_path / "cache" / "sample").exists() and not (tmp_path / "out").exists()


def test_a_parquet_write_failing_on_the_writer_thread_is_one_line_and_leaves_no_export(tmp_path, monkeypatch):
    """Export writes Parquet row groups on a thread of its own: an error there must still stop the run."""
    import threading

    import pyarrow.parquet as pq

    real, threads = pq.ParquetWriter.write_table, []

    def full_disk(self, table, *args, **kwargs):
        if threading.current_thread() is not threading.main_thread():  # the export's writer thread
            threads.append(threading.current_thread().name)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full_disk)
    err = _one_line_error(_cli(tmp_path, "run", "-i", str(SAMPLE), "-o", str(tmp_path / "out")))
    assert "no space left" in err and "stage 'export'" in err
    assert len(threads) == 1 and all(name.startswith("negmine-parquet") for name in threads)
    assert not list((tmp_path / "cache").glob("export/*/meta.json")) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("exc", [MemoryError(), RuntimeError("std::bad_alloc"),
                                 RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                                              "not enough memory: you tried to allocate 1073741824 bytes.")])
def test_memory_exhaustion_is_one_line_naming_the_stage_and_what_to_change(tmp_path, monkeypatch, exc):
    from negmine import retrieve as retrieve_mod

    def exhausted(*args, **kwargs):
        raise exc

    monkeypatch.setattr(retrieve_mod, "write_candidates", exhausted)
    err = _one_line_error(_cli(tmp_path, "run", "-i", str(SAMPLE), "-o", str(tmp_path / "out")))
    assert "out of memory in stage 'retrieve'" in err and "chunk_size" in err and "low_memory" in err
    assert not list((tmp_path / "cache").glob("retrieve/*/meta.json"))


def test_a_thread_that_cannot_start_is_one_line_naming_the_stage(tmp_path, monkeypatch):
    from negmine.retrievers import bm25 as bm25_mod

    def no_threads(*args, **kwargs):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(bm25_mod, "build_index", no_threads)
    err = _one_line_error(_cli(tmp_path, "run", "-i", str(SAMPLE), "-o", str(tmp_path / "out")))
    assert "could not start a thread in stage 'index'" in err and "OMP_NUM_THREADS" in err


def test_a_real_address_space_limit_ends_with_one_line_and_exit_2(tmp_path):
    """A child process under RLIMIT_AS (ulimit -v) that imports everything, then mines with a retrieval
    chunk far beyond the limit: Python or Arrow fail to allocate, and the run says so in one line."""
    script = f"""
import resource, sys
import numpy, pyarrow, pyarrow.parquet, bm25s, scipy.sparse
import negmine.pipeline, negmine.retrieve, negmine.retrievers.bm25
from negmine.cli import app
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
with open('/proc/self/status') as fh:
    vm = next(int(l.split()[1]) * 1024 for l in fh if l.startswith('VmSize'))
resource.setrlimit(resource.RLIMIT_AS, (vm + 4 * 2**30, hard))  # room to mine, not for 16 GiB
import numpy as np
real = negmine.retrieve.write_candidates
def big(*a, **k):
    np.ones(2**31, dtype=np.float64)  # 16 GiB: the allocation point of a chunk too large for the limit
    return real(*a, **k)
negmine.retrieve.write_candidates = big
sys.argv = ['negmine', 'run', '-i', {str(SAMPLE)!r}, '-o', {str(tmp_path / 'out')!r}, '--cache-dir',
            {str(tmp_path / 'cache')!r}, '-q']
app()
"""
    env = {**os.environ, "PYTHONPATH": str(REPO), "NEGMINE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert "\n" not in err and "out of memory in stage 'retrieve'" in err


def _slow_child(tmp_path: Path, *args: str) -> subprocess.Popen:
    """`negmine run` in a child whose index stage signals it has started, then waits to be stopped."""
    marker = tmp_path / "started"
    script = f"""
import pathlib, time
import negmine.retrievers.bm25
def slow(*a, **k):
    pathlib.Path({str(marker)!r}).write_text('x')
    time.sleep(120)
negmine.retrievers.bm25.build_index = slow
import sys
sys.argv = ['negmine', 'run', '-i', {str(SAMPLE)!r}, '-o', {str(tmp_path / 'out')!r}, {", ".join(map(repr, args))}]
from negmine.cli import app
app()
"""
    env = {**os.environ, "PYTHONPATH": str(REPO), "NEGMINE_PROGRESS": "0", "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    # SIGINT as a terminal delivers it: a test run started in the background of a script (CI) inherits it ignored,
    # and a child that ignores it would never see the signal under test
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.1)
    return proc


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_a_no_cache_run_with_one_line_and_no_temporary_cache(tmp_path, signum, code):
    proc = _slow_child(tmp_path, "--no-cache", "-q")
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list((tmp_path / "tmp").iterdir()) == []  # the throwaway cache is gone
    assert not (tmp_path / "out").exists()


def test_sigterm_leaves_finished_stages_cached_and_no_temporary_folder(tmp_path):
    proc = _slow_child(tmp_path, "--cache-dir", str(tmp_path / "cache"), "-q")
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    cache = tmp_path / "cache"
    assert list(cache.glob("ingest/*/meta.json"))
    assert not [p for p in cache.rglob(".*") if p.name.startswith((".tmp-", ".lock-"))]
    assert not (cache / "index").exists()
