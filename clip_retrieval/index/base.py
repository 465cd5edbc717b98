"""The nearest-neighbour interface every index backend implements, the filters they all run,
and ``index.json``, the small file beside the features that says which backend serves them.

Owns what is common to backends: the ``VectorIndex`` protocol, ``Where`` (the result filters,
expressed once), each row's payload (path relative to the collection root, captions, content
hash) and reading/writing ``index.json``. It must not know any backend's library.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol

from ..core.errors import FeatureStoreError, InputError

if TYPE_CHECKING:  # numpy and the store (torch) load on use: the CLI parser reads this package for its help
    import numpy as np

    from ..features.store import FeatureStore

INDEX_CONFIG = "index.json"


@dataclass(frozen=True)
class Where:
    """Result filters a photo collection needs; every backend runs exactly these semantics.

    ``path_prefix``: a folder relative to the collection root (its images and its subfolders').
    ``caption_contains``: some caption of the image contains this text (case-sensitive, as typed).
    """

    path_prefix: str | None = None
    caption_contains: str | None = None

    @classmethod
    def parse(cls, path_prefix: str | None, caption_contains: str | None,
              root: str | os.PathLike | None = None) -> Where | None:
        """Normalise what a user typed; None when there is nothing to filter on.

        The folder may be written relative to the collection root (as the log and results show
        paths), absolute, or relative to the working folder (``../photos/宠物``): the last counts
        when it names a folder inside the collection and the root has no folder of that name.
        """
        prefix = None
        if path_prefix is not None and path_prefix.strip():
            text = path_prefix.strip().replace("\\", "/")
            if root is not None and not Path(text).is_absolute() and not (Path(root) / text).is_dir():
                here = Path(text).resolve()
                if here.is_dir() and here.is_relative_to(Path(root).resolve()):
                    text = str(here)
            if root is not None and Path(text).is_absolute():
                text = relative_path(Path(text).resolve() if Path(text).exists() else text, Path(root).resolve())
            prefix = str(PurePosixPath(text)).rstrip("/")
            if prefix in ("", "."):
                prefix = None
        caption = caption_contains if caption_contains else None
        return cls(prefix, caption) if prefix is not None or caption is not None else None

    def path_prefix_matches(self, path: str) -> bool:
        """Whether a path (relative to the collection root) lies in the folder ``path_prefix`` or below it."""
        return self.path_prefix is None or path.startswith(self.path_prefix + "/")

    def matches(self, path: str, captions: list[str]) -> bool:
        """Whether an image (path relative to the collection root, its captions) passes the filter."""
        if not self.path_prefix_matches(path):
            return False
        return self.caption_contains is None or any(self.caption_contains in c for c in captions)

    def to_json(self) -> dict:
        return {k: v for k, v in (("path_prefix", self.path_prefix), ("caption_contains", self.caption_contains))
                if v is not None}


def check_matches(where: Where, rows: list[Row]) -> None:
    """Refuse a filter that no image of the collection passes, saying which part matched nothing and what would.

    The first passing row ends the check; only when none passes are the rows looked at again, to
    name the cause: a folder that does not exist (with the nearest that do), a file-name prefix
    (``--where-path`` takes folders), a collection without captions.
    """
    if any(where.matches(r.path, r.captions) for r in rows):
        return
    import difflib

    def fail(what: str) -> None:
        raise InputError(f"筛选条件没有匹配任何图片 / no image in the collection matches {what}; nothing was "
                         f"searched (exit 2)")

    prefix, caption = where.path_prefix, where.caption_contains
    if prefix is not None and not any(where.path_prefix_matches(r.path) for r in rows):
        folders = sorted({str(PurePosixPath(r.path).parents[i]) for r in rows
                          for i in range(len(PurePosixPath(r.path).parents) - 1)})
        named = sum(r.path.startswith(prefix) for r in rows)
        below = [f for f in folders if f.startswith(prefix)][:3]
        if below:
            fail(f"--where-path {prefix}: no such folder; folders whose names start with it: {', '.join(below)}")
        if named:
            fail(f"--where-path {prefix}: it is not a folder, though {named} image paths start with it; "
                 f"--where-path takes a folder (e.g. {str(PurePosixPath(prefix).parent)}), narrow by words with "
                 f"--where-caption")
        near = difflib.get_close_matches(prefix, folders, n=3, cutoff=0.3) or folders[:3]
        fail(f"--where-path {prefix}: no such folder in the collection (a folder relative to its root, to the working "
             f"folder, or absolute); nearest folders: {', '.join(near) if near else '(none: every image is at the root)'}")
    if caption is not None and not any(r.captions for r in rows):
        fail(f"--where-caption {caption!r}: this collection has no captions (it was indexed from a folder); "
             f"filter by folder with --where-path, or extract --csv with captions")
    if caption is not None and not any(caption in c for r in rows for c in r.captions):
        fail(f"--where-caption {caption!r}: no caption contains it (case-sensitive, as typed)")
    fail(f"--where-path {prefix} together with --where-caption {caption!r}: each matches images, but none both")


def relative_path(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """A manifest image path as a POSIX path relative to the collection root (absolute when outside it)."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


@dataclass(frozen=True)
class Row:
    """What a backend stores beside a vector, so a result can be shown without the local manifest."""

    path: str
    captions: list[str]
    sha256: str


def rows_of(store: FeatureStore) -> list[Row]:
    """One ``Row`` per image vector, in the store's order."""
    return [Row(relative_path(e["path"], store.root), list(e.get("captions", [])), e.get("sha256", ""))
            for e in store.manifest.images]


class RowMask:
    """Boolean row masks for ``Where`` filters over one store, computed once per filter."""

    def __init__(self, store: FeatureStore):
        self._store = store
        self._rows: list[Row] | None = None
        self._masks: dict[Where, np.ndarray] = {}

    def __call__(self, where: Where) -> np.ndarray:
        import numpy as np

        if self._rows is None:
            self._rows = rows_of(self._store)
        if where not in self._masks:  # only the last filter is kept: a session asks for one at a time
            self._masks = {where: np.fromiter((where.matches(r.path, r.captions) for r in self._rows),
                                              dtype=bool, count=len(self._rows))}
        return self._masks[where]


class VectorIndex(Protocol):
    """Nearest neighbours among a store's image vectors.

    ``search`` takes a ``[Q, D]`` float32 batch of unit vectors and returns ``(rows, scores)``,
    each ``[Q, k]``, best first, where rows index the store's images and -1 marks no result
    (fewer than k images pass ``where``). Scores are cosine similarities.
    """

    name: str

    def search(self, queries: np.ndarray, k: int, where: Where | None = None) -> tuple[np.ndarray, np.ndarray]:
        ...


def padded(results: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query (rows, scores) lists stacked into ``[Q, k]`` arrays, short ones padded with -1 / -inf."""
    import numpy as np

    rows = np.full((len(results), k), -1, dtype=np.int64)
    scores = np.full((len(results), k), -np.inf, dtype=np.float32)
    for q, (r, s) in enumerate(results):
        rows[q, :len(r)] = r[:k]
        scores[q, :len(s)] = s[:k]
    return rows, scores


def read_config(folder: str | os.PathLike) -> dict | None:
    """``index.json`` beside the features, or None when there is none."""
    path = Path(folder) / INDEX_CONFIG
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise FeatureStoreError(f"{path}: 不是有效的 JSON / not valid JSON ({exc}); rebuild it with clipsou index "
                                f"--features {folder}") from exc
    if not isinstance(config, dict) or "backend" not in config:
        raise FeatureStoreError(f"{path}: 未指明后端 / names no backend; "
                                f"rebuild it with clipsou index --features {folder}")
    return config


def write_config(folder: str | os.PathLike, config: dict) -> None:
    """Write ``index.json`` atomically (never an API key: backends name the variable holding it)."""
    from ..core.files import write_atomic

    path = Path(folder) / INDEX_CONFIG
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8"))


def check_positive(name: str, value: int | None) -> None:
    """Refuse a count option below 1, naming the flag."""
    if value is not None and value < 1:
        raise InputError(f"{name} 至少为 1 / {name} must be at least 1, got {value}")
