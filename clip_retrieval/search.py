"""Search: pool a query's phrasings into one vector and find the nearest images.

Owns weighted pooling, the exact top-k scan and the ``Searcher`` that ties an encoder,
a feature store and a rules table together. It must not print or write logs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from .encoders import Encoder
from .errors import InputError
from .expansion import Expansion, Phrase, RuleTable
from .store import FeatureStore

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 200


@dataclass
class Hit:
    rank: int
    score: float
    image_path: str
    caption: str
    index: int


@dataclass
class SearchResult:
    query: str
    expansions: list[Phrase]
    results: list[Hit]
    model: str
    k: int
    expand: bool
    truncated: bool = False
    matched: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """The ``--json`` object: query, expansions, model, results."""
        return {
            "query": self.query,
            "expansions": [p.text for p in self.expansions],
            "model": self.model,
            "results": [{"rank": h.rank, "score": round(h.score, 6), "image_path": h.image_path,
                         "caption": h.caption} for h in self.results],
        }


def pool(embeddings: torch.Tensor, weights: list[float] | torch.Tensor) -> torch.Tensor:
    """Weighted mean of unit vectors, renormalised to unit length."""
    w = torch.as_tensor(weights, dtype=embeddings.dtype).reshape(-1, 1)
    pooled = (embeddings * w).sum(dim=0) / w.sum()
    return pooled / pooled.norm().clamp_min(1e-12)


def exact_topk(matrix: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the k best rows, best first (matrix-vector product + argpartition)."""
    scores = matrix @ query
    k = min(k, scores.shape[0])
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    top = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(scores.shape[0])
    order = top[np.lexsort((top, -scores[top]))]
    return order, scores[order]


def clean_query(query: str) -> tuple[str, bool]:
    """Strip, refuse empty queries, truncate over-long ones (with a warning)."""
    text = " ".join((query or "").split())
    if not text:
        raise InputError("查询为空 / empty query: type some words, e.g. 金毛")
    if len(text) > MAX_QUERY_CHARS:
        log.warning("query truncated to %d characters / 查询过长，已截断", MAX_QUERY_CHARS)
        return text[:MAX_QUERY_CHARS], True
    return text, False


class Searcher:
    """Text-to-image search over one feature store with one encoder and rules table."""

    def __init__(self, store: FeatureStore, encoder: Encoder, rules: RuleTable | None):
        store.check_model(encoder.name)
        if store.model_fingerprint != encoder.fingerprint:
            log.warning("features in %s were built with %s weights %s, loaded weights are %s",
                        store.folder, store.model, store.model_fingerprint, encoder.fingerprint)
        self.store = store
        self.encoder = encoder
        self.rules = rules
        self._matrix = store.image_matrix()

    def expand(self, query: str, expand: bool = True) -> Expansion:
        if expand and self.rules is not None:
            return self.rules.expand(query, self.encoder.languages)
        return Expansion(query=query, phrases=[Phrase(query, "zh", 1.0)])

    def query_vector(self, expansion: Expansion) -> torch.Tensor:
        """All phrasings in one batch, then the weighted mean."""
        embeddings = self.encoder.encode_texts([p.text for p in expansion.phrases])
        return pool(embeddings, [p.weight for p in expansion.phrases])

    def query_vectors(self, queries: list[str], expand: bool = True) -> torch.Tensor:
        """Pooled vectors for many queries, every phrasing of every query encoded in one pass."""
        expansions = [self.expand(clean_query(q)[0], expand) for q in queries]
        phrases = [p for e in expansions for p in e.phrases]
        embeddings = self.encoder.encode_texts([p.text for p in phrases])
        out, start = [], 0
        for e in expansions:
            n = len(e.phrases)
            out.append(pool(embeddings[start:start + n], [p.weight for p in e.phrases]))
            start += n
        return torch.stack(out) if out else torch.empty(0, self.encoder.dim)

    def search_vector(self, vector: torch.Tensor, k: int) -> list[Hit]:
        idx, scores = exact_topk(self._matrix, vector.numpy().astype(np.float32), k)
        hits = []
        for rank, (i, s) in enumerate(zip(idx.tolist(), scores.tolist()), start=1):
            captions = self.store.captions_of(i)
            hits.append(Hit(rank, float(s), self.store.image_path(i), captions[0] if captions else "", i))
        return hits

    def search_text(self, query: str, k: int = 5, expand: bool = True) -> SearchResult:
        """Expand, encode, pool, renormalise, scan: the whole text-to-image path."""
        if k < 1:
            raise InputError(f"--top-k must be at least 1, got {k}")
        text, truncated = clean_query(query)
        expansion = self.expand(text, expand)
        hits = self.search_vector(self.query_vector(expansion), k)
        return SearchResult(query=text, expansions=expansion.expansions, results=hits,
                            model=self.store.model, k=k, expand=expand, truncated=truncated,
                            matched=expansion.matched)
