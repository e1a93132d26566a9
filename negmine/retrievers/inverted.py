"""An inverted index on disk (terms x documents, CSR in .npy files) and its budgeted search: what BM25 and the
learned sparse retriever share, in a module that is no stage's.

The index is written term range by term range (`term_ranges`, `npy_header`), so the build never holds it whole;
the search (`InvertedIndex`) reads only the rows of the terms a block of queries uses (`pread`, so the file stays in
the page cache and out of the process's memory), multiplies (queries x terms) @ (terms x documents) in sparse
products bounded by a byte budget, cuts each row's top-k with ties to the lower document index, and scores given
(query, document) pairs without making the product's rows (`_pair_sums`).
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

BLOCK_SHARE = 1 / 8  # of the memory budget, for a chunk's product blocks (their rows of the index included)


def index_range_entries(memory_budget: int | None) -> int:
    """(document, term) entries of the index placed in memory at once (8 bytes each: score and document): a
    quarter of the budget."""
    from negmine.memory import budget_bytes

    return max(1, budget_bytes(memory_budget) // 4 // 8)


def npy_header(fh, dtype: type, n: int) -> int:
    """Write the .npy header np.save writes for a 1-D `dtype` array of `n` items; return where the data starts."""
    np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                              "fortran_order": False, "shape": (n,)})
    return fh.tell()


def term_ranges(indptr: np.ndarray, max_entries: int) -> list[tuple[int, int]]:
    """Consecutive term ranges [lo, hi) of at most `max_entries` (document, term) entries each (a term with more
    is a range of its own), covering every term."""
    ranges, lo, n_terms = [], 0, len(indptr) - 1
    while lo < n_terms:
        hi = int(np.searchsorted(indptr, indptr[lo] + max_entries, side="right")) - 1
        hi = min(n_terms, max(hi, lo + 1))
        ranges.append((lo, hi))
        lo = hi
    return ranges


def top_k_indices(values: np.ndarray, k: int, ids: np.ndarray | None = None) -> np.ndarray:
    """Positions of the k largest values; among equal values at the cut, those with the lowest `ids` (default:
    the earliest positions), so which of several tied documents makes the cut is defined."""
    if len(values) <= k:
        return np.arange(len(values))
    part = np.argpartition(values, len(values) - k)[len(values) - k:]
    cut = values[part].min()
    above = np.flatnonzero(values > cut)
    ties = np.flatnonzero(values == cut)
    if ids is not None:
        ties = ties[np.argsort(ids[ties], kind="stable")]
    return np.concatenate([above, ties[:k - len(above)]])


def _pair_sums(q, td, docs: np.ndarray) -> np.ndarray:
    """Row i of `q @ td` at column docs[i], without the product's row (which holds every document sharing a term
    with the query: memory and time growing with the corpus).

    Each (query term, document) score is found by binary search in the term's sorted document list, and the terms
    are summed in float32 in q's stored order, as scipy's product does, so the value is the same.
    """
    counts = np.diff(q.indptr)
    n = len(q.data)
    out = np.zeros(len(docs), dtype=np.float32)
    if n == 0 or td.nnz == 0:
        return out
    terms = q.indices.astype(np.int64)
    want = np.repeat(docs, counts)
    lo, end = td.indptr[terms].astype(np.int64), td.indptr[terms + 1].astype(np.int64)
    hi = end.copy()
    last = td.nnz - 1
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        right = active & (td.indices[np.minimum(mid, last)] < want)
        lo = np.where(right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)
    at = np.minimum(lo, last)
    found = (lo < end) & (td.indices[at] == want)
    values = np.where(found, td.data[at], np.float32(0)).astype(np.float32)
    products = (q.data.astype(np.float32) * values).astype(np.float32)
    starts = q.indptr[:-1]
    for j in range(int(counts.max())):
        rows = np.flatnonzero(counts > j)
        out[rows] += products[starts[rows] + j]  # float32, term by term: scipy's order of summation
    return out


class InvertedIndex:
    """Search over a saved terms x documents CSR index. A subclass opens the index: it sets `indptr` (int64, one
    more than the terms), `vocab_size`, `n_docs`, `max_block_bytes`, `nonoccurrence` (a score every document gets
    for a query term it lacks, or None) and the open data and indices files with their offsets past the .npy
    headers (`_files`, `_at`, `_dtypes`)."""

    _files: list = []
    indptr: np.ndarray
    vocab_size: int
    n_docs: int
    max_block_bytes: int
    nonoccurrence: np.ndarray | None = None
    _at: list[int]
    _dtypes: list[np.dtype]

    def close(self) -> None:
        for fh in self._files:
            fh.close()
        self._files = []

    def __del__(self) -> None:
        self.close()

    def term_rows(self, terms: np.ndarray):
        """Rows `terms` (ascending) of the terms x documents score matrix, read from the index files."""
        import scipy.sparse as sp

        terms = np.asarray(terms, dtype=np.int64)
        starts, ends = self.indptr[terms], self.indptr[terms + 1]
        sub_ptr = np.zeros(len(terms) + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=sub_ptr[1:])
        # adjacent rows are one read
        cut = np.flatnonzero(starts[1:] != ends[:-1]) + 1
        run_lo, run_hi = np.split(starts, cut), np.split(ends, cut)
        arrays = []
        for fh, at, dtype in zip(self._files, self._at, self._dtypes):
            out = np.empty(int(sub_ptr[-1]), dtype=dtype)
            view, pos = memoryview(out).cast("B"), 0
            for lo, hi in zip(run_lo, run_hi):
                if len(lo) == 0:
                    continue
                n = (int(hi[-1]) - int(lo[0])) * dtype.itemsize
                offset = at + int(lo[0]) * dtype.itemsize
                done = 0
                while done < n:  # a read may return less than asked
                    got = os.preadv(fh.fileno(), [view[pos + done:pos + n]], offset + done)
                    if got <= 0:
                        raise OSError(f"{fh.name}: the index file ends early")
                    done += got
                pos += n
            arrays.append(out)
        data, indices = arrays
        return sp.csr_matrix((data, indices, sub_ptr), shape=(len(terms), self.n_docs))

    def _restrict(self, q):
        """(q with its columns renumbered to the rows read, those rows): their product is q @ the whole score
        matrix, sum for sum, as q's entries keep their order."""
        import scipy.sparse as sp

        terms = np.unique(q.indices)
        cols = np.searchsorted(terms, q.indices)
        return (sp.csr_matrix((q.data, cols, q.indptr), shape=(q.shape[0], len(terms))), self.term_rows(terms))

    def score_pairs_matrix(self, q, doc_idx: np.ndarray) -> np.ndarray:
        """The score of each (query row of the CSR matrix `q` over the index's terms, corpus row) pair: the sum
        over their shared terms of the query weight times the index's value."""
        docs = np.asarray(doc_idx, dtype=np.int64)
        out = np.zeros(len(docs), dtype=np.float32)
        for a, b in self._blocks(q, q.shape[0], self.max_block_bytes // 2):
            qs, rows = self._restrict(q[a:b])
            out[a:b] = _pair_sums(qs, rows, docs[a:b])
        if self.nonoccurrence is not None:
            out += (q @ self.nonoccurrence).astype(np.float32)
        return out

    def _blocks(self, q, step: int, index_bytes: int) -> Iterator[tuple[int, int]]:
        """Consecutive query ranges [a, b) of at most `step` queries whose terms' index rows (8 bytes an entry)
        hold at most `index_bytes` together (a query over it is a block of its own): what one product reads of
        the index, so memory is bounded by the budget, not the index's size."""
        col_bytes = np.diff(self.indptr) * 8
        in_block = np.zeros(self.vocab_size, dtype=bool)
        a, used, block_terms = 0, 0, []
        for i in range(q.shape[0]):
            terms = q.indices[q.indptr[i]:q.indptr[i + 1]]  # unique: the query matrix sums repeats
            new = terms[~in_block[terms]]
            add = int(col_bytes[new].sum())
            if i > a and (i - a >= step or used + add > index_bytes):
                yield a, i
                for t in block_terms:
                    in_block[t] = False
                a, used, block_terms = i, 0, []
                new, add = terms, int(col_bytes[terms].sum())
            in_block[new] = True
            block_terms.append(new)
            used += add
        if a < q.shape[0]:
            yield a, q.shape[0]

    def search_matrix(self, q, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`search` for queries given as a CSR matrix over the index's terms (bm25s' term counts, or a learned
        sparse encoder's weights): (doc indices, scores), each (queries, k), sorted by score then doc index; rows
        with fewer than k documents sharing a term end in padding (doc index -1, score -inf)."""
        k = min(k, self.n_docs)
        docs = np.full((q.shape[0], k), -1, dtype=np.int64)
        scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)  # callers drop the padding
        extra = q @ self.nonoccurrence if self.nonoccurrence is not None else None
        # worst case a block's product is dense: bound it by half of max_block_bytes (value + index per entry;
        # with the dense rows and argpartition's work arrays of bm25l / bm25+, about 4x that)
        per_entry = 32 if extra is not None else 8
        step = max(1, self.max_block_bytes // 2 // (per_entry * self.n_docs))
        for a, b in self._blocks(q, step, self.max_block_bytes // 2):
            qs, rows = self._restrict(q[a:b])
            block = qs @ rows  # rows are independent: a row's sums do not depend on its block
            del qs, rows
            if extra is not None:
                dense = block.toarray()
                dense += extra[a:b, None]
                for i, row in enumerate(dense):
                    top = top_k_indices(row, k)
                    docs[a + i, :len(top)], scores[a + i, :len(top)] = top, row[top]
                continue
            indptr, indices, data = block.indptr, block.indices, block.data
            for i in range(block.shape[0]):
                lo, hi = indptr[i], indptr[i + 1]
                row_docs = indices[lo:hi]
                top = top_k_indices(data[lo:hi], k, row_docs)
                docs[a + i, :len(top)] = row_docs[top]
                scores[a + i, :len(top)] = data[lo:hi][top]
        order = np.lexsort((docs, -scores), axis=-1)
        return np.take_along_axis(docs, order, -1), np.take_along_axis(scores, order, -1)
