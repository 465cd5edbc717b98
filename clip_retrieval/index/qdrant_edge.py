"""Local Qdrant on Qdrant's own engine: a Qdrant Edge shard in a folder, run inside this process.

Owns building, syncing, opening and searching ``DIR/<collection>.edge/`` (the shard in ``shard/``
and ``clipsou.json``: the model, weights, dimension, point count and engine version it was made
with). Every build works on a copy and swaps it in whole (``core.files.write_dir_atomic``), so an
interrupted ``index`` leaves the previous index as it was; builds take a lock beside the folder,
and a second one is refused naming the process that holds it. The HNSW graph is built once after
the bulk load (indexing is off while points stream in), payload indexes cover the fields the
filters read. The shard has no write-ahead log, so any number of processes (the page, a CLI
search) can open a finished one at once; nothing but ``create`` writes to it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
import uuid
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import VectorDatabaseError
from ..core.extras import require
from ..core.files import write_atomic, write_dir_atomic
from .base import Where, padded, rows_of
from .qdrant_common import check_count, check_identity, metadata, payload, point_id, to_filter

if TYPE_CHECKING:
    import numpy as np

    from ..features.store import FeatureStore

log = logging.getLogger(__name__)

ENGINE = "qdrant-edge"
DISTRIBUTION = "qdrant-edge-py"
TESTED = "0.9.0"                   # the version these tests ran on; others open, or say how to rebuild
META_FILE = "clipsou.json"
SHARD = "shard"
UPLOAD_BATCH = 1024
INDEXING_THRESHOLD_KB = 10_000     # smaller segments stay plain (an exact scan), as on a server
FULL_SCAN_THRESHOLD_KB = 10_000    # a filter this selective is answered by scanning its points exactly

# One open shard per index folder and build in this process: a replay opening two searchers, or a build
# followed by a search, reuse it.
_OPEN: dict[tuple[str, str], object] = {}


def available() -> bool:
    """Whether Qdrant Edge imports here (it ships compiled wheels; elsewhere qdrant-client's local mode serves)."""
    try:
        import qdrant_edge  # noqa: F401
    except ImportError:
        return False
    return True


def engine_version() -> str:
    try:
        return importlib_metadata.version(DISTRIBUTION)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def index_folder(path: str | os.PathLike, collection: str) -> Path:
    """Where one collection's Edge index lives inside a ``--qdrant-path`` folder."""
    return Path(path) / f"{collection}.edge"


def _config(edge, dim: int, options: dict, indexing_kb: int):
    return edge.EdgeConfig(
        vectors=edge.EdgeVectorParams(size=dim, distance=edge.Distance.Cosine),
        hnsw_config=edge.HnswIndexConfig(m=options["hnsw_m"], ef_construct=options["hnsw_ef_construct"],
                                         full_scan_threshold=FULL_SCAN_THRESHOLD_KB),
        optimizers=edge.EdgeOptimizersConfig(indexing_threshold=indexing_kb, default_segment_number=1),
        wal_enabled=False)


class BuildLock:
    """One build of an index folder at a time; the refusal names who holds it (pid, host, since when)."""

    def __init__(self, folder: Path):
        self.path = folder.with_name(folder.name + ".lock")
        self.owner = folder.with_name(folder.name + ".lock.owner")

    def __enter__(self) -> BuildLock:
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.path), timeout=0)
        try:
            self._lock.acquire()
        except Timeout:
            try:
                who = json.loads(self.owner.read_text(encoding="utf-8"))
                holder = f"process {who['pid']} on {who['host']} ({who['command']}, since {who['since']})"
            except (OSError, ValueError, KeyError):
                holder = "another process"
            raise VectorDatabaseError(
                f"本地 Qdrant 索引 {self.path.with_suffix('')} 正由 {holder} 构建 / the local Qdrant index "
                f"{self.path.with_suffix('')} is being built by {holder}; wait for it to finish and run "
                f"clipsou index again (searches keep using the previous index meanwhile)") from None
        write_atomic(self.owner, lambda tmp: tmp.write_text(json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
             "command": " ".join(["clipsou", *sys.argv[1:]])[:200]}), encoding="utf-8"))
        return self

    def __exit__(self, *exc) -> None:
        self.owner.unlink(missing_ok=True)
        self._lock.release()


