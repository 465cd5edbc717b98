"""Retrieval metrics as the CLIP and Chinese-CLIP papers use them.

Owns Recall@K, mAP, NDCG@10 and mean/median rank over a score matrix and relevant sets.
It must not load models or features: callers hand it scores, so a result can be
recomputed from saved features without running a model.

Definitions: ``recall@k`` is the share of queries with at least one relevant item in
the top k; ``map`` is the mean over queries of average precision over the query's whole
relevant set (a relevant item missing from the collection still counts in the
denominator); ``ndcg@10`` uses binary relevance. Ties are broken pessimistically: a
relevant item ranks after every non-relevant item with the same score, so a model that
scores everything equal earns nothing from the order of the collection.
"""

from __future__ import annotations

import math

import numpy as np

KS = (1, 5, 10)


def ranks_of_relevant(scores: np.ndarray, relevant: set[int]) -> list[int]:
    """1-based ranks of the relevant items present in ``scores`` (pessimistic ties), ascending."""
    n = scores.shape[0]
    present = [i for i in relevant if 0 <= i < n]
    if not present:
        return []
    is_rel = np.zeros(n, dtype=bool)
    is_rel[present] = True
    order = np.lexsort((is_rel, -scores))  # by score desc, non-relevant first among equals
    positions = np.empty(n, dtype=np.int64)
    positions[order] = np.arange(1, n + 1)
    return sorted(int(positions[i]) for i in present)


def query_metrics(scores: np.ndarray, relevant: set[int], ks: tuple[int, ...] = KS) -> dict[str, float]:
    ranks = ranks_of_relevant(scores, relevant)
    out = {f"recall@{k}": float(bool(ranks) and ranks[0] <= k) for k in ks}
    total = len(relevant)
    out["map"] = sum((j + 1) / r for j, r in enumerate(ranks)) / total if total else 0.0
    dcg = sum(1.0 / math.log2(r + 1) for r in ranks if r <= 10)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(total, 10) + 1))
    out["ndcg@10"] = dcg / ideal if ideal else 0.0
    out["rank"] = float(ranks[0]) if ranks else float("nan")
    return out


def retrieval_metrics(scores: np.ndarray, relevant: list[set[int]], ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Average the per-query metrics over a ``[queries, items]`` score matrix."""
    if scores.shape[0] != len(relevant):
        raise ValueError(f"{scores.shape[0]} score rows but {len(relevant)} relevant sets")
    per = [query_metrics(scores[q], relevant[q], ks) for q in range(scores.shape[0])]
    out = {key: float(np.mean([p[key] for p in per])) for key in [*(f"recall@{k}" for k in ks), "map", "ndcg@10"]}
    ranks = np.array([p["rank"] for p in per if not math.isnan(p["rank"])])
    out["mean_rank"] = float(ranks.mean()) if ranks.size else float("nan")
    out["median_rank"] = float(np.median(ranks)) if ranks.size else float("nan")
    out["queries"] = len(per)
    return out
