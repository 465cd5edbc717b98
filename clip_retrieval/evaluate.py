"""Retrieval metrics as the CLIP and Chinese-CLIP papers use them.

Owns Recall@K, mAP, NDCG@10 and mean/median rank over a score matrix and relevant sets,
building query sets from a captions file or a query file, and the query file's format
(``file_queries`` reads it, ``write_query_file`` writes it). It must not load models
or open feature files itself: callers hand it a loaded encoder and store, so a result
can be recomputed from saved features.

Definitions: ``recall@k`` is the share of queries with at least one relevant item in
the top k; ``map`` is the mean over queries of average precision over the query's whole
relevant set (a relevant item missing from the collection still counts in the
denominator); ``ndcg@10`` uses binary relevance. Ties are broken pessimistically: a
relevant item ranks after every non-relevant item with the same score, so a model that
scores everything equal earns nothing from the order of the collection.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .collection.dataset import read_user_text
from .core.errors import InputError
from .features.store import Manifest
from .core.paths import resolve_path

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


@dataclass
class QuerySet:
    """Text queries and, for each, the indices of the relevant images (negative: missing from the collection)."""

    queries: list[str]
    relevant: list[set[int]]


def caption_queries(manifest: Manifest) -> QuerySet:
    """Each distinct caption is a query; every image carrying that caption is relevant."""
    by_text: dict[str, set[int]] = {}
    for entry in manifest.captions:
        by_text.setdefault(entry["text"], set()).add(entry["image"])
    if not by_text:
        raise InputError("这些特征没有文本描述 / these features have no captions; "
                         "evaluate with --queries FILE (query,image_path rows)")
    texts = list(by_text)
    return QuerySet(texts, [by_text[t] for t in texts])


def file_queries(path: str | os.PathLike, manifest: Manifest) -> QuerySet:
    """``query,image_path`` rows; several rows per query give its relevant set.

    An image path may be written relative to the query file, relative to the collection root (as
    the log, results and ``--where-path`` write it) or absolute; the first that names an image of
    the features is used. A row naming no image of the features would score as a miss and make
    every figure silently wrong (0.0000, mean rank nan), so such rows are refused together,
    naming their lines, and an image left out at extraction says why it was.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"找不到查询文件 / query file not found: {path}")
    index = {str(manifest.image_file(i).resolve()): i for i in range(len(manifest.images))}
    skipped = {str(resolve_path(manifest.root, e["path"]).resolve()): e.get("reason", "") for e in manifest.skipped}
    here, root = path.resolve().parent, Path(manifest.root)
    text, _ = read_user_text(path, ("查询文件", "query file"))
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    header = [c.strip().lower() for c in next(reader, [])]
    if header[:2] != ["query", "image_path"]:
        raise InputError(f"{path} line 1: 表头应为 query,image_path / the header must be 'query,image_path', "
                         f"got {','.join(header)!r}")
    grouped: dict[str, set[int]] = {}
    unmatched: list[str] = []
    for row in reader:
        if not any(c.strip() for c in row):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise InputError(f"{path} line {reader.line_num}: 应为两列 / expected 'query,image_path'")
        written = row[1].strip()
        tried = [str(resolve_path(base, written).resolve()) for base in (here, root)]
        found = next((index[t] for t in tried if t in index), None)
        if found is None:
            why = next((f"left out at extraction: {skipped[t]}" for t in tried if t in skipped), "not in the features")
            unmatched.append(f"line {reader.line_num} {written} ({why})")
            continue
        grouped.setdefault(row[0].strip(), set()).add(found)
    if unmatched:
        shown = "; ".join(unmatched[:5]) + (f"; and {len(unmatched) - 5} more" if len(unmatched) > 5 else "")
        raise InputError(f"{path}: {len(unmatched)} 行的图片不在特征中 / rows name no image of the features: {shown}; "
                         f"write image paths relative to this file, to the collection root {root}, or absolute, "
                         f"and leave out images the features do not hold")
    if not grouped:
        raise InputError(f"{path}: 没有查询 / no queries")
    queries = list(grouped)
    return QuerySet(queries, [grouped[q] for q in queries])


def write_query_file(path: str | os.PathLike, rows: list[tuple[str, str]], root: str | os.PathLike) -> Path:
    """Write ``query,image_path`` rows in the format ``file_queries`` reads (image paths made absolute under ``root``)."""
    from .core.files import write_atomic

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["query", "image_path"])
            writer.writerows((q, str(resolve_path(root, p))) for q, p in rows)

    write_atomic(path, write)
    return Path(path)


def text_to_image(query_vectors: np.ndarray, image_features: np.ndarray, relevant: list[set[int]]) -> dict:
    return retrieval_metrics(np.asarray(query_vectors, np.float32) @ np.asarray(image_features, np.float32).T, relevant)


def image_to_text(manifest: Manifest, image_features: np.ndarray, caption_vectors: np.ndarray,
                  captions: list[str]) -> dict:
    """Each image queries the distinct captions; its own captions (and identical texts) are relevant."""
    position = {t: i for i, t in enumerate(captions)}
    relevant = [{position[t] for t in img.get("captions", []) if t in position} for img in manifest.images]
    return retrieval_metrics(np.asarray(image_features, np.float32) @ np.asarray(caption_vectors, np.float32).T,
                             relevant)


def per_query(queries: list[str], relevant: list[set[int]], plain_scores: np.ndarray,
              expanded_scores: np.ndarray) -> list[dict]:
    """Each query's first relevant rank and reciprocal rank without and with expansion (a rules reviewer's table).

    A query none of whose relevant images is in the collection has no rank and a reciprocal rank of 0.
    """
    rows = []
    for q, query in enumerate(queries):
        row: dict = {"query": query, "relevant": len(relevant[q])}
        for name, scores in (("no_expansion", plain_scores), ("expansion", expanded_scores)):
            ranks = ranks_of_relevant(scores[q], relevant[q])
            row[f"rank_{name}"] = ranks[0] if ranks else None
            row[f"rr_{name}"] = 1.0 / ranks[0] if ranks else 0.0
        row["rr_change"] = row["rr_expansion"] - row["rr_no_expansion"]
        rows.append(row)
    return rows


def helps_and_hurts(rows: list[dict], top: int = 5) -> tuple[list[dict], list[dict]]:
    """The queries expansion helps most and hurts most, by change in reciprocal rank (ties: query order)."""
    helped = sorted((r for r in rows if r["rr_change"] > 0), key=lambda r: -r["rr_change"])[:top]
    hurt = sorted((r for r in rows if r["rr_change"] < 0), key=lambda r: r["rr_change"])[:top]
    return helped, hurt


PER_QUERY_COLUMNS = ("query", "relevant", "rank_no_expansion", "rr_no_expansion", "rank_expansion", "rr_expansion",
                     "rr_change")


def write_per_query(rows: list[dict], path: str | os.PathLike) -> None:
    """The per-query table as CSV (UTF-8 with BOM for spreadsheet programs), written atomically."""
    import pandas as pd

    from .core.files import write_atomic

    frame = pd.DataFrame(rows, columns=list(PER_QUERY_COLUMNS))
    for column in ("rank_no_expansion", "rank_expansion"):
        frame[column] = frame[column].astype("Int64")
    write_atomic(Path(path), lambda tmp: frame.to_csv(tmp, index=False, encoding="utf-8-sig", float_format="%.6f"))
