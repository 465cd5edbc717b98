"""``python -m benchmarks.qdrant [--quick] [--sizes 100k,1m] [--json]``: exact, FAISS and local Qdrant in one run.

For each size, clustered synthetic 512-d unit vectors (as ``benchmarks.measure``) go into a features
folder, and each backend is built through the project's own path (``api.build_index``: the exact
scan, FAISS with ``--kind auto``, Qdrant Edge in ``FEATURES/qdrant``) and queried through
``index.open_index``, each in a process of its own so its peak memory is its own. Figures:
build seconds, p50/p95 latency of one query (k=10), recall@10 against the exact scan, peak
resident memory (MiB) of that process, keyed ``{exact,faiss,qdrant_local}_{metric}_{size}``.
Times on a shared machine are noisy: the figures say what the machine had that day.
``QDRANT_URL`` adds the same figures for a server (``qdrant_server_*``), dropping its collection after.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from benchmarks.measure import clustered

QUERIES = 200
K = 10
SIZES = {"100k": 100_000, "1m": 1_000_000}
BACKENDS = ("exact", "faiss", "qdrant_local")


def features_folder(folder: Path, vectors: np.ndarray) -> Path:
    """A features folder holding these vectors, one generated image path per row (no images are drawn)."""
    import torch

    from clip_retrieval.features import store

    images = [{"path": f"shard_{i % 100:02d}/img_{i:07d}.jpg", "captions": [f"照片 {i % 7}"],
               "sha256": hashlib.sha256(str(i).encode()).hexdigest()} for i in range(len(vectors))]
    manifest = store.Manifest(model=store.ModelInfo(name="bench:clustered", fingerprint="bench", dim=vectors.shape[1]),
                              root=folder / "collection", images=images)
    store.save(folder, torch.from_numpy(vectors), torch.empty(0, vectors.shape[1]), manifest)
    return folder


def queries_for(vectors: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1)
    queries = vectors[rng.integers(0, len(vectors), QUERIES)] + 0.05 * rng.standard_normal(
        (QUERIES, vectors.shape[1])).astype(np.float32)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def run_one(backend: str, folder: Path, work: Path) -> dict:
    """Build and query one backend in this process (the child side of ``measure``)."""
    from clip_retrieval import api
    from clip_retrieval.features import store
    from clip_retrieval.index import open_index

    options = {"url": os.environ["QDRANT_URL"], "collection": os.environ["BENCH_COLLECTION"]} \
        if backend == "qdrant_server" else {}
    start = time.perf_counter()
    api.build_index(folder, {"exact": "exact", "faiss": "faiss"}.get(backend, "qdrant"), quiet=True, **options)
    build_s = time.perf_counter() - start
    index = open_index(store.load(folder, with_text=False))
    queries, truth = np.load(work / "queries.npy"), np.load(work / "truth.npy")
    index.search(queries[:2], K)                       # first-query costs (opening files) are not latency
    times, recall = [], []
    for q, t in zip(queries, truth):
        t0 = time.perf_counter()
        rows, _ = index.search(q[None, :], K)
        times.append(time.perf_counter() - t0)
        recall.append(len(set(rows[0].tolist()) & set(t.tolist())) / K)
    ms = np.array(times) * 1000
    return {"build_s": round(build_s, 2), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p95_ms": round(float(np.percentile(ms, 95)), 3), "recall_at_10": round(float(np.mean(recall)), 4),
            "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def measure(n: int, work: Path, backends: tuple[str, ...]) -> dict[str, dict]:
    """One features folder of n vectors; each backend built and timed in its own process."""
    from clip_retrieval.index.exact import exact_topk

    vectors = clustered(n)
    folder = features_folder(work / "features", vectors)
    queries = queries_for(vectors)
    truth = np.stack([exact_topk(vectors, q, K)[0] for q in queries])
    del vectors
    np.save(work / "queries.npy", queries)
    np.save(work / "truth.npy", truth)
    out = {}
    for backend in backends:
        env = dict(os.environ, BENCH_COLLECTION=f"clip_retrieval_bench_{uuid.uuid4().hex[:8]}")
        ran = subprocess.run([sys.executable, "-m", "benchmarks.qdrant", "--one", backend, "--folder", str(folder),
                              "--work", str(work)], capture_output=True, text=True, env=env)
        if ran.returncode != 0:
            out[backend] = {"error": ran.stderr.strip().splitlines()[-1] if ran.stderr.strip() else str(ran.returncode)}
        else:
            out[backend] = json.loads(ran.stdout.strip().splitlines()[-1])
        if backend == "qdrant_server":
            from clip_retrieval.index import qdrant as qd

            qd.connect(url=os.environ["QDRANT_URL"]).delete_collection(env["BENCH_COLLECTION"])
        logging.getLogger(__name__).warning("%s at %d: %s", backend, n, out[backend])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10k vectors only (default: off)")
    parser.add_argument("--sizes", default="100k,1m", help="sizes to measure, of 100k and 1m (default: 100k,1m)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (default: a table)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.one:
        print(json.dumps(run_one(args.one, Path(args.folder), Path(args.work))))
        return 0
    sizes = {"10k": 10_000} if args.quick else {s: SIZES[s] for s in args.sizes.split(",")}
    backends = BACKENDS + (("qdrant_server",) if os.environ.get("QDRANT_URL") else ())
    results: dict = {"queries": QUERIES, "k": K, "cpus": os.cpu_count()}
    for label, n in sizes.items():
        with tempfile.TemporaryDirectory(prefix="clip_retrieval_qdrant_bench_") as work:
            for backend, figures in measure(n, Path(work), backends).items():
                for key, value in figures.items():
                    results[f"{backend}_{key}_{label}"] = value
    if args.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            print(f"{key}\t{value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
