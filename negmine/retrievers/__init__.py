"""Retrievers, one module each: the index stages a retriever needs and its search (see `negmine.retrievers.bm25`,
`negmine.retrievers.dense`)."""
