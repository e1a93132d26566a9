"""Teacher ensembles in the config: what `[ensemble] teachers` names, its checks, and the files the ensemble's
stages hand each other.

NV-Retriever (Moreira et al., "NV-Retriever: Improving text embedding models with effective hard-negative mining",
2024, arXiv:2407.15831, section 4.3) ensembles several teachers. Each teacher named here scores every candidate
and positive in the `teachers` stage (`negmine.score`); the agreement filter (`negmine.filters.agreement`) and
cross- or intra-sampling (`negmine.samplers.ensemble`) read those scores. This module belongs to no stage, so the
stages, the config checks and the export share it without importing one another.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from negmine.config import teacher_score_type
from negmine.errors import ConfigError

Config = dict[str, Any]
NEGATIVE_TEACHERS_FILE = "negative_teachers.parquet"  # the sample stage's, with an ensemble: who gave each negative
TEACHERS_FILE = "teacher_scores.parquet"  # one row a candidate (the retrieve stage's order), a column a teacher
TEACHER_POSITIVES_FILE = "teacher_positive_scores.parquet"  # one row a positive pair, a column a teacher


def retriever_teachers() -> tuple[str, ...]:
    """The registered retrievers that can score any (query, document) pair, so can be teachers."""
    from negmine.retrievers import RETRIEVERS

    return tuple(name for name, r in RETRIEVERS.items() if r.score_pairs is not None)

MODEL_KEYS = ("kind", "activation", "normalize", "max_length", "query_prompt", "doc_prompt")  # a table may set
RESERVED = ("query_id", "doc_id", "doc_idx", "rank")  # columns of the teachers' tables
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_teacher_entries(value: Any, where: str) -> list[Any]:
    """[ensemble] teachers: a list of names ("bm25", "dense", "teacher") and tables naming a model; one line if
    anything is wrong."""
    from negmine.config import CHOICES

    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list, such as [\"bm25\", \"dense\"], got {value!r}")
    types = {"name": str, "model": str, "kind": str, "activation": str, "normalize": bool, "max_length": int,
             "query_prompt": str, "doc_prompt": str}
    for i, entry in enumerate(value):
        if isinstance(entry, str):
            if entry not in (*retriever_teachers(), "teacher"):
                raise ConfigError(f"{where} has {entry!r}; a name is one of {', '.join(retriever_teachers())} or "
                                  "\"teacher\" (the [score] teacher); a model is a table {name, model, kind, ...}")
            continue
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} entry {i + 1} is {entry!r}; give a name or a table {{name, model, ...}}")
        unknown = sorted(set(entry) - set(types))
        if unknown:
            raise ConfigError(f"{where} entry {i + 1} has unknown key {unknown[0]!r}; known keys: {', '.join(types)}")
        if "model" not in entry:
            raise ConfigError(f"{where} entry {i + 1} has no model; give model = \"PATH or HF id\" (\"\" = the "
                              "packaged all-MiniLM-L6-v2)")
        for key, typ in types.items():
            v = entry.get(key)
            if v is not None and (not isinstance(v, typ) or (typ is int and isinstance(v, bool))):
                raise ConfigError(f"{where} entry {i + 1}: {key} must be {typ.__name__}, got {v!r}")
        if entry.get("max_length", 0) < 0:
            raise ConfigError(f"{where} entry {i + 1}: max_length is {entry['max_length']}; it must be >= 0")
        for key in ("kind", "activation"):
            if key in entry and entry[key] not in CHOICES[("score", key)]:
                raise ConfigError(f"{where} entry {i + 1}: {key} is {entry[key]!r}; choose one of "
                                  f"{', '.join(CHOICES[('score', key)])}")
    return value


def teacher_specs(cfg: Config) -> list[dict[str, Any]]:
    """The configured teachers, each {"name", "retriever"} or {"name", "model", settings}; a table's unset
    settings are the [score] section's."""
    sc, out = cfg["score"], []
    for entry in cfg["ensemble"]["teachers"]:
        if entry == "teacher":
            out.append({"name": "teacher", "model": sc["teacher"], **{k: sc[k] for k in MODEL_KEYS}})
        elif isinstance(entry, str):
            out.append({"name": entry, "retriever": entry})
        else:
            name = entry.get("name") or Path(entry["model"]).name or "all-MiniLM-L6-v2"
            out.append({"name": name, "model": entry["model"], **{k: entry.get(k, sc[k]) for k in MODEL_KEYS}})
    return out


