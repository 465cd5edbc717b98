"""What every Qdrant engine shares (Qdrant Edge in this process, qdrant-client's local mode, a server).

Owns the defaults, a point's id and payload, the ``Where`` filters in Qdrant's terms (built by the
engine's own model classes, which have the same names in qdrant-client and qdrant-edge), the
identity check of a stored collection against a features folder, and the check that an index
still holds what ``index.json`` says. It must not import any Qdrant library itself.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import TYPE_CHECKING

from ..core.errors import ModelMismatchError, VectorDatabaseError
from .base import Row, Where

if TYPE_CHECKING:
    from ..features.store import FeatureStore

API_KEY_ENV = "QDRANT_API_KEY"
DEFAULT_COLLECTION = "clip_retrieval"
LOCAL_FOLDER = "qdrant"            # the local index's default folder, inside the features folder
HNSW_M, HNSW_EF_CONSTRUCT, HNSW_EF = 16, 64, 128


def point_id(row: Row) -> str:
    """The point's UUID: from the content hash and the path, so the same image always gets the same id."""
    return str(uuid.UUID(hashlib.sha256(f"{row.sha256}\n{row.path}".encode("utf-8")).hexdigest()[:32]))


def payload(row: Row) -> dict:
    return {"path": row.path, "captions": row.captions, "sha256": row.sha256}


def to_filter(where: Where | None, models):
    """The ``Where`` filters as a payload filter on the indexed ``path`` and ``captions`` fields.

    ``models`` is the engine's module of request classes (``qdrant_client.models`` or ``qdrant_edge``).
    """
    if where is None:
        return None
    must = []
    if where.path_prefix is not None:
        must.append(models.FieldCondition(key="path", match=models.MatchPrefix(prefix=where.path_prefix + "/")))
    if where.caption_contains is not None:
        must.append(models.FieldCondition(key="captions", match=models.MatchSubstring(substring=where.caption_contains)))
    return models.Filter(must=must)


def metadata(store: FeatureStore) -> dict:
    """What a collection records about the features it was made from."""
    return {"model": store.model, "model_fingerprint": store.model_fingerprint,
            "dim": store.image_features.shape[1], "tool": "clip_retrieval"}


def check_identity(meta: dict, size: int | None, name: str, store: FeatureStore, where: str) -> None:
    """Refuse a collection made from another model, weights or dimension, naming both."""
    dim = store.image_features.shape[1]
    theirs = f"{meta.get('model', 'unknown model')} ({size}-d)"
    ours = f"{store.model} ({dim}-d)"
    if meta.get("model") != store.model or size != dim:
        raise ModelMismatchError(
            f"Qdrant 集合 {name}（{where}）由 {theirs} 生成，特征由 {ours} 生成 / collection {name} at {where} holds "
            f"{theirs} vectors, the features in {store.folder} are {ours}; use another --collection, or --recreate")
    if meta.get("model_fingerprint") != store.model_fingerprint:
        raise ModelMismatchError(
            f"Qdrant 集合 {name}（{where}）来自另一组权重 / collection {name} at {where} was built with "
            f"{store.model} weights {meta.get('model_fingerprint')}, the features in {store.folder} with "
            f"{store.model_fingerprint}; use another --collection, or --recreate")


def check_count(held: int, config: dict, store: FeatureStore, where: str) -> None:
    """Refuse an index that does not hold what ``index.json`` says (an interrupted rebuild, a damaged folder).

    Searching it would silently miss the best matches, so the search stops and names the rebuild.
    """
    if held != config.get("count"):
        raise VectorDatabaseError(
            f"Qdrant 集合 {config['collection']}（{where}）有 {held} 个点，index.json 记录 {config.get('count')} 个："
            f"索引不完整或已损坏 / collection {config['collection']} at {where} holds {held} points but index.json "
            f"says {config.get('count')}: the index is incomplete (an interrupted rebuild?) or damaged; rebuild it "
            f"with clipsou index --backend qdrant --recreate --features {store.folder} (search --exact answers "
            f"meanwhile)")
