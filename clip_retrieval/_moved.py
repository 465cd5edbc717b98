"""Import paths of modules that moved into the layer packages, kept working for one release.

Owns the table of old module names and a finder that answers an old name with the module
now at the new one (the same module object, so monkeypatching either name reaches both),
with a ``DeprecationWarning`` naming the new path. It must not import any of those modules
until an old name is asked for. Remove the table in the release after 0.2.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

MOVED = {
    "clip_retrieval.errors": "clip_retrieval.core.errors",
    "clip_retrieval.hashing": "clip_retrieval.core.hashing",
    "clip_retrieval.store": "clip_retrieval.features.store",
    "clip_retrieval.dataset": "clip_retrieval.collection.dataset",
    "clip_retrieval.expansion": "clip_retrieval.query.expansion",
    "clip_retrieval.dictionary": "clip_retrieval.query.dictionary",
    "clip_retrieval.segmentation": "clip_retrieval.query.segmentation",
    "clip_retrieval.searchlog": "clip_retrieval.logs.searchlog",
    "clip_retrieval.logreview": "clip_retrieval.logs.review",
    "clip_retrieval.demo_data": "clip_retrieval.collection.generated",
    "clip_retrieval.encoders": "clip_retrieval.models",
    "clip_retrieval.encoders.base": "clip_retrieval.models.torch_encoder",
    "clip_retrieval.encoders.catalog": "clip_retrieval.models.catalog",
    "clip_retrieval.encoders.openclip": "clip_retrieval.models.openclip",
    "clip_retrieval.encoders.cnclip": "clip_retrieval.models.cnclip",
    "clip_retrieval.encoders.weights": "clip_retrieval.models.weights",
    "clip_retrieval.runtime": "clip_retrieval.models",
    "clip_retrieval.runtime.onnx": "clip_retrieval.models.onnx",
    "clip_retrieval.runtime.tokenizer": "clip_retrieval.models.tokenizer",
    "clip_retrieval.runtime.transform": "clip_retrieval.models.transform",
    "clip_retrieval.runtime.ptfile": "clip_retrieval.core.ptfile",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self._spec   # the import system stamped the alias's spec on it: give its own back


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old names in ``MOVED``; every other import goes on as usual."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        warnings.warn(f"{fullname} moved to {new}; the old name goes away in the next release",
                      DeprecationWarning, stacklevel=3)
        return importlib.machinery.ModuleSpec(fullname, _Alias(new), is_package=fullname in _PACKAGES)


_PACKAGES = {"clip_retrieval.encoders", "clip_retrieval.runtime"}


def install() -> None:
    """Put the finder first on ``sys.meta_path``, once: before the path finder, which would otherwise load
    ``clip_retrieval.encoders.catalog`` a second time from the aliased package's folder."""
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedFinder())