def teacher_type(cfg: Config, spec: Mapping[str, Any]) -> str:
    """A teacher's score type: its retriever's, or the model's (probability, logit, cosine, dot)."""
    if "retriever" in spec:
        from negmine.retrievers import RETRIEVERS

        return RETRIEVERS[spec["retriever"]].score_type(cfg)
    return teacher_score_type(spec)


def uses_teachers(cfg: Config) -> bool:
    e = cfg["ensemble"]
    return bool(e["teachers"]) and (e["sampling"] != "none" or e["agreement"])


def check_ensemble(cfg: Config) -> None:
    """Consistency of [ensemble] with the rest (its own values: `check_teacher_entries`)."""
    e = cfg["ensemble"]
    where = "[ensemble] teachers"
    check_teacher_entries(e["teachers"], where)  # again: a config built by hand skips load_config's checks
    if not e["teachers"]:
        if e["sampling"] != "none" or e["agreement"]:
            raise ConfigError(f"[ensemble] {'sampling' if e['sampling'] != 'none' else 'agreement'} needs teachers: "
                              "set [ensemble] teachers, such as [\"bm25\", \"dense\"]")
        return
    if not uses_teachers(cfg):
        raise ConfigError("[ensemble] teachers are set but nothing uses them: set [ensemble] sampling = \"cross\" "
                          "or \"intra\", or agreement = true (or leave teachers out)")
    specs = teacher_specs(cfg)
    names = [s["name"] for s in specs]
    for spec in specs:
        n = spec["name"]
        if not _NAME.fullmatch(n) or n in RESERVED:
            raise ConfigError(f"{where} has a teacher named {n!r}; give it a name of letters, digits, '_', '.', '-' "
                              f"(not {', '.join(RESERVED)})")
        if names.count(n) > 1:
            raise ConfigError(f"{where} names {n!r} twice; give each teacher its own name")
        if "retriever" in spec and spec["retriever"] not in cfg["retrieve"]["retrievers"]:
            raise ConfigError(f"{where} has {n!r}, which is not among [retrieve] retrievers "
                              f"{cfg['retrieve']['retrievers']}; add it there so that its index is built")
        if n == "teacher" and "retriever" not in spec and not cfg["score"]["teacher"]:
            raise ConfigError(f"{where} has \"teacher\" but no [score] teacher is configured; set [score] teacher "
                              "or name a model as a table {name, model}")
    s = cfg["sample"]
    if e["sampling"] != "none" and s["shortage"] in ("pad-random", "relax"):
        raise ConfigError(f"[sample] shortage {s['shortage']!r} is not available with [ensemble] sampling "
                          f"{e['sampling']!r}; use \"keep-fewer\" or \"drop\"")
    if e["sampling"] == "intra" and s["strategy"] != "top":
        raise ConfigError(f"[ensemble] sampling \"intra\" takes each teacher's best candidates in turn, so [sample] "
                          f"strategy must be \"top\" (it is {s['strategy']!r}); use sampling \"cross\" to draw "
                          "with another strategy from one teacher's ranking")
    if e["sampling"] == "cross":
        from negmine.samplers import SAMPLERS

        if SAMPLERS[s["strategy"]].needs_positive_scores:
            for spec in specs:  # the strategy reads the chosen teacher's positive score
                if teacher_type(cfg, spec) == "rrf":
                    raise ConfigError(f"[sample] {s['strategy']} needs positive scores; teacher {spec['name']!r} "
                                      "has none")
