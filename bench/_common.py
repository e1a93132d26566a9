"""Helpers shared by the benchmark scripts (imported as `_common`: the scripts run from this folder)."""
from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

from negmine.memory import peak_rss_mib  # noqa: F401  (the scripts import it from here)


def versions(dists: tuple[str, ...]) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ndcg_recall(top, ids: list[str], qids: list[str], qrels: dict[str, set[str]]) -> dict[str, float]:
    """nDCG@10 and recall@(len of each ranking) of rankings `top` (rows of indices into `ids`), binary relevance."""
    import numpy as np

    ndcg, recall = [], []
    for i, q in enumerate(qids):
        rel = qrels[q]
        ranked = [ids[j] for j in top[i]]
        dcg = sum(1 / np.log2(r + 2) for r, d in enumerate(ranked[:10]) if d in rel)
        idcg = sum(1 / np.log2(r + 2) for r in range(min(10, len(rel))))
        ndcg.append(dcg / idcg)
        recall.append(len(rel & set(ranked)) / len(rel))
    return {"ndcg@10": float(np.mean(ndcg)), "recall@100": float(np.mean(recall))}
