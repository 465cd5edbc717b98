"""Where the tool keeps its own files, and how a path written in a file is read.

Owns the user cache folder (``CLIP_RETRIEVAL_CACHE``, else ``$XDG_CACHE_HOME/clip_retrieval``,
else ``~/.cache/clip_retrieval``) and its sub-folders, so no module picks a cache place of
its own, and ``resolve_path`` (a path in a captions file or manifest is relative to its
root unless absolute).
"""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir(*parts: str) -> Path:
    """The tool's own cache folder, or a folder inside it (ONNX exports, expansion caches, word data)."""
    root = os.environ.get("CLIP_RETRIEVAL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "clip_retrieval")
    return Path(root, *parts)


def resolve_path(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """A path as written in a captions file or manifest: relative to ``root`` unless absolute."""
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p
