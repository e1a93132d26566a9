"""Near-duplicates of positives, beyond exact normalised text.

- MinHash (Broder, "On the resemblance and containment of documents", 1997): Jaccard similarity of word
  3-shingles, estimated from `num_perm` min-hashes (universal hashing mod the Mersenne prime 2^61 - 1).
- Embedding: cosine similarity of the dense encoder's vectors.
A candidate is dropped when its similarity to any positive of its query reaches the threshold.
"""
from __future__ import annotations

import hashlib
import re

import numpy as np

_PRIME = np.uint64((1 << 61) - 1)
_WORD = re.compile(r"\w+")


class MinHasher:
    def __init__(self, num_perm: int = 64, shingle: int = 3, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, int(_PRIME), size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, int(_PRIME), size=num_perm, dtype=np.uint64)
        self.shingle = shingle

    def signature(self, text: str) -> np.ndarray:
        words = _WORD.findall(text.casefold())
        n = max(1, len(words) - self.shingle + 1)
        grams = {" ".join(words[i:i + self.shingle]) for i in range(n)} or {""}
        h = np.fromiter((int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little") >> 3
                         for g in grams), dtype=np.uint64, count=len(grams))
        with np.errstate(over="ignore"):
            # (a * h + b) mod p on 61-bit values: wraps in uint64, still a fine hash family for estimates
            return ((np.outer(self.a, h) + self.b[:, None]) % _PRIME).min(axis=1)


def jaccard_estimate(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of signature rows (broadcasting: (n, p) vs (n, p) or (p,))."""
    return (sig_a == sig_b).mean(axis=-1)
