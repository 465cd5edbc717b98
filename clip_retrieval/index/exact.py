"""The exact backend: every vector scanned (numpy), filters as a row mask. Always available."""

from __future__ import annotations

import os

import numpy as np

from ..store import FeatureStore
from .base import RowMask, Where, padded


class ExactIndex:
    """The scan as a ``VectorIndex``: the reference every other backend is measured against."""

    name = "exact"

    def __init__(self, store: FeatureStore, matrix: np.ndarray | None = None):
        from ..search import exact_topk

        self._topk = exact_topk
        self._matrix = matrix if matrix is not None else store.image_matrix()
        self._scores = np.empty(self._matrix.shape[0], dtype=np.float32)
        self._mask = RowMask(store)

    def search(self, queries: np.ndarray, k: int, where: Where | None = None) -> tuple[np.ndarray, np.ndarray]:
        mask = self._mask(where) if where is not None else None
        return padded([self._topk(self._matrix, np.asarray(q, dtype=np.float32), k, self._scores, mask)
                       for q in np.atleast_2d(queries)], k)


def create(store: FeatureStore, folder: str | os.PathLike, options: dict, quiet: bool = True) -> dict:
    """Nothing to build: the config only records that the scan serves these features."""
    return {"count": store.image_features.shape[0], "dim": store.image_features.shape[1]}


def open_index(store: FeatureStore, config: dict) -> ExactIndex:
    return ExactIndex(store)
