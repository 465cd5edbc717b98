"""The exact backend: every vector scanned (numpy), filters as a row mask. Always available."""

from __future__ import annotations

import os

import numpy as np

from ..features.store import FeatureStore
from .base import RowMask, Where, padded


def exact_topk(matrix: np.ndarray, query: np.ndarray, k: int,
               out: np.ndarray | None = None, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the k best rows, best first (ties: lower index first).

    A BLAS matrix-vector product plus argpartition: memory-bound, and measured faster here
    than torch.topk (4.7 ms against 13 ms over 100k x 512). ``out`` reuses a score buffer;
    ``mask`` (one bool per row) keeps only the rows it marks, so filters cost no copy.
    """
    n = matrix.shape[0]
    k = min(k, n if mask is None else int(mask.sum()))
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    scores = np.matmul(matrix, query, out=out if out is not None and out.shape == (n,) else None)
    if mask is not None:
        scores[~mask] = -np.inf
    top = np.argpartition(scores, n - k)[n - k:] if k < n else np.arange(n)
    order = top[np.lexsort((top, -scores[top]))]
    return order, scores[order]


class ExactIndex:
    """The scan as a ``VectorIndex``: the reference every other backend is measured against."""

    name = "exact"

    def __init__(self, store: FeatureStore, matrix: np.ndarray | None = None):
        self._matrix = matrix if matrix is not None else store.image_matrix()
        self._scores = np.empty(self._matrix.shape[0], dtype=np.float32)
        self._mask = RowMask(store)

    def search(self, queries: np.ndarray, k: int, where: Where | None = None) -> tuple[np.ndarray, np.ndarray]:
        mask = self._mask(where) if where is not None else None
        return padded([exact_topk(self._matrix, np.asarray(q, dtype=np.float32), k, self._scores, mask)
                       for q in np.atleast_2d(queries)], k)


def create(store: FeatureStore, folder: str | os.PathLike, options: dict, quiet: bool = True) -> dict:
    """Nothing to build: the config only records that the scan serves these features."""
    return {"count": store.image_features.shape[0], "dim": store.image_features.shape[1]}


def open_index(store: FeatureStore, config: dict) -> ExactIndex:
    return ExactIndex(store)
