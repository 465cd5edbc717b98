"""The FAISS backend: an approximate nearest-neighbour index file beside the features.

Owns building, saving, loading and querying ``index.faiss`` (its settings go to ``index.json``
through the registry). The kind is chosen by size: below ``EXACT_BELOW`` vectors the exact
scan is already fast, up to ``HNSW_UP_TO`` an HNSW graph, above that an inverted file (IVF).
Filters over-fetch: the index is asked for more neighbours until k pass the row mask.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.extras import require
from ..core.errors import FeatureStoreError, InputError
from ..features.store import FeatureStore
from ..core.files import write_atomic
from .base import RowMask, Where, padded

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
EXACT_BELOW = 20_000
HNSW_UP_TO = 300_000
KINDS = ("auto", "hnsw", "ivf", "flat")


def _faiss():
    return require("faiss")


def _peak_rss_kb() -> int:
    """Peak resident memory of this process in KiB (0 where the platform has no getrusage)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def choose_kind(n: int) -> str:
    return "flat" if n < EXACT_BELOW else "hnsw" if n <= HNSW_UP_TO else "ivf"


@dataclass
class AnnIndex:
    index: object
    meta: dict

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, scores) for a ``[Q, D]`` float32 batch, best first; -1 marks no result."""
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return ids, scores


def _add(index, vectors: np.ndarray, quiet: bool, chunk: int = 50_000) -> None:
    from tqdm import tqdm

    with tqdm(total=len(vectors), desc="index / 索引", unit="vec", disable=quiet or len(vectors) <= chunk) as bar:
        for start in range(0, len(vectors), chunk):
            index.add(vectors[start:start + chunk])
            bar.update(min(chunk, len(vectors) - start))


def build(vectors: np.ndarray, kind: str = "auto", fp16: bool = False, seed: int = 0,
          quiet: bool = True) -> AnnIndex:
    """Build an inner-product index over unit vectors; returns it with build time and memory measured."""
    faiss = _faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    kind = choose_kind(n) if kind == "auto" else kind
    if kind not in KINDS:
        raise InputError(f"未知的索引类型 / unknown index kind {kind!r}: use one of {', '.join(KINDS)}")
    rss_before = _peak_rss_kb()
    start = time.perf_counter()
    metric = faiss.METRIC_INNER_PRODUCT
    params: dict = {}
    if kind == "flat":
        index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, metric) if fp16 else faiss.IndexFlatIP(d)
        _add(index, vectors, quiet)
    elif kind == "hnsw":
        params = {"M": 32, "ef_construction": 80, "ef_search": 96}
        index = (faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_fp16, params["M"], metric) if fp16
                 else faiss.IndexHNSWFlat(d, params["M"], metric))
        index.hnsw.efConstruction = params["ef_construction"]
        if fp16:
            index.train(vectors)
        _add(index, vectors, quiet)
        index.hnsw.efSearch = params["ef_search"]
    else:
        nlist = int(math.sqrt(n))
        params = {"nlist": nlist, "nprobe": max(16, nlist // 32)}
        quantizer = faiss.IndexFlatIP(d)
        index = (faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_fp16, metric) if fp16
                 else faiss.IndexIVFFlat(quantizer, d, nlist, metric))
        rng = np.random.default_rng(seed)
        sample = vectors[rng.choice(n, size=min(n, nlist * 40), replace=False)]
        index.cp.seed = seed
        index.train(sample)
        _add(index, vectors, quiet)
        index.nprobe = params["nprobe"]
    seconds = time.perf_counter() - start
    grown_mb = (_peak_rss_kb() - rss_before) / 1024
    meta = {"backend": "faiss", "kind": kind, "fp16": fp16, "count": n, "dim": d, "params": params,
            "build_seconds": round(seconds, 3), "build_peak_rss_growth_mb": round(grown_mb, 1)}
    return AnnIndex(index, meta)


def save(folder: str | os.PathLike, ann: AnnIndex) -> Path:
    """Write ``index.faiss`` atomically; its size joins the settings."""
    folder = Path(folder)
    faiss = _faiss()
    write_atomic(folder / INDEX_FILE, lambda tmp: faiss.write_index(ann.index, str(tmp)))
    ann.meta = dict(ann.meta, size_bytes=(folder / INDEX_FILE).stat().st_size)
    return folder / INDEX_FILE


def load(folder: str | os.PathLike, meta: dict) -> AnnIndex:
    """The index file beside the features, with the search settings it was built with."""
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        raise InputError(f"{path}: 文件缺失 / is missing; "
                         f"rebuild it with clipsou index --backend faiss --features {folder}")
    faiss = _faiss()
    rebuild = f"rebuild it with clipsou index --backend faiss --features {folder}"
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:  # a truncated or overwritten file: faiss says only "read error"
        raise FeatureStoreError(f"{path}: 索引文件已损坏 / the index file is damaged or truncated "
                                f"({str(exc).strip().splitlines()[-1][:120]}); {rebuild}") from None
    found = _describe(faiss, index)
    expected = (meta.get("kind"), meta.get("count"), meta.get("dim"))
    if found != expected:
        raise FeatureStoreError(f"{path}: 索引文件与 index.json 不符 / the index file does not match index.json: it "
                                f"holds a {found[0]} index of {found[1]} {found[2]}-d vectors, index.json describes a "
                                f"{expected[0]} index of {expected[1]} {expected[2]}-d vectors; {rebuild}")
    if meta["kind"] == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = meta["params"]["ef_search"]
    elif meta["kind"] == "ivf":
        faiss.extract_index_ivf(index).nprobe = meta["params"]["nprobe"]
    return AnnIndex(index, meta)


def _describe(faiss, index) -> tuple[str, int, int]:
    """(kind, vectors, dimension) of a loaded index, in ``build``'s terms."""
    index = faiss.downcast_index(index)
    kind = ("hnsw" if isinstance(index, faiss.IndexHNSW) else "ivf" if isinstance(index, faiss.IndexIVF)
            else "flat" if isinstance(index, (faiss.IndexFlat, faiss.IndexScalarQuantizer)) else type(index).__name__)
    return kind, int(index.ntotal), int(index.d)