def read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise VectorDatabaseError(f"{folder / META_FILE}: 不是有效的 JSON / not valid JSON ({exc}); rebuild it with "
                                  f"clipsou index --backend qdrant --recreate") from None


def _load(edge, shard_dir: Path, meta: dict, rebuild: str, config=None):
    """Open a shard, naming the engine versions and the rebuild command when this version cannot read it."""
    try:
        return edge.EdgeShard.load(str(shard_dir), config)
    except Exception as exc:  # the engine raises a bare Exception for every failure
        made = meta.get("engine_version", "unknown")
        raise VectorDatabaseError(
            f"本地 Qdrant 索引 {shard_dir.parent} 无法打开 / the local Qdrant index {shard_dir.parent} does not open "
            f"(made by {DISTRIBUTION} {made}, this is {engine_version()}: {str(exc)[:160]}); rebuild it with "
            f"{rebuild}") from None


def _stored(shard, edge) -> dict[str, list[str]]:
    """Every point already in the shard: id -> captions (vectors are not read back)."""
    found: dict[str, list[str]] = {}
    offset = None
    while True:
        records, offset = shard.scroll(edge.ScrollRequest(offset=offset, limit=4096, with_payload=["captions"],
                                                          with_vector=False))
        found.update((str(r.id), (r.payload or {}).get("captions")) for r in records)
        if offset is None:
            return found


