"""Content hashes: the sha256 of a file or of bytes.

Owns how the project names content (image identity in the manifest and the search log,
weights fingerprints, captions files). It imports nothing from the package, so any module
may use it: the encoders need file hashes without depending on ``dataset``.
"""

from __future__ import annotations

import hashlib
import os


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MB blocks (weights files run to gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
