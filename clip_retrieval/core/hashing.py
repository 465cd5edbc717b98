"""Content hashes: the sha256 of a file or of bytes, and the one fingerprint format.

Owns how the project names content (image identity in the manifest and the search log,
captions files) and how it names weights and feature matrices (``fingerprint``:
``sha256:`` and 16 hex digits). It imports nothing from the package, so any module may use it.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint(hexdigest: str) -> str:
    """The short form weights and feature matrices are named by (``sha256:`` + 16 hex digits)."""
    return "sha256:" + hexdigest[:16]


def tensor_fingerprint(tensor) -> str:
    """Hash of a float32 matrix (numpy array or CPU tensor)."""
    return fingerprint(hashlib.sha256(np.ascontiguousarray(tensor, dtype=np.float32).tobytes()).hexdigest())


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MB blocks (weights files run to gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
