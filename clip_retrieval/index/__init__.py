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


# options that describe one build rather than the index (kept out of index.json's "options")
_ONE_OFF_OPTIONS = {"recreate"}


def build(store: FeatureStore, name: str, options: dict | None = None, quiet: bool = True) -> dict:
    """Make backend ``name`` serve these features; returns the config written to ``index.json``.

    The options are recorded, so ``refresh`` can rebuild the same index after ``extract --update``."""
    options = dict(options or {})
    config = {"backend": name, **backend(name).create(store, store.folder, dict(options), quiet),
              "features_fingerprint": store.fingerprint, "model": store.model,
              "options": {k: v for k, v in options.items() if k not in _ONE_OFF_OPTIONS}}
    write_config(store.folder, config)
    return config


def refresh(store: FeatureStore, quiet: bool = True) -> dict | None:
    """After the features changed: rebuild the index ``index.json`` names with the options it was built with.

    Returns ``{"backend", "rebuilt", "config"}``, or None when no index (or the exact scan) serves the
    folder or it already matches. An index recorded without its options (built by an older version)
    is not guessed at: ``rebuilt`` is False and searches use the exact scan, saying so."""
    config = read_config(store.folder)
    if config is None or config["backend"] == "exact" or config.get("features_fingerprint") == store.fingerprint:
        return None
    if "options" not in config:
        return {"backend": config["backend"], "rebuilt": False, "config": config}
    return {"backend": config["backend"], "rebuilt": True,
            "config": build(store, config["backend"], config["options"], quiet=quiet)}


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