class FaissIndex:
    """An ``AnnIndex`` as a ``VectorIndex``: filters by over-fetching until k rows pass the mask."""

    name = "faiss"

    def __init__(self, store: FeatureStore, ann: AnnIndex):
        self.ann = ann
        self._count = store.image_features.shape[0]
        self._mask = RowMask(store)

    def search(self, queries: np.ndarray, k: int, where: Where | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = np.atleast_2d(queries)
        if where is None:
            return self.ann.search(queries, k)
        mask = self._mask(where)
        wanted = min(k, int(mask.sum()))
        share = max(mask.mean(), 1e-9) if self._count else 1.0
        out = []
        for q in queries:
            fetch = min(self._count, max(4 * k, int(2 * k / share)))
            while True:
                ids, scores = self.ann.search(q[None, :], fetch)
                keep = (ids[0] >= 0) & mask[np.maximum(ids[0], 0)]
                if keep.sum() >= wanted or fetch >= self._count:
                    break
                fetch = min(self._count, fetch * 4)
            out.append((ids[0][keep][:k], scores[0][keep][:k]))
        return padded(out, k)


def create(store: FeatureStore, folder: str | os.PathLike, options: dict, quiet: bool = True) -> dict:
    """Build and save the index; returns its settings (kind, parameters, time, memory, size)."""
    built = build(store.image_matrix(), kind=options.get("kind", "auto"), fp16=options.get("fp16", False),
                  quiet=quiet)
    save(folder, built)
    return built.meta


def open_index(store: FeatureStore, config: dict) -> FaissIndex:
    return FaissIndex(store, load(store.folder, config))
