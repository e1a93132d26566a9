"""Which token budget a batch suits each runtime: `[dense] batch_tokens = "auto"` picks per backend from this.

`--kind cross-encoder` measures `[score] batch_tokens` instead: a cross-encoder (`--model`, a sentence-transformers
CrossEncoder folder) scores N (query, abstract) pairs through negmine's own teacher (`negmine.score.Teacher`),
each abstract paired with a SciFact query in turn.

Each (runtime, budget) runs in a fresh process: the packaged all-MiniLM-L6-v2 encodes the first N SciFact abstracts
(title + text) through negmine's own encoder (`negmine.encode.load_model` + `encode_texts`), at the precision "auto"
resolves to on this machine. Reported: CPU seconds of the encode (all threads; load and export excluded), wall
seconds, and the process's peak RSS (VmHWM). CPU seconds move little with the machine's load, wall seconds do.

    .venv/bin/python bench/token_budgets.py [--docs 1024] [--budgets 512,1024,2048,4096,8192]
                                            [--backends openvino,torch] [--json bench/results/token-budgets.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import cpu_name, versions

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "scifact"

# the first N abstracts (title + text) as `texts`; then a timed section whose figures the tail prints
_HEAD = r"""
import json, sys, tempfile, time
from pathlib import Path
backend, budget, n, data = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
texts = []
with open(Path(data) / "corpus.jsonl") as fh:
    for line in fh:
        r = json.loads(line)
        texts.append(((r.get("title") or "") + " " + r["text"]).strip())
        if len(texts) == n:
            break
"""
_TAIL = r"""
wall, cpu = time.perf_counter() - t, time.process_time() - c
peak = next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"cpu_s": cpu, "wall_s": wall, "rss_peak_mib": peak, "precision": resolved_precision(params)}))
"""

WORKER = _HEAD + r"""
from negmine.encode import load_model, encode_texts, resolve_model, resolved_precision
params = {"backend": backend, "precision": "auto", "device": "cpu", "devices": [], "max_seq_length": 0,
          "batch_size": 64, "batch_tokens": budget, "normalize": True, "model": "", "query_prompt": "",
          "doc_prompt": ""}
model = load_model(params, resolve_model(""), Path(tempfile.mkdtemp(prefix="negmine-budgets-")))
t, c = time.perf_counter(), time.process_time()
encode_texts(model, texts, params, "")
""" + _TAIL

WORKER_CE = _HEAD + r"""
from negmine.score import Teacher, resolved_precision
with open(Path(data) / "queries.jsonl") as fh:
    queries = [json.loads(line)["text"] for line in fh]
queries = [queries[i % len(queries)] for i in range(len(texts))]  # each abstract with a query in turn
params = {"kind": "cross-encoder", "backend": backend, "precision": "auto", "device": "", "devices": [],
          "max_length": 0, "activation": "probability", "batch_size": 32, "batch_tokens": budget,
          "query_prompt": "", "doc_prompt": "", "normalize": True}
teacher = Teacher(params, Path(sys.argv[5]), Path(tempfile.mkdtemp(prefix="negmine-budgets-")))
teacher._load()  # the export and the session, outside the timing
t, c = time.perf_counter(), time.process_time()
teacher(queries, texts)
""" + _TAIL


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=1024)
    ap.add_argument("--budgets", default="512,1024,2048,4096,8192")
    ap.add_argument("--backends", default="openvino,torch")
    ap.add_argument("--repeat", type=int, default=1, help="rounds; each round runs every variant once")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--kind", choices=("bi-encoder", "cross-encoder"), default="bi-encoder",
                    help="cross-encoder: [score] batch_tokens, with the cross-encoder of --model")
    ap.add_argument("--model", type=Path, help="the cross-encoder folder (--kind cross-encoder)")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "token-budgets.json")
    args = ap.parse_args()
    variants = [(b, int(t)) for b in args.backends.split(",") for t in args.budgets.split(",")]
    runs: dict[str, list[dict]] = {f"{b}@{t}": [] for b, t in variants}
    for r in range(args.repeat):
        for b, t in (variants if r % 2 == 0 else variants[::-1]):  # alternate the order between rounds
            worker = [WORKER_CE, b, str(t), str(args.docs), str(args.data), str(args.model.resolve())] \
                if args.kind == "cross-encoder" else [WORKER, b, str(t), str(args.docs), str(args.data)]
            out = subprocess.run([sys.executable, "-c", *worker],
                                 capture_output=True, text=True, cwd=REPO)
            if out.returncode != 0:
                raise SystemExit(f"{b}@{t} failed: {out.stderr.strip().splitlines()[-1:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            runs[f"{b}@{t}"].append(res)
            print(f"{b:>9} @ {t:>5}: {res['cpu_s']:6.1f} CPU s, {res['wall_s']:6.1f} s wall, "
                  f"peak {res['rss_peak_mib']:5.0f} MiB ({res['precision']})", file=sys.stderr, flush=True)
    report = {"benchmark": "token-budgets", "kind": args.kind, "model": str(args.model or ""),
              "documents": args.docs, "data": str(args.data), "repeat": args.repeat,
              "runs": runs, "environment": {"cpu": cpu_name(), "versions": versions(("openvino", "torch"))},
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
