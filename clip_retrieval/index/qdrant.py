"""The Qdrant backend: a vector database, embedded (a local folder) or a server/cluster.

Owns choosing the engine (``--qdrant-url``: a server through qdrant-client; a local folder:
Qdrant Edge, ``qdrant_edge.py``, or qdrant-client's local mode where Edge does not import, said
in one line), connecting to a server (with a short timeout and clear failures), creating the
collection there (cosine, HNSW settings, shards and replicas, payload indexes), syncing it with a
features folder (only new, changed and removed points are written) and searching it with payload
filters. Point ids, payloads and identity checks are shared with Edge (``qdrant_common.py``).

A point's id is a UUID taken from the sha256 of the image's content hash and its path, so
re-indexing the same features writes the same points (idempotent), and two files with the
same bytes stay two results, as the exact scan shows them. Its payload holds the path
relative to the collection root, the captions and the content hash, so a result can be shown
without the local manifest. The API key is read from ``QDRANT_API_KEY``, never from a flag
or ``index.json``.
"""

from __future__ import annotations

import atexit
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.extras import require
from ..core.errors import InputError, VectorDatabaseError
from .base import VectorIndex, Where, check_positive, padded, rows_of
from .qdrant_common import (API_KEY_ENV, DEFAULT_COLLECTION, HNSW_EF, HNSW_EF_CONSTRUCT, HNSW_M,  # noqa: F401
                            LOCAL_FOLDER, check_count, check_identity, metadata, payload, point_id)
from .qdrant_common import to_filter as _to_filter

if TYPE_CHECKING:
    import numpy as np

    from ..features.store import FeatureStore

log = logging.getLogger(__name__)

TIMEOUT_S = 5                      # a missing server is named within seconds, never waited on
CLIENT_LOCAL = "qdrant-client-local"   # index.json's engine for qdrant-client's local mode (and indexes without one)
UPLOAD_BATCH, UPLOAD_RETRIES = 256, 3

# One embedded client per folder and process: local mode locks its folder, so a second client
# on the same folder in this process (replay opening two searchers, build then search) would
# be refused as if another program held it.
_LOCAL_CLIENTS: dict[str, object] = {}


def _close_local_clients() -> None:
    """Release the folder locks before interpreter shutdown (the client's own finaliser runs too late)."""
    while _LOCAL_CLIENTS:
        _LOCAL_CLIENTS.popitem()[1].close()


def _client_module():
    return require("qdrant_client")


def local_size_limit() -> int:
    """The collection size above which qdrant-client itself recommends a server over local mode."""
    from qdrant_client.local.qdrant_local import QdrantLocal

    return QdrantLocal.LARGE_DATA_THRESHOLD


def _warn_large(count: int, path: str) -> None:
    limit = local_size_limit()
    if count > limit:
        log.warning("本地模式的 Qdrant 不建议超过 %s 个点（现有 %s），请改用服务器 / Qdrant local mode is not meant for "
                    "more than %s points (%s has %s): start a server (docker run -p 6333:6333 qdrant/qdrant) and "
                    "index with --qdrant-url http://localhost:6333", f"{limit:,}", f"{count:,}", f"{limit:,}",
                    path, f"{count:,}")


def connect(path: str | os.PathLike | None = None, url: str | None = None):
    """A client for a local folder or a server URL, checked to answer (a missing server fails within seconds)."""
    qdrant_client = _client_module()
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if url:
        client = qdrant_client.QdrantClient(url=url, api_key=os.environ.get(API_KEY_ENV) or None, timeout=TIMEOUT_S,
                                            check_compatibility=False)
        try:
            client.get_collections()
        except UnexpectedResponse as exc:
            hint = (f"; set {API_KEY_ENV} to the server's API key" if exc.status_code in (401, 403) else "")
            raise VectorDatabaseError(f"Qdrant 服务器 {url} 拒绝了请求 / Qdrant server {url} answered "
                                      f"{exc.status_code} {exc.reason_phrase}{hint}") from None
        except (ResponseHandlingException, OSError) as exc:
            raise VectorDatabaseError(
                f"无法连接 Qdrant 服务器 {url} / cannot reach the Qdrant server at {url} within {TIMEOUT_S} s "
                f"({type(exc).__name__}); start it (docker run -p 6333:6333 qdrant/qdrant) or check the URL") from None
        return client
    key = str(Path(path).resolve())
    if key in _LOCAL_CLIENTS:
        return _LOCAL_CLIENTS[key]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            client = qdrant_client.QdrantClient(path=key)
        except RuntimeError as exc:
            if "already accessed" not in str(exc):
                raise
            raise VectorDatabaseError(
                f"Qdrant 本地文件夹 {key} 正被另一个程序使用；多个程序共用一个索引请用服务器 / the Qdrant folder {key} is "
                f"in use by another program (local mode allows one at a time); to share one index, run a server "
                f"(docker run -p 6333:6333 qdrant/qdrant) and index with --qdrant-url http://localhost:6333") from None
    large = [w for w in caught if "not recommended" in str(w.message)]
    for w in caught:
        if w not in large:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if large:  # the client's own warning, replaced by one that says what to do instead
        for collection in client.get_collections().collections:
            _warn_large(client.count(collection.name, exact=True).count, key)
    if not _LOCAL_CLIENTS:
        atexit.register(_close_local_clients)
    _LOCAL_CLIENTS[key] = client
    return client


