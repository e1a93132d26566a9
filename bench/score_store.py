"""The [score] stage's own memory and time at scale: a teacher that costs nothing, so what is measured is the pair
store and the stage around it, not a model.

    python bench/scale.py --sizes 100000 --build-only          # the generated 100k-document corpus (10k queries)
    python bench/score_store.py --top-k 100,400 --negmine /tmp/negmine-before,.   # trees side by side

For each top_k (1M and 4M candidate pairs on that corpus) the retrieve stage runs once (BM25, the sample-bm25
preset) into a cache per top_k; then, for each negmine source tree, in a fresh process: a *cold* score stage (the
pair store emptied first: every pair scored and stored) and a *warm* one (every pair read from the store, as a
rerun with a deeper pool or another filter does). The teacher is replaced by a function that returns seeded random
scores at once (`Teacher.__call__`), so the model's cost and memory are left out; `score.teacher` names a tiny
cross-encoder folder only for its fingerprint (`--teacher`, default: one built in the work folder). Peak RSS is
the process's VmHWM reset (`/proc/self/clear_refs`) just before the stage, so imports and the cached inputs'
loading before it are left out. `nice -n 10`. Results: bench/results/score-store.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CONFIG = ROOT / "configs" / "sample-bm25.toml"

WORKER = r"""
import json, shutil, sys, time
from pathlib import Path
import numpy as np
cache, top_k, mode, corpus, teacher = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
import negmine, negmine.score as score
score.Teacher.__call__ = lambda self, q, d: np.random.default_rng(len(q)).random(len(q)).astype(np.float32)
over = [f"input.path='{corpus}'", f"score.teacher='{teacher}'", f"retrieve.top_k={top_k}", "export.dir='unused'"]
if mode == "retrieve":
    negmine.mine(sys.argv[6], over, cache_dir=cache, until="retrieve")
    sys.exit()
if mode == "cold":
    shutil.rmtree(cache / "pairs", ignore_errors=True)
shutil.rmtree(cache / "score", ignore_errors=True)
open("/proc/self/clear_refs", "w").write("5")
t = time.perf_counter()
st = negmine.mine(sys.argv[6], over, cache_dir=cache, until="score").stages["score"]
hwm = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
print(json.dumps({"negmine": str(Path(negmine.__file__).parent), "pairs": st.stats["pairs"], "scored_now": st.stats["scored_now"],
                  "distinct_pairs": st.stats["distinct_pairs"], "stage_seconds": round(st.seconds, 2),
                  "process_seconds": round(time.perf_counter() - t, 2), "peak_rss_mib": round(hwm, 1)}))
"""


def tiny_teacher(folder: Path) -> Path:
    """A tiny random cross-encoder (the tests' own), for its fingerprint only."""
    if not (folder / "config.json").is_file():
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import _tiny_bert

        _tiny_bert(folder, 3, head=True)
    return folder


def run(tree: Path, *args: str) -> dict:
    env = {**os.environ, "NEGMINE_PROGRESS": "0", "PYTHONPATH": str(tree)}
    # run from the tree: `python -c` puts the working directory first on the path
    out = subprocess.run(["nice", "-n", "10", sys.executable, "-c", WORKER, *args, str(CONFIG)], env=env,
                         capture_output=True, text=True, cwd=tree)
    if out.returncode != 0:
        raise SystemExit(f"{tree} {args[2]} failed:\n{out.stderr[-2000:]}")
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--top-k", default="100,400", help="comma-separated top_k values")
    ap.add_argument("--negmine", default=str(ROOT), help="comma-separated negmine source trees, measured in turn")
    ap.add_argument("--corpus", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "negmine-scale" /
                    "corpus-100000", help="a BEIR folder (bench/scale.py --build-only makes the default one)")
    ap.add_argument("--teacher", type=Path, help="a cross-encoder folder, for its fingerprint only")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "negmine-score-store")
    ap.add_argument("--json", type=Path, default=BENCH / "results" / "score-store.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    teacher = args.teacher or tiny_teacher(args.work / "teacher")
    results = json.loads(args.json.read_text()) if args.json.is_file() else {"runs": []}
    for k in [int(x) for x in args.top_k.split(",")]:
        cache = args.work / f"cache-top{k}"
        run(ROOT, str(cache), str(k), "retrieve", str(args.corpus), str(teacher))
        for tree in [Path(t).resolve() for t in args.negmine.split(",")]:
            commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip()
            for mode in ("cold", "warm"):
                rep = run(tree, str(cache), str(k), mode, str(args.corpus), str(teacher))
                row = {"tree": str(tree), "commit": commit, "top_k": k, "mode": mode, **rep,
                       "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                results["runs"].append(row)
                args.json.write_text(json.dumps(results, indent=2) + "\n")
                print(f"top {k:>4} {commit:>8} {mode:>4}: {rep['pairs']:>9,} pairs, {rep['stage_seconds']:6.1f} s, "
                      f"peak {rep['peak_rss_mib']:6.0f} MiB", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
