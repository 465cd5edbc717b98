"""Index backends behind one interface, and the registry that maps a name to one.

``build`` makes the named backend serve a features folder and records it in ``index.json``
beside the features; ``open_index`` reads that file, so search, serve, eval and replay use
whatever was built without extra flags. Adding a backend is one module with
``create(store, folder, options, quiet) -> dict`` and ``open_index(store, config)`` plus one
entry in ``BACKENDS``. Backends import their libraries only when used.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from ..core.errors import InputError
from .base import INDEX_CONFIG, VectorIndex, Where, read_config, write_config  # noqa: F401  (public API)

if TYPE_CHECKING:
    from ..features.store import FeatureStore

log = logging.getLogger(__name__)

BACKENDS = {
    "exact": "clip_retrieval.index.exact",
    "faiss": "clip_retrieval.index.faiss",
    "qdrant": "clip_retrieval.index.qdrant",
}


def backend(name: str) -> ModuleType:
    """The module implementing a backend, imported on first use."""
    if name not in BACKENDS:
        raise InputError(f"未知的索引后端 / unknown index backend {name!r}: use one of {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])


def build(store: FeatureStore, name: str, options: dict | None = None, quiet: bool = True) -> dict:
    """Make backend ``name`` serve these features; returns the config written to ``index.json``."""
    config = {"backend": name, **backend(name).create(store, store.folder, dict(options or {}), quiet),
              "features_fingerprint": store.fingerprint, "model": store.model}
    write_config(store.folder, config)
    return config


def open_index(store: FeatureStore, exact: bool = False) -> VectorIndex:
    """The backend ``index.json`` names for these features; the exact scan when there is none,
    when ``exact`` is asked for, or when the index was built from other features (with a warning)."""
    from .exact import ExactIndex

    config = None if exact else read_config(store.folder)
    if config is None or config["backend"] == "exact":
        return ExactIndex(store)
    if config.get("features_fingerprint") != store.fingerprint:
        log.warning("索引与特征不符，改用精确检索 / ignoring %s: built from other features; rebuild with "
                    "clipsou index --backend %s --features %s", Path(store.folder) / INDEX_CONFIG,
                    config["backend"], store.folder)
        return ExactIndex(store)
    return backend(config["backend"]).open_index(store, config)

