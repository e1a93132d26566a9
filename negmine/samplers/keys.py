"""Keyed randomness: every random choice of sampling is a function of (seed, query id, document id) only.

A generator consumed in candidate order re-draws everything after the first near-tie swap (another precision,
another engine, another chunking), so instead each candidate gets its own uniform key from a 64-bit hash of
(seed, query id, document id). Uniform sampling without replacement takes the n smallest keys; weighted sampling
without replacement takes the n largest `log w + Gumbel(key)` (Gumbel-top-k, Kool et al., ICML 2019; the same
draw as Efraimidis and Spirakis' `u^(1/w)`). The set drawn then depends neither on the order of the candidates nor
on how they are chunked.

The hash: the query part is blake2b of (seed, query id) (`negmine.hashing.seed_for`, once a query); the document
part is FNV-1a 64 over the id's UTF-8 bytes, computed for a whole Arrow column at once (one numpy pass per byte
position, no loop over candidates), then the two are combined through MurmurHash3's 64-bit finaliser, twice,
which mixes every input bit into every output bit.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (a bijection with full avalanche), element-wise on uint64."""
    x = np.asarray(x, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(33)
        x *= np.uint64(0xFF51AFD7ED558CCD)
        x ^= x >> np.uint64(33)
        x *= np.uint64(0xC4CEB93FCA3D1DB5)
        x ^= x >> np.uint64(33)
    return x


def id_hashes(ids: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
    """Seed-independent 64-bit hashes (FNV-1a, then fmix64) of string ids, vectorised over the column."""
    arr = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(list(ids), pa.large_string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_string())
    if arr.null_count:
        raise ValueError("ids to hash must not be null")
    n = len(arr)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset:arr.offset + n + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    # longest first: at byte position j the ids still going are a prefix of this order, so the work is the bytes
    order = np.argsort(-lengths, kind="stable")
    sorted_len = lengths[order]
    with np.errstate(over="ignore"):
        for j in range(int(sorted_len[0]) if n else 0):
            live = order[:int(np.searchsorted(-sorted_len, -j, side="left"))]
            h[live] = (h[live] ^ data[starts[live] + j].astype(np.uint64)) * _FNV_PRIME
        h ^= lengths.astype(np.uint64) * _GOLDEN  # ids that differ only by trailing bytes stay apart
    return fmix64(h)


def combine(query_seeds: np.ndarray | int, doc_hashes: np.ndarray) -> np.ndarray:
    """The 64-bit key of each (query, document): query seeds (one, or one a row) mixed with `id_hashes`."""
    q = np.asarray(query_seeds, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return fmix64(fmix64(doc_hashes ^ q) + q * _GOLDEN)


def to_uniform(keys: np.ndarray) -> np.ndarray:
    """Keys as uniforms strictly inside (0, 1) (the top 53 bits, centred), so log(u) and log(-log u) are finite."""
    return ((keys >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53


def uniforms(query_seed: int, doc_ids: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
    """One query's keyed uniforms for these document ids (`query_seed` from `negmine.hashing.seed_for`)."""
    return to_uniform(combine(query_seed, id_hashes(doc_ids)))


def gumbel(u: np.ndarray) -> np.ndarray:
    """Standard Gumbel noise from uniforms in (0, 1)."""
    return -np.log(-np.log(u))
