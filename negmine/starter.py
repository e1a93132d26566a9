"""`negmine init`: a starter config for a data path, its preset chosen from what the data looks like.

The input is read once by the ingest stage itself (in a throwaway cache), so the format detection, the counts and
any problem with the data are exactly what `negmine run` will see. The choice follows the README's advice:
- many positives a query (a mean of `MANY_POSITIVES` or more): NV-Retriever's positive-aware TopK-PercPos filter
  against the query's *best* positive (`perc-pos-top`); against the weakest one, a query with dozens of positives
  loses nearly every candidate (CISI, 35 positives a query, kept no negative at all);
- about one positive a query: the recommended default, the 3 hardest dense negatives as triplet rows
  (`recommended`).
The presets' settings are kept here (configs/ is not installed with the package); a test checks that each equals
its file in configs/.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from negmine.errors import ConfigError, InputError

MANY_POSITIVES = 2.0  # mean positives a mined query from which the positive-aware preset is chosen

_DENSE = {"retrieve": {"retrievers": ["dense"], "top_k": 100}, "dense": {"model": ""}}


@dataclass(frozen=True)
class Preset:
    file: str  # its twin in configs/
    why: str  # one comment line: what it mines
    sections: dict[str, dict[str, Any]]


PRESETS: dict[str, Preset] = {
    "recommended": Preset(
        "recommended.toml",
        "the 3 best-ranked dense candidates inside the top 30, each its own triplet row (train on "
        "triplet.parquet): the best retriever of the downstream benchmark",
        {**_DENSE, "sample": {"strategy": "top", "num_negatives": 3, "rank_max": 30},
         "export": {"formats": ["triplet", "n-tuple", "ids"]}}),
    "perc-pos-top": Preset(
        "perc-pos-top.toml",
        "NV-Retriever's TopK-PercPos filter (alpha 0.95) against the query's best positive, then the 5 best "
        "remaining dense candidates inside the top 30",
        {**_DENSE, "filter": {"method": "perc-pos", "alpha": 0.95, "positive_score": "max"},
         "sample": {"strategy": "top", "num_negatives": 5, "rank_min": 1, "rank_max": 30, "shortage": "keep-fewer"},
         "export": {"formats": ["triplet", "n-tuple", "ids"]}}),
    "nv-retriever": Preset(
        "nv-retriever.toml",
        "NV-Retriever's TopK-PercPos (alpha 0.95) against the weakest positive, 4 sampled from the dense top 10",
        {**_DENSE, "filter": {"method": "perc-pos", "alpha": 0.95, "positive_score": "min"},
         "sample": {"strategy": "random", "num_negatives": 4, "rank_min": 1, "rank_max": 10,
                    "shortage": "keep-fewer"},
         "export": {"formats": ["triplet", "ids"]}}),
    "simans": Preset(
        "simans.toml",
        "5 negatives sampled from the dense top 100 with SimANS weights (a = 0.5, b = 0)",
        {**_DENSE, "sample": {"strategy": "simans", "simans_a": 0.5, "simans_b": 0.0, "num_negatives": 5,
                              "rank_max": 100},
         "export": {"formats": ["triplet", "ids"]}}),
    "bm25": Preset(
        "sample-bm25.toml",
        "BM25 (Lucene, English stemming), the 5 best-ranked candidates inside the top 30; no model needed",
        {"bm25": {"backend": "bm25s", "method": "lucene", "k1": 1.5, "b": 0.75, "stopwords": "en",
                  "stemmer": "english"},
         "retrieve": {"top_k": 100}, "exclude": {"query_text": True, "duplicates": True},
         "sample": {"strategy": "top", "num_negatives": 5, "rank_min": 1, "rank_max": 30, "seed": 42,
                    "shortage": "keep-fewer"},
         "export": {"formats": ["triplet", "n-tuple", "flagembedding", "ids"], "file_types": ["parquet", "jsonl"]}}),
}


@dataclass(frozen=True)
class DataSummary:
    format: str
    split: str | None
    documents: int
    queries: int  # queries with at least one positive (the mined ones)
    positives: int
    skipped: dict[str, int]  # invalid records skipped (--skip-invalid), by kind

    @property
    def positives_per_query(self) -> float:
        return self.positives / self.queries if self.queries else 0.0


def _split(path: Path) -> str:
    """BEIR: train when qrels/train.tsv exists, else the only split there (several: ask for one)."""
    qrels = path / "qrels"
    splits = sorted(p.stem for p in qrels.glob("*.tsv")) if qrels.is_dir() else []
    if "train" in splits or not splits:
        return "train"  # no qrels at all: the ingest stage says what is missing
    if len(splits) == 1:
        return splits[0]
    raise InputError(qrels, f"no train.tsv and several splits ({', '.join(splits)})",
                     "pick one with --split NAME")


def summarise(data: Path, split: str | None = None, skip_invalid: bool = False) -> DataSummary:
    """Read the input with the ingest stage (throwaway cache) and count what init needs."""
    from negmine.config import load_config
    from negmine.ingest import detect_format
    from negmine.pipeline import mine

    sets: dict[str, Any] = {"input.path": str(data), "input.skip_invalid": skip_invalid}
    fmt = detect_format({"path": str(data), "format": "auto"})
    if fmt == "beir":
        split = split or _split(data)
        sets["input.split"] = split
    elif split:
        raise ConfigError(f"--split {split}: only a BEIR folder has splits; {data} reads as {fmt}")
    stats = mine(load_config(None, sets), until="ingest", no_cache=True).stages["ingest"].stats
    if not stats["queries_with_positives"]:
        raise InputError(data, "no query has a positive", "check the qrels (or the positive column)")
    return DataSummary(stats["format"], split if fmt == "beir" else None, stats["documents"],
                       stats["queries_with_positives"], stats["positives"], dict(stats.get("skipped") or {}))


def choose(summary: DataSummary) -> tuple[str, str]:
    """(preset, why) for the data."""
    ppq = summary.positives_per_query
    if ppq >= MANY_POSITIVES:
        return "perc-pos-top", (f"{ppq:.1f} positives a query (>= {MANY_POSITIVES:g}): against its weakest positive "
                                "a query with many positives loses nearly every candidate, so the positive-aware "
                                "filter compares with the best one (positive_score = \"max\")")
    return "recommended", (f"{ppq:.2f} positives a query (< {MANY_POSITIVES:g}): the recommended default, the 3 "
                           "hardest dense negatives as triplet rows, which trained the best retriever in the "
                           "downstream benchmark")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def _relative(target: Path, start: Path) -> str:
    """`target` relative to the config's folder (config paths are relative to their file), else absolute."""
    try:
        rel = os.path.relpath(target.resolve(), start.resolve())
    except ValueError:  # another drive (Windows)
        return str(target.resolve())
    # a nearby path stays relative (the folder can move as a whole); a far one is clearer absolute
    return rel if Path(rel).parts[:3].count("..") < 3 else str(target.resolve())


