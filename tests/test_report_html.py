"""report.html: one self-contained page a person browses, opened here in real headless Chromium.

The browser tests skip only where no Chromium is installed and NEGMINE_REQUIRE_BROWSER is unset; `.ci/run` and
`make test` install Chromium and set it, so in CI a missing browser fails instead. Screenshots are kept under
tests/artifacts/ (gitignored).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import browser
from conftest import SAMPLE, write_beir
from negmine.pipeline import mine
from negmine.config import load_config
from negmine.report import EXAMPLES, pick_examples

ARTIFACTS = Path(__file__).parent / "artifacts"
needs_browser = pytest.mark.skipif(browser.chromium() is None and not os.environ.get("NEGMINE_REQUIRE_BROWSER"),
                                   reason="chromium is not installed (make test installs it)")

EVIL = '<script>document.title="pwned";console.error("injected")</script><img src=x onerror="console.error(1)">'


def _run(tmp_path: Path, overrides: list[str]) -> Path:
    cfg = load_config(None, overrides)
    mine(cfg, cache_dir=tmp_path / "cache")
    return Path(cfg["export"]["dir"])


def _evil_collection(folder: Path) -> Path:
    """Three queries whose documents (and one query) carry markup that must show as text, never run."""
    docs = [{"_id": f"d{i}", "title": f"wing flutter {i}", "text": f"wing flutter tests at mach {i} speeds"}
            for i in range(12)]
    docs[3]["text"] = f"wing flutter {EVIL} at mach 3"
    docs[4]["title"] = f"wing {EVIL}"
    queries = [{"_id": "q0", "text": "wing flutter mach"}, {"_id": "q1", "text": f"flutter {EVIL} wing"},
               {"_id": "q2", "text": "mach speeds wing"}]
    return write_beir(folder, docs, queries, [("q0", "d0", 1), ("q1", "d1", 1), ("q2", "d2", 1)])


def test_examples_are_a_seeded_sample_of_the_mined_queries():
    ids = [str(i) for i in range(60)]
    assert pick_examples(ids, 42) == pick_examples(ids, 42)
    assert len(set(pick_examples(ids, 42))) == EXAMPLES and set(pick_examples(ids, 42)) <= set(ids)
    assert pick_examples(ids, 42) != pick_examples(ids, 7)
    assert pick_examples(ids[:3], 42) == ids[:3]  # fewer queries than examples: all of them, in input order


def test_report_html_is_self_contained_and_lists_the_examples_negatives(tmp_path, sample_overrides):
    out = _run(tmp_path, sample_overrides + ["filter.method='perc-pos'", "filter.positive_score='max'"])
    page = (out / "report.html").read_text(encoding="utf-8")
    # nothing fetched from anywhere: no script, no external URL, the plot inline
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert 'aria-label="histogram of positive and negative scores"' in page and page.count("<svg") >= 2
    assert "Content-Security-Policy" in page
    report = json.loads((out / "report.json").read_text())
    ids = pq.read_table(out / "ids.parquet").to_pylist()
    negatives = {r["query_id"]: r["negative_ids"] for r in ids}
    assert len(report["examples"]) == EXAMPLES
    for ex in report["examples"]:
        # each example's negatives are exactly the exported ones, and the page shows its query
        assert [n["doc_id"] for n in ex["negatives"]] == negatives[ex["query_id"]]
        assert f'id="q-{ex["query_id"]}"' in page
    assert sum(sum(ex["removed"].values()) for ex in report["examples"]) > 0
    md = (out / "report.md").read_text()
    assert "## Examples" in md and md.count("\n- query ") == EXAMPLES
    assert "## Scores" in md and "## Removed before sampling" in md  # the earlier content is kept


def test_markup_in_documents_and_queries_is_shown_escaped(tmp_path):
    data = _evil_collection(tmp_path / "data")
    out = _run(tmp_path, [f"input.path='{data}'", f"export.dir='{tmp_path / 'out'}'", "sample.num_negatives=3"])
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert "&lt;script&gt;document.title=&quot;pwned&quot;" in page
    md = (out / "report.md").read_text()
    assert "<script>" not in md  # the Markdown examples escape it too


@needs_browser
def test_console_errors_of_a_page_are_captured(tmp_path):
    """The browser harness itself: a page that logs an error and throws is reported, so a clean result means
    something."""
    bad = tmp_path / "bad.html"
    bad.write_text('<p>x</p><script>console.error("probe"); notDefined();</script>')
    result = browser.open_page(bad.as_uri(), {"p": "document.querySelectorAll('p').length"})
    assert result.values["p"] == 1
    assert any("probe" in e for e in result.errors) and any("notDefined" in e for e in result.errors)


@needs_browser
def test_report_html_renders_in_chromium_without_errors_and_shows_the_examples(tmp_path, sample_overrides):
    out = _run(tmp_path, sample_overrides)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-examples.png"
    result = browser.open_page((out / "report.html").as_uri(), {
        "examples": "document.querySelectorAll('section.example').length",
        "negative_rows": "document.querySelectorAll('section.example table.negatives tbody tr').length",
        "candidate_rows": "document.querySelectorAll('section.example table.candidates tbody tr').length",
        "images_loaded": "[...document.images].every(i => i.complete && i.naturalWidth > 0)",
        "svg_plots": "document.querySelectorAll('svg').length",
        "visible": "(() => { const e = document.getElementById('examples'); e.scrollIntoView(); "
                   "const r = e.getBoundingClientRect(); return r.height > 0 && r.width > 0; })()",
    }, screenshot=shot)
    assert result.errors == []
    report = json.loads((out / "report.json").read_text())
    assert result.values["examples"] == EXAMPLES
    assert result.values["negative_rows"] == sum(len(ex["negatives"]) for ex in report["examples"])
    assert result.values["candidate_rows"] == sum(ex["candidates"] for ex in report["examples"])
    assert result.values["images_loaded"] is True and result.values["svg_plots"] >= 2
    assert result.values["visible"] is True
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_browser
def test_a_script_in_a_document_does_not_run_in_the_browser(tmp_path):
    data = _evil_collection(tmp_path / "data")
    out = _run(tmp_path, [f"input.path='{data}'", f"export.dir='{tmp_path / 'out'}'", "sample.num_negatives=3"])
    result = browser.open_page((out / "report.html").as_uri(), {
        "title": "document.title",
        "scripts": "document.scripts.length",
        "images": "document.images.length",
        "shown": "document.body.innerText.includes('<script>document.title=\"pwned\"')",
    }, screenshot=tmp_path / "evil.png")
    assert result.errors == []  # no injected console.error, no CSP violation either
    assert result.values["title"] == "negmine mining report"
    assert result.values["scripts"] == 0 and result.values["images"] == 0  # plots are inline SVG; the <img> is text
    assert result.values["shown"] is True