def to_filter(where: Where | None):
    """The ``Where`` filters as a qdrant-client payload filter."""
    from qdrant_client import models

    return _to_filter(where, models)


def _check_collection(client, name: str, store: FeatureStore, where: str) -> None:
    """Refuse a collection made from another model, weights or dimension, naming both."""
    info = client.get_collection(name)
    vectors = info.config.params.vectors
    check_identity(info.config.metadata or {}, vectors.size if hasattr(vectors, "size") else None, name, store, where)


def _create_collection(client, name: str, store: FeatureStore, options: dict, local: bool) -> None:
    from qdrant_client import models

    client.create_collection(
        name,
        vectors_config=models.VectorParams(size=store.image_features.shape[1], distance=models.Distance.COSINE),
        hnsw_config=models.HnswConfigDiff(m=options["hnsw_m"], ef_construct=options["hnsw_ef_construct"]),
        shard_number=options.get("shards"), replication_factor=options.get("replicas"),
        metadata=metadata(store))
    if local:  # local mode scans payloads and warns that indexes do nothing there
        return
    keyword_prefix = models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, prefix=True)
    client.create_payload_index(name, "path", field_schema=keyword_prefix)
    client.create_payload_index(name, "captions", field_schema=keyword_prefix)
    client.create_payload_index(name, "sha256", field_schema=models.PayloadSchemaType.KEYWORD)


def _stored(client, name: str) -> dict[str, list[str]]:
    """Every point already in the collection: id -> captions (vectors are not read back)."""
    found: dict[str, list[str]] = {}
    offset = None
    while True:
        records, offset = client.scroll(name, limit=2048, offset=offset, with_payload=["captions"], with_vectors=False)
        found.update((str(r.id), (r.payload or {}).get("captions")) for r in records)
        if offset is None:
            return found


def _location(store: FeatureStore, options: dict) -> tuple[str | None, str | None]:
    """(local folder, server URL): the URL when given, else the folder (default: qdrant/ in the features)."""
    url = options.get("url")
    if url and options.get("path"):
        raise InputError("--qdrant-path 和 --qdrant-url 只能选一个 / give --qdrant-path or --qdrant-url, not both")
    if url:
        return None, url
    return str(Path(options.get("path") or Path(store.folder) / LOCAL_FOLDER).resolve()), None


def create(store: FeatureStore, folder: str | os.PathLike, options: dict, quiet: bool = True) -> dict:
    """Create or sync the collection: upsert new and changed points, delete removed ones.

    Returns the config for ``index.json``, with how many points were written and deleted.
    """
    for flag in ("shards", "replicas", "hnsw_m", "hnsw_ef_construct", "hnsw_ef"):
        check_positive("--" + flag.replace("_", "-"), options.get(flag))
    options = {"hnsw_m": HNSW_M, "hnsw_ef_construct": HNSW_EF_CONSTRUCT, "hnsw_ef": HNSW_EF,
               **{k: v for k, v in options.items() if v is not None}}
    path, url = _location(store, options)
    name = options.get("collection") or DEFAULT_COLLECTION
    config = {"collection": name, "path": _stored_path(path, folder), "url": url, "count": len(store.manifest.images),
              "dim": store.image_features.shape[1],
              "hnsw": {"m": options["hnsw_m"], "ef_construct": options["hnsw_ef_construct"], "ef": options["hnsw_ef"]},
              "shards": options.get("shards"), "replicas": options.get("replicas")}
    if url:
        config["api_key_env"] = API_KEY_ENV
    if path is not None and _edge().available():
        config.update(_edge().create(store, path, name, options, quiet))
        log.info("qdrant edge %s at %s: %d points written, %d deleted", name, path, config["written"],
                 config["deleted"])
        return config
    if path is not None:
        log.warning("Qdrant Edge（qdrant-edge-py）在此不可用，改用 qdrant-client 的本地模式 / Qdrant Edge (qdrant-edge-py) "
                    "does not import here, so %s uses qdrant-client's local mode (a numpy scan, slow past 20,000 "
                    "points): pip install qdrant-edge-py, or use a server (--qdrant-url)", path)
        config["engine"] = CLIENT_LOCAL
    return {**config, **_sync_client(store, path, url, name, options, quiet)}


