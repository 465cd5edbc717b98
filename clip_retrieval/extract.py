"""Extraction: a collection in, normalised image and caption features out.

Owns the batching pipeline (DataLoader with decoding in worker processes, overlapped
with the model) and what goes into the manifest. It must not parse CSVs itself
(``dataset``) or know the file format (``store``).
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import store
from .dataset import DEFAULT_MAX_PIXELS, Collection, ImageFiles, collate_images, sha256_file
from .encoders import Encoder
from .errors import InputError

log = logging.getLogger(__name__)


def default_workers() -> int:
    """One decoding worker per spare core (at least one), at most four."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


@dataclass
class ExtractResult:
    manifest: dict
    skipped: list[dict] = field(default_factory=list)


def encode_collection_images(encoder: Encoder, coll: Collection, batch_size: int = 32,
                             num_workers: int | None = None, quiet: bool = False,
                             max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[torch.Tensor, list[str], list[tuple[int, str, str]]]:
    """Encode every image; returns (features of the kept images in order, all hashes, skipped)."""
    paths = [coll.resolve(p) for p in coll.images]
    dataset = ImageFiles(paths, encoder.preprocess, encoder.image_size, max_pixels)
    workers = default_workers() if num_workers is None else num_workers
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_images,
                        pin_memory=encoder.device.type == "cuda",
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    feats = torch.empty(len(paths), encoder.dim)
    kept = torch.zeros(len(paths), dtype=torch.bool)
    hashes = [""] * len(paths)
    skipped: list[tuple[int, str, str]] = []
    with tqdm(total=len(paths), desc="images / 图片", unit="img", disable=quiet) as bar:
        for idx, pixels, digests, bad in loader:
            if pixels is not None:
                feats[idx] = encoder.encode_images(pixels)
                kept[idx] = True
                for i, h in zip(idx, digests):
                    hashes[i] = h
            for i, h, reason in bad:
                hashes[i] = h
                skipped.append((i, h, reason))
            bar.update(len(idx) + len(bad))
    return feats[kept], hashes, sorted(skipped)


def extract(encoder: Encoder, coll: Collection, out: str | os.PathLike, batch_size: int = 32,
            num_workers: int | None = None, quiet: bool = False,
            max_pixels: int = DEFAULT_MAX_PIXELS, checkpoint: str | None = None) -> ExtractResult:
    """Encode a collection and save features + manifest under ``out`` (atomically).

    ``checkpoint`` is recorded so a later search loads the same local weights by itself.
    """
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    image_feats, hashes, skipped = encode_collection_images(
        encoder, coll, batch_size, num_workers, quiet, max_pixels)
    skipped_ids = {i for i, _, _ in skipped}
    keep = [i for i in range(len(coll.images)) if i not in skipped_ids]
    if not keep:
        raise InputError(f"no image in {coll.source} could be read; see the reasons logged above")
    new_index = {old: new for new, old in enumerate(keep)}
    caption_ids = [c for c, img in enumerate(coll.caption_image) if img in new_index]
    captions = [coll.captions[c] for c in caption_ids]
    text_feats = torch.empty(0, encoder.dim)
    if captions:
        chunks = []
        with tqdm(total=len(captions), desc="captions / 文本", unit="txt", disable=quiet) as bar:
            for start in range(0, len(captions), 256):
                chunks.append(encoder.encode_texts(captions[start:start + 256]))
                bar.update(len(chunks[-1]))
        text_feats = torch.cat(chunks)
    images = []
    for old in keep:
        images.append({"path": coll.images[old], "sha256": hashes[old], "captions": []})
    caption_entries = []
    for c in caption_ids:
        img = new_index[coll.caption_image[c]]
        images[img]["captions"].append(coll.captions[c])
        caption_entries.append({"image": img, "text": coll.captions[c], "row": coll.caption_rows[c]})
    skipped_entries = [{"path": coll.images[i], "row": coll.image_rows[i], "sha256": h, "reason": reason}
                       for i, h, reason in skipped]
    for entry in skipped_entries:
        log.warning("skipped %s (row %s): %s", entry["path"], entry["row"], entry["reason"])
    source = dict(coll.source)
    if "csv" in source:
        source["csv_sha256"] = sha256_file(source["csv"])
        source["csv"] = str(Path(source["csv"]).resolve())
    manifest = {
        "model": {"name": encoder.name, "fingerprint": encoder.fingerprint, "dim": encoder.dim,
                  "languages": sorted(encoder.languages),
                  "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None},
        "source": source,
        "root": str(coll.root),
        "counts": {"images": len(images), "captions": len(caption_entries), "skipped": len(skipped_entries)},
        "images": images,
        "captions": caption_entries,
        "skipped": skipped_entries,
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "device": str(encoder.device)},
    }
    written = store.save(out, image_feats, text_feats, manifest)
    return ExtractResult(manifest=written, skipped=skipped_entries)