def render(data: Path, out: Path, summary: DataSummary, preset: str, why: str) -> str:
    p = PRESETS[preset]
    name = data.resolve().name.removesuffix(data.suffix) or "data"
    lines = [f"# Starter config written by `negmine init {data}`: edit freely, then `negmine run {out.name}`.",
             f"# Data: {summary.format} input, {summary.documents} documents, {summary.queries} queries with "
             f"positives, {summary.positives} positives ({summary.positives_per_query:.2f} a query).",
             f"# Preset {preset} (configs/{p.file}): {p.why}.",
             f"# Why: {why}.",
             "# Every other setting keeps its default; `negmine run --help` lists the choices. Paths are relative "
             "to this file.", "",
             "[input]", f"path = {_toml(_relative(data, out.parent))}", f"format = {_toml(summary.format)}"]
    if summary.split:
        lines.append(f"split = {_toml(summary.split)}")
    if summary.skipped:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(summary.skipped.items()))
        lines.append(f"skip_invalid = true  # init skipped {sum(summary.skipped.values())} invalid records ({kinds})")
    sections = {k: dict(v) for k, v in p.sections.items()}
    sections.setdefault("export", {})["dir"] = f"out/{name}-{preset}"
    for section, values in sections.items():
        lines += ["", f"[{section}]"] + [f"{k} = {_toml(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def init(data: Path, out: Path, preset: str | None = None, split: str | None = None,
         skip_invalid: bool = False) -> tuple[str, DataSummary]:
    """Write a starter config for `data` to `out` (never over an existing file); returns (preset, summary)."""
    from negmine.config import load_config, validate

    if out.exists():
        raise ConfigError(f"{out}: already exists; choose another file with -o or remove it first")
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"--preset {preset}: unknown; choose one of {', '.join(PRESETS)}")
    summary = summarise(data, split, skip_invalid)
    chosen, why = choose(summary)
    if preset is not None and preset != chosen:
        why = f"asked for with --preset (the data alone would pick {chosen}: {why})"
    preset = preset or chosen
    text = render(data, out, summary, preset, why)
    if not out.parent.is_dir():
        raise ConfigError(f"{out.parent}: no such folder; create it or write the config elsewhere with -o")
    try:  # "x": never replaces a file that appeared since the check above
        with open(out, "x", encoding="utf-8") as fh:
            fh.write(text)
    except FileExistsError:
        raise ConfigError(f"{out}: already exists; choose another file with -o or remove it first") from None
    try:
        validate(load_config(out))  # what was written loads as a config: a bug here must not go unnoticed
    except Exception:
        out.unlink()
        raise
    return preset, summary