def _edge():
    from . import qdrant_edge

    return qdrant_edge


def _stored_path(path: str | None, folder: str | os.PathLike) -> str | None:
    """The local folder as index.json records it: relative to the features when inside them."""
    if path is None:
        return None
    inside = Path(path).resolve().is_relative_to(Path(folder).resolve())
    return os.path.relpath(path, Path(folder).resolve()) if inside else path


def _sync_client(store: FeatureStore, path: str | None, url: str | None, name: str, options: dict,
                 quiet: bool) -> dict:
    """Sync a collection through qdrant-client (a server, or its local mode): upsert, delete, counts."""
    from qdrant_client import models
    from tqdm import tqdm

    where = url or path
    client = connect(path, url)
    if options.get("recreate") and client.collection_exists(name):
        client.delete_collection(name)
    if client.collection_exists(name):
        _check_collection(client, name, store, where)
    else:
        _create_collection(client, name, store, options, local=url is None)
    rows = rows_of(store)
    ids = [point_id(r) for r in rows]
    stored = _stored(client, name)
    todo = [i for i, (pid, row) in enumerate(zip(ids, rows)) if pid not in stored or stored[pid] != row.captions]
    wanted = set(ids)
    stale = [pid for pid in stored if pid not in wanted]
    matrix = store.image_matrix()
    points = (models.PointStruct(id=ids[i], vector=matrix[i].tolist(), payload=payload(rows[i])) for i in todo)
    client.upload_points(name, tqdm(points, total=len(todo), desc="qdrant / 上传", unit="pt",
                                    disable=quiet or len(todo) < UPLOAD_BATCH),
                         batch_size=UPLOAD_BATCH, max_retries=UPLOAD_RETRIES, wait=True)
    for start in range(0, len(stale), 4096):
        client.delete(name, points_selector=models.PointIdsList(points=stale[start:start + 4096]), wait=True)
    if path is not None:
        _warn_large(len(rows), path)
    log.info("qdrant %s at %s: %d points written, %d deleted", name, where, len(todo), len(stale))
    return {"written": len(todo), "deleted": len(stale)}


class QdrantIndex:
    """A Qdrant collection as a ``VectorIndex``; points map back to the store's rows by id."""

    name = "qdrant"

    def __init__(self, store: FeatureStore, client, collection: str, hnsw_ef: int | None = HNSW_EF):
        self.client = client
        self.collection = collection
        self.hnsw_ef = hnsw_ef          # None in local mode, which always scans exactly
        self._row = {point_id(r): i for i, r in enumerate(rows_of(store))}

    def search(self, queries: np.ndarray, k: int, where: Where | None = None) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np
        from qdrant_client import models

        flt = to_filter(where)
        params = models.SearchParams(hnsw_ef=max(self.hnsw_ef, k)) if self.hnsw_ef else None
        requests = [models.QueryRequest(query=np.asarray(q, dtype=np.float32).tolist(), filter=flt, limit=k,
                                        params=params, with_payload=False)
                    for q in np.atleast_2d(queries)]
        out = []
        for response in self.client.query_batch_points(self.collection, requests=requests):
            found = [(self._row[str(p.id)], p.score) for p in response.points if str(p.id) in self._row]
            if len(found) < len(response.points):
                log.warning("collection %s holds points these features lack; re-run clipsou index",
                            self.collection)
            found.sort(key=lambda rs: (-rs[1], rs[0]))
            out.append((np.array([r for r, _ in found], dtype=np.int64),
                        np.array([s for _, s in found], dtype=np.float32)))
        return padded(out, k)


def open_index(store: FeatureStore, config: dict) -> VectorIndex:
    """Connect as ``index.json`` says and check the collection still matches the features' model and count."""
    url = config.get("url")
    path = None if url else str((Path(store.folder) / config["path"]).resolve())
    ef = config.get("hnsw", {}).get("ef", HNSW_EF)
    if config.get("engine") == _edge().ENGINE:
        return _edge().open_index(store, path, config, ef)
    if path is not None and _edge().available():
        log.warning("%s 由 qdrant-client 本地模式建立，重建后改用 Qdrant Edge / %s was built by qdrant-client's local mode "
                    "(a numpy scan); clipsou index --backend qdrant --recreate --features %s moves it to Qdrant Edge",
                    path, path, store.folder)
    client = connect(path, url)
    name = config["collection"]
    if not client.collection_exists(name):
        raise VectorDatabaseError(f"Qdrant 集合 {name} 不存在 / collection {name} is missing at {url or path}; "
                                  f"rebuild it with clipsou index --backend qdrant --features {store.folder}")
    _check_collection(client, name, store, url or path)
    check_count(client.count(name, exact=True).count, config, store, url or path)
    return QdrantIndex(store, client, name, ef if url else None)
