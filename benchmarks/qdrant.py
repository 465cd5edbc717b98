"""``python -m benchmarks.qdrant [--quick] [--json]``: Qdrant against the exact scan, measured in one run.

Recall@10 and p50 latency of the Qdrant backend against the exact numpy scan over the same
clustered unit vectors (as ``benchmarks.measure``), through the project's own index path
(``index --backend qdrant``): 100k vectors in embedded local mode, and 1M on a server when
``QDRANT_URL`` is set. The exact scan is the baseline; ratios are Qdrant / exact. Times on a
shared machine are noisy: compare the ratio, not the milliseconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from benchmarks.measure import clustered
from clip_retrieval import api
from clip_retrieval.features import store
from clip_retrieval.index import open_index
from clip_retrieval.index import qdrant as qd

QUERIES = 50


def features_folder(folder: Path, vectors: np.ndarray) -> Path:
    """A features folder holding these vectors, one generated image path per row (no images are drawn)."""
    images = [{"path": f"shard_{i % 100:02d}/img_{i:07d}.jpg", "captions": [f"照片 {i % 7}"],
               "sha256": hashlib.sha256(str(i).encode()).hexdigest()} for i in range(len(vectors))]
    manifest = store.Manifest(model=store.ModelInfo(name="bench:clustered", fingerprint="bench", dim=vectors.shape[1]),
                              root=folder / "collection", images=images)
    store.save(folder, torch.from_numpy(vectors), torch.empty(0, vectors.shape[1]), manifest)
    return folder


def measure(vectors: np.ndarray, folder: Path, **options) -> dict:
    """Upload through ``index --backend qdrant``, then time both backends on the same queries."""
    rng = np.random.default_rng(1)
    queries = vectors[rng.integers(0, len(vectors), QUERIES)] + 0.05 * rng.standard_normal(
        (QUERIES, vectors.shape[1])).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    features_folder(folder, vectors)
    start = time.perf_counter()
    api.build_index(folder, "qdrant", quiet=False, **options)
    upload_s = time.perf_counter() - start
    feats = store.load(folder, with_text=False)
    served, exact = open_index(feats), open_index(feats, exact=True)
    timings: dict[str, list[float]] = {"exact": [], "qdrant": []}
    recall = []
    for q in queries:
        for name, index in (("exact", exact), ("qdrant", served)):
            t = time.perf_counter()
            rows, _ = index.search(q[None, :], 10)
            timings[name].append(time.perf_counter() - t)
            if name == "exact":
                truth = set(rows[0].tolist())
        recall.append(len(truth & set(rows[0].tolist())) / 10)
    exact_ms = statistics.median(timings["exact"]) * 1000
    qdrant_ms = statistics.median(timings["qdrant"]) * 1000
    return {"vectors": len(vectors), "upload_s": round(upload_s, 2), "exact_p50_ms": round(exact_ms, 3),
            "qdrant_p50_ms": round(qdrant_ms, 3), "latency_ratio": round(qdrant_ms / exact_ms, 3),
            "recall_at_10": float(np.mean(recall))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10k vectors locally, 100k on a server (default: off)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (default: a table)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = {}
    with tempfile.TemporaryDirectory(prefix="clip_retrieval_qdrant_bench_") as work:
        n = 10_000 if args.quick else 100_000
        results["local"] = measure(clustered(n), Path(work) / "local")
        url = os.environ.get("QDRANT_URL")
        if url:
            name = f"clip_retrieval_bench_{uuid.uuid4().hex[:8]}"
            try:
                results["server"] = measure(clustered(100_000 if args.quick else 1_000_000), Path(work) / "server",
                                            url=url, collection=name)
            finally:
                qd.connect(url=url).delete_collection(name)
        else:
            results["server"] = "skipped: QDRANT_URL is not set"
    if args.json:
        print(json.dumps(results))
    else:
        for where, figures in results.items():
            print(f"{where}: " + (figures if isinstance(figures, str) else
                                  "  ".join(f"{k} {v}" for k, v in figures.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