def create(store: FeatureStore, path: str, name: str, options: dict, quiet: bool = True) -> dict:
    """Build or sync the collection's Edge index in ``path``; returns what ``index.json`` records of it.

    Sync writes only new and changed points and deletes removed ones, on a copy of the current index;
    ``--recreate`` (or no index yet) loads every point into a fresh shard, then builds the graph.
    """
    from tqdm import tqdm

    edge = require("qdrant_edge")
    folder = index_folder(path, name)
    rebuild = f"clipsou index --backend qdrant --recreate --features {store.folder}"
    dim = store.image_features.shape[1]
    rows = rows_of(store)
    ids = [point_id(r) for r in rows]
    matrix = store.image_matrix()
    counts = {}
    with BuildLock(folder):
        for left in folder.parent.glob(f".{folder.name}.*"):  # a killed build's copy (no build runs but ours)
            shutil.rmtree(left, ignore_errors=True)
        old = None if options.get("recreate") else read_meta(folder)
        if old is not None:
            check_identity(old, old.get("dim"), name, store, str(folder))

        def fill(tmp: Path) -> None:
            shard_dir = tmp / SHARD
            if old is not None:
                shutil.copytree(folder / SHARD, shard_dir)
                shard = _load(edge, shard_dir, old, rebuild, _config(edge, dim, options, INDEXING_THRESHOLD_KB))
                stored = _stored(shard, edge)
            else:  # bulk load with indexing off, then one graph over everything
                shard = edge.EdgeShard.create(str(shard_dir), _config(edge, dim, options, 0))
                keyword_prefix = edge.KeywordIndexParams(prefix=True)
                shard.update(edge.UpdateOperation.create_field_index("path", keyword_prefix))
                shard.update(edge.UpdateOperation.create_field_index("captions", keyword_prefix))
                shard.update(edge.UpdateOperation.create_field_index("sha256", edge.PayloadSchemaType.Keyword))
                stored = {}
            todo = [i for i, (pid, row) in enumerate(zip(ids, rows))
                    if pid not in stored or stored[pid] != row.captions]
            wanted = set(ids)
            stale = [pid for pid in stored if pid not in wanted]
            with tqdm(total=len(todo), desc="qdrant / 写入", unit="pt",
                      disable=quiet or len(todo) < UPLOAD_BATCH) as bar:
                for start in range(0, len(todo), UPLOAD_BATCH):
                    batch = todo[start:start + UPLOAD_BATCH]
                    shard.update(edge.UpdateOperation.upsert_points(
                        [edge.Point(ids[i], matrix[i].tolist(), payload(rows[i])) for i in batch]))
                    bar.update(len(batch))
            for start in range(0, len(stale), 4096):
                shard.update(edge.UpdateOperation.delete_points(stale[start:start + 4096]))
            if old is None:
                shard.close()
                shard = _load(edge, shard_dir, {"engine_version": engine_version()}, rebuild,
                              _config(edge, dim, options, INDEXING_THRESHOLD_KB))
            if not quiet and len(rows) * dim * 4 > INDEXING_THRESHOLD_KB * 1024:  # minutes at a million points
                log.warning("qdrant: 构建 HNSW 图 / building the HNSW graph over %d points", len(rows))
            shard.optimize()
            held = shard.count(edge.CountRequest(exact=True))
            shard.flush()
            shard.close()
            if held != len(rows):
                raise VectorDatabaseError(f"Qdrant Edge 写入后有 {held} 个点，应为 {len(rows)} / the Edge shard holds "
                                          f"{held} points after writing {len(rows)}; rebuild with {rebuild}")
            meta = {**metadata(store), "engine": ENGINE, "engine_version": engine_version(), "count": len(rows),
                    "build": uuid.uuid4().hex, "hnsw": {"m": options["hnsw_m"],
                                                        "ef_construct": options["hnsw_ef_construct"]}}
            (tmp / META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
            counts.update(written=len(todo), deleted=len(stale), build=meta["build"])

        write_dir_atomic(folder, fill)
    return {"engine": ENGINE, "engine_version": engine_version(), **counts}


class EdgeIndex:
    """An Edge shard as a ``VectorIndex``; points map back to the store's rows by id."""

    name = "qdrant"

    def __init__(self, store: FeatureStore, shard, hnsw_ef: int):
        import qdrant_edge

        self._edge = qdrant_edge
        self.shard = shard
        self.hnsw_ef = hnsw_ef
        self._row = {point_id(r): i for i, r in enumerate(rows_of(store))}

    def search(self, queries: np.ndarray, k: int, where: Where | None = None) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        edge = self._edge
        flt = to_filter(where, edge)
        params = edge.SearchParams(hnsw_ef=max(self.hnsw_ef, k))
        requests = [edge.QueryRequest(limit=k, query=edge.Query.Nearest(np.asarray(q, dtype=np.float32).tolist()),
                                      filter=flt, params=params, with_payload=False)
                    for q in np.atleast_2d(queries)]
        out = []
        for points in self.shard.query_batch(edge.QueryBatchRequest(requests)):
            found = [(self._row[str(p.id)], p.score) for p in points if str(p.id) in self._row]
            found.sort(key=lambda rs: (-rs[1], rs[0]))
            out.append((np.array([r for r, _ in found], dtype=np.int64),
                        np.array([s for _, s in found], dtype=np.float32)))
        return padded(out, k)


def open_index(store: FeatureStore, path: str, config: dict, hnsw_ef: int) -> EdgeIndex:
    """Open the Edge index ``index.json`` names and check it is the one built for these features, whole."""
    edge = require("qdrant_edge")
    name = config["collection"]
    folder = index_folder(path, name)
    rebuild = f"clipsou index --backend qdrant --recreate --features {store.folder}"
    meta = read_meta(folder)
    if meta is None or not (folder / SHARD).is_dir():
        raise VectorDatabaseError(f"本地 Qdrant 索引 {folder} 不存在 / the local Qdrant index {folder} is missing; "
                                  f"rebuild it with {rebuild}")
    check_identity(meta, meta.get("dim"), name, store, str(folder))
    if meta.get("engine_version") != engine_version():
        log.info("%s was made by %s %s; opening it with %s", folder, DISTRIBUTION, meta.get("engine_version"),
                 engine_version())
    key = (str(folder.resolve()), str(meta.get("build")))
    if key not in _OPEN:
        shard = _load(edge, folder / SHARD, meta, rebuild)
        check_count(shard.count(edge.CountRequest(exact=True)), config, store, str(folder))
        _OPEN[key] = shard
    if meta.get("count") != config.get("count") or meta.get("build") != config.get("build", meta.get("build")):
        raise VectorDatabaseError(
            f"本地 Qdrant 索引 {folder} 已被另一次构建替换 / the local Qdrant index {folder} was replaced by another build "
            f"({meta.get('count')} points) since {store.folder}/index.json was written ({config.get('count')}); "
            f"run {rebuild}")
    return EdgeIndex(store, _OPEN[key], hnsw_ef)
