"""Extraction shards: the plan that cuts the images to encode into shards, and the journal that keeps each one.

Owns the shard rule (consecutive blocks of ``shard_size`` images, in the collection's own row
order, so the cut depends neither on how many workers run nor on which finishes first), each
shard's key (the weights fingerprint, the decoding settings and every file's path, size and
modification time: a shard is reused only for exactly the files and model it was made from),
writing a finished shard (its vectors plus a record of what it holds) atomically through the
project's one writer, and reading finished shards back in plan order. The journal lives in a
hidden folder inside the features folder (``.extract-shards/``) while an extraction runs, and is
removed once the features are saved.

It must not choose where a shard is encoded (``engines``), decode or encode images itself
(``extract.encode_images`` does, in every engine) or write the features folder (``store.save``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import __version__
from . import store
from ..core import ptfile

log = logging.getLogger(__name__)

JOURNAL_DIR = ".extract-shards"
SHARD_FORMAT = 1
DEFAULT_SHARD_SIZE = 1000


@dataclass(frozen=True)
class Decoding:
    """What, besides the files and the weights, decides a shard's vectors (so a change of any of them re-encodes)."""

    fingerprint: str          # the weights fingerprint of the model that encodes
    dim: int
    image_size: int | None    # JPEG draft target (None: exact decoding)
    max_pixels: int

    def key(self) -> str:
        return f"{SHARD_FORMAT}|{self.fingerprint}|{self.dim}|{self.image_size}|{self.max_pixels}"


@dataclass(frozen=True)
class Shard:
    """One block of the plan: positions ``start .. start+len(paths)`` of the images to encode."""

    index: int
    start: int
    paths: tuple[str, ...]
    key: str                  # sha256 over the decoding settings and each file's path, size and mtime

    @property
    def stop(self) -> int:
        return self.start + len(self.paths)

    @property
    def file_name(self) -> str:
        return f"shard-{self.index:06d}-{self.key[:16]}.pt"


@dataclass
class ShardResult:
    """What encoding one shard gave, positions relative to the shard (as ``extract.encode_images`` returns)."""

    features: np.ndarray                    # [n, dim] float32, zero rows where the image was skipped
    kept: np.ndarray                        # [n] bool
    hashes: list[str]
    skipped: list[tuple[int, str, str]]     # (position in shard, sha256, reason)


def plan(paths: Sequence[Path], stats: Sequence[os.stat_result], decoding: Decoding,
         shard_size: int = DEFAULT_SHARD_SIZE) -> list[Shard]:
    """Cut the images into consecutive shards of ``shard_size``; the same inputs always give the same shards."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    shards = []
    for index, start in enumerate(range(0, len(paths), shard_size)):
        block = [str(p) for p in paths[start:start + shard_size]]
        digest = hashlib.sha256(decoding.key().encode())
        for path, st in zip(block, stats[start:start + shard_size]):
            digest.update(f"\0{path}\0{st.st_size}\0{st.st_mtime_ns}".encode("utf-8", "surrogateescape"))
        shards.append(Shard(index=index, start=start, paths=tuple(block), key=digest.hexdigest()))
    return shards


class ShardJournal:
    """The finished shards of one features folder, each a ``.pt`` holding its vectors and its record.

    One file per shard, so a shard is either wholly there or not at all (``store.write_atomic``);
    a damaged or foreign file is not trusted, only encoded again.
    """

    def __init__(self, out: str | os.PathLike):
        self.folder = Path(out) / JOURNAL_DIR

    def path_of(self, shard: Shard) -> Path:
        return self.folder / shard.file_name

    def finished(self, shards: Sequence[Shard], decoding: Decoding) -> set[int]:
        """Indexes of the shards already written for exactly these files and this model."""
        done = set()
        for shard in shards:
            path = self.path_of(shard)
            if not path.is_file():
                continue
            try:
                self.read(shard, decoding)
            except Exception as exc:  # any damage (a torn zip, a foreign file) means encode again, never trust
                log.warning("shard %d (%s) is damaged and will be encoded again: %s", shard.index, path, exc)
                continue
            done.add(shard.index)
        return done

    def write(self, shard: Shard, result: ShardResult, decoding: Decoding, node: str = "") -> Path:
        """Save one finished shard atomically, with the record of what it holds and who made it."""
        record = {"format": SHARD_FORMAT, "tool_version": __version__, "index": shard.index, "start": shard.start,
                  "key": shard.key, "model_fingerprint": decoding.fingerprint, "paths": list(shard.paths),
                  "sha256": result.hashes, "kept": [bool(k) for k in result.kept],
                  "skipped": [list(s) for s in result.skipped], "node": node}
        features = np.ascontiguousarray(result.features, dtype=np.float32)
        path = self.path_of(shard)
        text = json.dumps(record, ensure_ascii=False)
        store.write_atomic(path, lambda tmp: ptfile.write(tmp, {"features": features, "record": text}),
                           4 * features.size + len(text.encode("utf-8")) + 16384)
        return path

    def record(self, shard: Shard) -> dict:
        """The record of a finished shard (what it holds, which node wrote it)."""
        return json.loads(ptfile.read(self.path_of(shard))["record"])

    def read(self, shard: Shard, decoding: Decoding) -> ShardResult:
        """A finished shard's result; ``ValueError`` when the file is not this shard's."""
        payload = ptfile.read(self.path_of(shard))
        record = json.loads(payload["record"])
        features = payload["features"]
        n = len(shard.paths)
        if (record.get("format") != SHARD_FORMAT or record.get("key") != shard.key
                or record.get("paths") != list(shard.paths) or record.get("model_fingerprint") != decoding.fingerprint
                or features.shape != (n, decoding.dim) or len(record.get("kept", ())) != n
                or len(record.get("sha256", ())) != n):
            raise ValueError("its record does not match the shard planned for these files and this model")
        return ShardResult(features=features, kept=np.asarray(record["kept"], dtype=bool),
                           hashes=list(record["sha256"]),
                           skipped=[(int(p), str(h), str(r)) for p, h, r in record["skipped"]])

    def clear(self) -> None:
        """Remove the journal once the features it fed are saved."""
        shutil.rmtree(self.folder, ignore_errors=True)


def assemble(shards: Sequence[Shard], results: dict[int, ShardResult], total: int, dim: int
             ) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[int, str, str]]]:
    """The shards' results put back together in plan order, as one ``encode_images`` call over all paths returns."""
    feats = np.zeros((total, dim), dtype=np.float32)
    kept = np.zeros(total, dtype=bool)
    hashes = [""] * total
    skipped: list[tuple[int, str, str]] = []
    for shard in shards:
        result = results[shard.index]
        feats[shard.start:shard.stop] = result.features
        kept[shard.start:shard.stop] = result.kept
        hashes[shard.start:shard.stop] = result.hashes
        skipped.extend((shard.start + pos, digest, reason) for pos, digest, reason in result.skipped)
    return feats, kept, hashes, sorted(skipped)
