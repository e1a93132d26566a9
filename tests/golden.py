"""Golden hashes of what each preset mines: behaviour must not move unnoticed.

`python tests/golden.py` mines every preset in configs/ on data/sample (and configs/sample-bm25.toml on
../shared/data/scifact) and writes tests/golden/hashes.json; tests/test_golden.py mines them again and compares.

What is hashed is the data, not the bytes of the file: a Parquet file's rows and column types (its metadata holds
provenance with stage keys, which change whenever a stage's code version does), a JSONL file's bytes. Provenance,
report and run.json files are left out: they describe the run, they are not mined data.

A case that runs a model (dense retrieval, a teacher) mines other vectors and scores in another precision or
runtime, and `precision = "auto"` and `[dense] backend = "auto"` depend on the machine, so its hashes are kept per
resolution: `<case>@fp32` (every model forced to fp32 on torch, checkable anywhere) and `<case>@<what auto resolved
to>` on the recording machine (`bf16+openvino` on a CPU with AVX512-BF16 or AMX and OpenVINO installed). A machine
whose "auto" has no recorded hashes checks the fp32 ones only.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
GOLDEN = Path(__file__).resolve().parent / "golden" / "hashes.json"
TEACHER_PRESETS = ("cross-encoder", "rocketqa")  # their teacher is replaced by the tests' tiny cross-encoder
SKIP = {"provenance.json", "run.json", "report.json", "report.md", "report.html", "scores.svg", ".negmine-outputs.json"}


def data_hash(path: Path) -> str:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        table = table.replace_schema_metadata(None)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def output_hashes(out_dir: Path) -> dict[str, str]:
    return {p.name: data_hash(p) for p in sorted(out_dir.iterdir()) if p.is_file() and p.name not in SKIP}


def cases() -> list[tuple[str, Path, Path]]:
    """(case name, config, input folder)."""
    out = [(f"sample/{c.stem}", c, SAMPLE) for c in sorted((ROOT / "configs").glob("*.toml"))]
    out.append(("scifact/sample-bm25", ROOT / "configs" / "sample-bm25.toml", SCIFACT))
    return out


def _overrides(name: str, config: Path, data: Path, work: Path, teacher: Path | None, precision: str) -> list[str]:
    out = work / "out" / f"{name.replace('/', '-')}-{precision}"
    overrides = [f"input.path={json.dumps(str(data))}", f"export.dir={json.dumps(str(out))}",
                 f"dense.precision={json.dumps(precision)}", f"score.precision={json.dumps(precision)}"]
    if precision == "fp32":  # the reference everywhere: torch in fp32 ("auto" runs OpenVINO where it can)
        overrides += ['dense.backend="torch"', 'score.backend="torch"']
    if config.stem in TEACHER_PRESETS:
        overrides.append(f"score.teacher={json.dumps(str(teacher))}")
    return overrides


def case_key(name: str, config: Path, data: Path, work: Path, teacher: Path | None, precision: str) -> str:
    """`name` for a case without models, else `name@<precision its models run in here>`."""
    from negmine.config import load_config
    from negmine.precision import resolved_settings

    resolved = resolved_settings(load_config(config, _overrides(name, config, data, work, teacher, precision)))
    values = sorted(set(resolved.get("resolved", {}).values()))
    return f"{name}@{'+'.join(values)}" if values else name


def mine_case(name: str, config: Path, data: Path, work: Path, teacher: Path | None,
              precision: str = "auto") -> dict[str, str]:
    from negmine import mine

    overrides = _overrides(name, config, data, work, teacher, precision)
    mine(config, overrides, cache_dir=work / "cache")
    return output_hashes(Path(json.loads(overrides[1].split("=", 1)[1])))


def record(work: Path) -> dict[str, dict[str, str]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import _tiny_bert

    teacher = _tiny_bert(work / "teacher", 3, head=True)
    out = {}
    for name, config, data in cases():
        for precision in ("fp32", "auto"):
            key = case_key(name, config, data, work, teacher, precision)
            if key not in out:
                out[key] = mine_case(name, config, data, work, teacher, precision)
    return out


if __name__ == "__main__":
    import os
    import tempfile

    os.environ.setdefault("NEGMINE_PROGRESS", "0")
    with tempfile.TemporaryDirectory() as tmp:
        hashes = record(Path(tmp))
    GOLDEN.write_text(json.dumps(hashes, indent=2, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}: {sum(len(v) for v in hashes.values())} files in {len(hashes)} cases")
