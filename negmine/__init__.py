"""negmine: hard-negative mining for retrieval training data.

    import negmine
    result = negmine.mine("configs/sample-bm25.toml", overrides=["sample.seed=7"])
    print(result.outputs)
"""
from __future__ import annotations

__version__ = "0.1.0"

from negmine.config import load_config  # noqa: E402
from negmine.pipeline import STAGES, RunResult, mine  # noqa: E402

__all__ = ["__version__", "mine", "load_config", "RunResult", "STAGES"]
