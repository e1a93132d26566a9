"""The command line: stage lines, per-stage commands, config files and overrides, cache commands, help."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from negmine.cli import app
from conftest import ROOT

runner = CliRunner()


def _config(tmp_path: Path, body: str = "") -> Path:
    """A copy of the sample config, with the sample data beside it, so relative paths resolve as in the repo."""
    shutil.copytree(ROOT / "data" / "sample", tmp_path / "data" / "sample")
    (tmp_path / "configs").mkdir()
    cfg = tmp_path / "configs" / "sample.toml"
    cfg.write_text((ROOT / "configs" / "sample-bm25.toml").read_text() + body)
    return cfg


def test_run_says_per_stage_whether_it_was_cached_or_why_it_ran(tmp_path):
    cfg = _config(tmp_path)
    first = runner.invoke(app, ["run", str(cfg)])
    assert first.exit_code == 0, first.output
    assert "ingest   computed (no cached result)" in first.stderr
    outputs = first.stdout.split()
    assert str(tmp_path / "out" / "sample-bm25" / "triplet.parquet") in outputs
    assert (tmp_path / "configs" / ".negmine" / "cache").is_dir()  # default cache: beside the config
    second = runner.invoke(app, ["run", str(cfg)])
    assert second.stderr.count("cached") == 6
    third = runner.invoke(app, ["run", str(cfg), "--set", "sample.num_negatives=3"])
    assert "sample   computed (parameters changed: num_negatives)" in third.stderr
    assert "retrieve cached" in third.stderr


def test_each_stage_command_prints_its_output(tmp_path):
    cfg = _config(tmp_path)
    for stage, name in [("ingest", "corpus.parquet"), ("retrieve", "candidates.parquet"),
                        ("exclude", "kept.parquet"), ("sample", "negatives.parquet")]:
        result = runner.invoke(app, [stage, str(cfg), "-q"])
        assert result.exit_code == 0, result.output
        path = Path(result.stdout.strip())
        assert path.name == name and path.is_file() and f"/{stage}/" in str(path)


def test_cli_shortcuts_for_input_and_output(tmp_path):
    result = runner.invoke(app, ["run", "-i", str(ROOT / "data" / "sample"), "-o", str(tmp_path / "o"),
                                 "--cache-dir", str(tmp_path / "c"), "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "triplet.parquet").is_file()
    assert result.stderr == ""


@pytest.mark.parametrize("args, message", [
    (["--set", "bm25.k3=1"], "unknown key [bm25] k3"),
    (["--set", "sample.strategy='best'"], "choose one of top, random"),
    (["--set", "sample.num_negatives='five'"], "must be an integer"),
    (["--set", "nonsense"], "expected section.key=value"),
    (["--set", "sample.rank_max=500"], "rank window"),
    (["--set", "export.formats=['csv']"], "choose from triplet"),
])
def test_bad_overrides_exit_2_with_one_line(tmp_path, args, message):
    cfg = _config(tmp_path)
    result = runner.invoke(app, ["run", str(cfg), *args])
    assert result.exit_code == 2
    assert result.stderr.startswith("error:") and message in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


def test_bad_config_file_is_reported_with_its_path(tmp_path):
    cfg = _config(tmp_path, "\n[sample]\nseed = 1\n")  # a second [sample] table: invalid TOML
    result = runner.invoke(app, ["run", str(cfg)])
    assert result.exit_code == 2 and str(cfg) in result.stderr and "not valid TOML" in result.stderr
    missing = runner.invoke(app, ["run", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "config file not found" in missing.stderr


def test_cache_ls_and_clear_commands(tmp_path):
    cfg = _config(tmp_path)
    runner.invoke(app, ["run", str(cfg), "-q"])
    ls = runner.invoke(app, ["cache", "ls", str(cfg)])
    assert ls.exit_code == 0
    # in the pipeline's order, read from the stage declarations
    assert [line.split()[0] for line in ls.stdout.splitlines()] == ["ingest", "index", "retrieve", "exclude", "sample",
                                                                    "export"]
    cleared = runner.invoke(app, ["cache", "clear", str(cfg), "--stage", "sample"])
    assert "removed 1 entries" in cleared.stderr
    bad = runner.invoke(app, ["cache", "clear", str(cfg), "--stage", "nope"])
    assert bad.exit_code == 2
    rerun = runner.invoke(app, ["run", str(cfg)])
    assert "sample   computed (no cached result)" in rerun.stderr


@pytest.mark.parametrize("command", [[], ["run"], ["ingest"], ["index"], ["retrieve"], ["exclude"], ["sample"],
                                     ["export"], ["score"], ["report"], ["cache"], ["cache", "ls"], ["cache", "clear"]])
def test_help_reads_well(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.stdout


def test_report_files_and_command(tmp_path):
    import json

    cfg = _config(tmp_path)
    runner.invoke(app, ["run", str(cfg), "-q"])
    out = tmp_path / "out" / "sample-bm25"
    report = json.loads((out / "report.json").read_text())
    assert report["negatives"]["total"] == 300 and report["negatives"]["by_retriever"] == {"bm25": 300}
    assert report["positives"]["total"] == 416
    assert report["positives"]["retrieved"] + report["positives"]["not_retrieved"] == 416
    assert sum(report["positives"]["rank_histogram"].values()) == report["positives"]["retrieved"]
    assert report["scores"]["negatives"]["count"] == 300 and report["scores"]["positives"]["count"] == 416
    assert report["removed"]["positive"] == report["positives"]["retrieved"]
    assert (out / "scores.svg").read_text().startswith("<svg") and "negatives (300)" in (out / "scores.svg").read_text()
    printed = runner.invoke(app, ["report", str(out)])
    assert printed.exit_code == 0 and "# negmine mining report" in printed.stdout
    assert runner.invoke(app, ["report", str(cfg)]).stdout == printed.stdout
    missing = runner.invoke(app, ["report", str(tmp_path)])
    assert missing.exit_code == 2 and "no report.md" in missing.stderr


@pytest.mark.parametrize("preset", ["dense", "hybrid", "nv-retriever", "simans", "recommended", "perc-pos-top",
                                    "cross-encoder", "rocketqa", "sample-bm25"])
def test_every_preset_is_a_valid_config(preset):
    from negmine.config import load_config, validate

    cfg = load_config(ROOT / "configs" / f"{preset}.toml")
    validate(cfg)


def test_cache_clear_takes_a_sub_stage_folder(tmp_path, tiny_bi_encoders):
    over = ["-i", str(ROOT / "data" / "sample"), "-o", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"), "-q",
            "--set", "retrieve.retrievers=['dense']", "--set", f"dense.model='{tiny_bi_encoders[0]}'"]
    assert runner.invoke(app, ["run", *over]).exit_code == 0
    cleared = runner.invoke(app, ["cache", "clear", "--cache-dir", str(tmp_path / "c"), "--stage", "encode"])
    assert cleared.exit_code == 0, cleared.output
    assert "removed 1 entries" in cleared.stderr
    rerun = runner.invoke(app, ["run", *over[:-5], "--set", "retrieve.retrievers=['dense']",
                                "--set", f"dense.model='{tiny_bi_encoders[0]}'"])
    assert "encode" in rerun.stderr and "computed (no cached result)" in rerun.stderr


def test_help_keeps_bracketed_words():
    assert "[default:" in runner.invoke(app, ["run", "--help"]).stdout
    assert "[score] teacher" in runner.invoke(app, ["score", "--help"]).stdout


def test_a_teacher_that_cannot_load_names_the_teacher_setting(tmp_path):
    result = runner.invoke(app, ["run", "-i", str(ROOT / "data" / "sample"), "-o", str(tmp_path / "o"),
                                 "--cache-dir", str(tmp_path / "c"), "--set", f"score.teacher='{tmp_path / 'none'}'"])
    assert result.exit_code == 2
    assert "[score] teacher" in result.stderr and "[dense]" not in result.stderr


def test_outputs_follow_the_umask_and_a_dropped_format_leaves_no_stale_file(tmp_path):
    import os

    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # the user's own file: never touched
    base = ["-i", str(ROOT / "data" / "sample"), "-o", str(out), "--cache-dir", str(tmp_path / "c"), "-q"]
    old = os.umask(0o022)
    try:
        first = runner.invoke(app, ["run", *base, "--set", "export.formats=['triplet','ids']"])
    finally:
        os.umask(old)
    assert first.exit_code == 0, first.output
    assert (out / "ids.parquet").is_file()
    assert (out / "triplet.parquet").stat().st_mode & 0o777 == 0o644
    second = runner.invoke(app, ["run", *base, "--set", "export.formats=['triplet']"])
    assert second.exit_code == 0, second.output
    assert not (out / "ids.parquet").exists() and not (out / "ids.jsonl").exists()
    assert (out / "triplet.parquet").is_file() and (out / "notes.txt").read_text() == "mine"
