"""Extraction: a collection in, normalised image and caption features out.

Owns the batching pipeline (decoding overlapped with the model: worker processes for a
torch model, threads for ONNX Runtime, which releases the GIL as Pillow's decoder does)
and what goes into the manifest. It must not parse CSVs itself (``dataset``) or know the
file format (``store``). Features are float32 numpy; torch is imported only when a torch
model runs.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import platform
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from tqdm import tqdm

from .features import store
from .features.ocrtext import OCR_FILE, OcrImage, OcrLine, OcrText, read_ocr, reusable_lines
from .collection.dataset import DEFAULT_MAX_PIXELS, Collection, ImageFiles, collate_images, open_image
from .core.errors import InputError, UserError
from .core.cpus import usable_cpus
from .core.hashing import sha256_file
from .models.encoder import OnDemand

if TYPE_CHECKING:
    from .models import Encoder
    from .models.ocr import OcrEngine

log = logging.getLogger(__name__)


def default_workers() -> int:
    """One decoding worker per usable core (``core.cpus``: a 1-CPU Ray task gets one), at most four.

    Measured on 2 cores with ViT-B-32 and 12-megapixel JPEGs: 2 workers 16.1 images/s, 1 worker 14.1;
    the model's own threads leave gaps that a second decoder fills.
    """
    return max(1, min(4, usable_cpus()))


@dataclass
class ExtractResult:
    manifest: store.Manifest
    skipped: list[dict] = field(default_factory=list)
    encoded_images: int = 0
    reused_images: int = 0
    encoded_captions: int = 0
    shards: dict = field(default_factory=dict)   # a sharded engine's {"planned", "resumed"}: empty for the local one
    index: dict | None = None   # after --update: the index rebuilt to match (index.refresh), None when none serves them
    ocr: OcrText | None = None                   # the text read in the images (extract --ocr)
    ocr_read: int = 0                            # images OCR read this run (the rest were reused)


# encode_images' signature: (encoder, paths, batch_size, num_workers, quiet, max_pixels, exact_decode) -> its result
ImageEncoding = Callable[..., "tuple[np.ndarray, np.ndarray, list[str], list[tuple[int, str, str]]]"]


def _batches_in_threads(dataset: ImageFiles, batch_size: int, workers: int):
    """Decoded batches in order, decoding a few batches ahead in threads (no worker processes)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque = deque()
        todo = iter(range(len(dataset)))
        for i in todo:
            pending.append(pool.submit(dataset.__getitem__, i))
            if len(pending) >= 3 * batch_size:
                break
        while pending:
            items = []
            while pending and len(items) < batch_size:
                items.append(pending.popleft().result())
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(dataset.__getitem__, nxt))
            good = [(i, px, h) for i, px, h, reason in items if px is not None]
            bad = [(i, h, reason) for i, px, h, reason in items if px is None]
            pixels = np.stack([px for _, px, _ in good]) if good else None
            yield [i for i, _, _ in good], pixels, [h for _, _, h in good], bad


def _batches_in_processes(dataset: ImageFiles, batch_size: int, workers: int, pin_memory: bool):
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_images,
                      pin_memory=pin_memory, prefetch_factor=4 if workers else None, persistent_workers=False)


def encode_images(encoder: Encoder, paths: list[Path], batch_size: int = 32, num_workers: int | None = None,
                  quiet: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS, exact_decode: bool = False,
                  bar: tqdm | None = None, after_batch: Callable[[int, tuple], None] | None = None,
                  seen: Callable | None = None
                  ) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[int, str, str]]]:
    """Encode image files in batches, decoding ahead while the model runs.

    JPEGs decode in draft mode (libjpeg's reduced-size decoding, several times cheaper on phone
    photos; the benchmark prints its smallest cosine to a full decode) unless ``exact_decode``,
    which decodes every pixel as plain PIL does, for parity with upstream pipelines.
    Returns (features with a row per path, mask of rows encoded, content hashes, skipped as
    (position, hash, reason)). ``bar``: a progress bar to advance instead of opening one (an
    engine that encodes the images shard by shard keeps one bar over them all). ``after_batch(n,
    so_far)``: called after each batch with how many leading positions are final (batches come
    back in order) and the four results as filled so far, so an engine can save finished shards
    while the pipeline keeps running. ``seen(position, picture)`` is shown each decoded picture
    in the decoding threads (ONNX Runtime only): the OCR probe reuses the decode.
    """
    feats = np.zeros((len(paths), encoder.dim), dtype=np.float32)
    kept = np.zeros(len(paths), dtype=bool)
    hashes = [""] * len(paths)
    skipped: list[tuple[int, str, str]] = []
    if not paths:
        return feats, kept, hashes, skipped
    threads = encoder.runtime == "onnxruntime"
    dataset = ImageFiles(paths, encoder.preprocess, None if exact_decode else encoder.image_size, max_pixels,
                         seen=seen if threads else None)
    workers = default_workers() if num_workers is None else num_workers
    encoder.prefetch("visual")      # an ONNX session opens while the first batch decodes
    if threads:
        batches = _batches_in_threads(dataset, batch_size, workers)
    else:
        batches = _batches_in_processes(dataset, batch_size, workers, encoder.device.type == "cuda")
    done = 0
    with contextlib.nullcontext(bar) if bar is not None else image_bar(len(paths), quiet) as bar:
        for idx, pixels, digests, bad in batches:
            if pixels is not None:
                feats[idx] = np.asarray(encoder.encode_images(pixels), dtype=np.float32)
                kept[idx] = True
                for i, h in zip(idx, digests):
                    hashes[i] = h
            for i, h, reason in bad:
                hashes[i] = h
                skipped.append((i, h, reason))
            bar.update(len(idx) + len(bad))
            done += len(idx) + len(bad)
            if after_batch is not None:
                after_batch(done, (feats, kept, hashes, skipped))
    return feats, kept, hashes, sorted(skipped)


# read_texts' signature: (ocr, paths, quiet, max_pixels) -> (lines per path, None where OCR failed; reasons)
TextReading = Callable[..., "tuple[list[list[OcrLine] | None], list[str]]"]


def _probe(path: Path, max_pixels: int):
    """A file's bytes and its small copy for the first detection pass (a JPEG decodes in draft mode)."""
    from .models.ocr import PROBE_SIDE

    data = path.read_bytes()
    return data, open_image(data, PROBE_SIDE // 2, max_pixels)


def read_texts(ocr: OcrEngine | Callable[[], OcrEngine], paths: list[Path], quiet: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
               num_workers: int | None = None, bar: tqdm | None = None
               ) -> tuple[list[list[OcrLine] | None], list[str]]:
    """The lines of text in each image: small copies decode ahead in threads while the detector runs.

    Detection runs first on the small copy; only an image where it finds text is decoded
    larger and recognised, so a photo without text costs one draft decode and one small
    detection. A file OCR cannot read gets ``None`` and its reason (its picture features stay).
    ``ocr``: the engine, or the function that opens it (called here, once).
    """
    from .models.ocr import READ_SIDE

    ocr = ocr if hasattr(ocr, "read_found") else ocr()
    lines: list[list[OcrLine] | None] = [None] * len(paths)
    reasons = [""] * len(paths)
    workers = default_workers() if num_workers is None else max(1, num_workers)
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            (contextlib.nullcontext(bar) if bar is not None else text_bar(len(paths), quiet)) as bar:
        pending: deque = deque()
        todo = iter(enumerate(paths))
        for i, path in todo:
            pending.append((i, pool.submit(_probe, path, max_pixels)))
            if len(pending) >= 4 * workers:
                break
        while pending:
            i, future = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt[0], pool.submit(_probe, nxt[1], max_pixels)))
            try:
                data, probe = future.result()
                found = ocr.read_found(open_image(data, READ_SIDE // 2, max_pixels)) if ocr.has_text(probe) else []
                lines[i] = [line.to_json() for line in found]
            except (OSError, ValueError, RuntimeError) as exc:   # ORT raises RuntimeError subclasses
                reasons[i] = f"OCR failed: {exc}"
                log.warning("文字识别失败 / OCR failed on %s: %s (its picture features are kept)", paths[i], exc)
            bar.update(1)
            if lines[i]:
                bar.set_postfix(with_text=sum(1 for x in lines if x), refresh=False)
    return lines, reasons


class _ProbeDuringDecode:
    """The OCR probe run on the picture the model's decoding thread already decoded (``encode_images``' ``seen``).

    A phone photo decodes once, not twice: that decode is as large as the probe's own (JPEG draft
    mode keeps each side at least the model's input size, 1/8 of a 12 MP photo is 504x378). Only
    "no text here" is kept (a set of positions, no pictures held): those images need no OCR pass at
    all; a picture too small to judge, or with text, is read by ``read_texts`` as usual.
    """

    MIN_SIDE = 480      # a decode smaller than this is left to read_texts' own probe

    def __init__(self, ocr: OcrEngine | Callable[[], OcrEngine]):
        self.engine = ocr if hasattr(ocr, "read_found") else ocr()
        self.no_text: set[int] = set()

    def __call__(self, position: int, img) -> None:
        if max(img.size) < self.MIN_SIDE:
            return
        try:
            if not self.engine.has_text(img):
                self.no_text.add(position)
        except Exception as exc:  # noqa: BLE001  a probe failure only means read_texts looks again
            log.debug("OCR probe during decoding failed on position %d: %s", position, exc)


def text_bar(total: int, quiet: bool, initial: int = 0) -> tqdm:
    """The OCR progress bar, the same in every engine."""
    return tqdm(total=total, initial=initial, desc="text / 文字", unit="img", disable=quiet)


def image_bar(total: int, quiet: bool, initial: int = 0) -> tqdm:
    """The images progress bar, the same in every engine."""
    return tqdm(total=total, initial=initial, desc="images / 图片", unit="img", disable=quiet)


def _reusable(coll: Collection, paths: list[Path], stats: list[os.stat_result],
              previous: store.FeatureStore) -> dict[int, tuple[int, str]]:
    """Images whose content is unchanged since ``previous``: position -> (old row, sha256).

    Size and modification time unchanged means unchanged (as make and rsync assume); when
    either differs the content hash decides, so a touched but identical file is not re-encoded.
    """
    old = {str(previous.manifest.image_file(row)): (row, entry) for row, entry in enumerate(previous.manifest.images)}
    reuse = {}
    for i, (path, st) in enumerate(zip(paths, stats)):
        hit = old.get(str(path))
        if hit is None:
            continue
        row, entry = hit
        if (entry.get("size"), entry.get("mtime_ns")) == (st.st_size, st.st_mtime_ns) or \
                sha256_file(path) == entry["sha256"]:
            reuse[i] = (row, entry["sha256"])
    return reuse


def _model_info(model: OnDemand, previous: store.FeatureStore | None, checkpoint: str | None) -> store.ModelInfo:
    """The manifest's model: from the encoder, or carried over when nothing needed one."""
    saved = str(Path(checkpoint).resolve()) if checkpoint else None
    enc = model.loaded
    if enc is None:
        old = previous.manifest.model
        return store.ModelInfo(name=old.name, fingerprint=old.fingerprint, dim=old.dim,
                               languages=list(old.languages), checkpoint=saved)
    return store.ModelInfo(name=enc.name, fingerprint=enc.fingerprint, dim=enc.dim,
                           languages=sorted(enc.languages), checkpoint=saved)


def _environment(model: OnDemand, previous: store.FeatureStore | None) -> dict:
    """What ran the model (runtime and version, device), for the manifest; carried over when none ran."""
    enc = model.loaded
    if enc is None:
        return dict(previous.manifest.environment or {}, python=platform.python_version())
    version = getattr(sys.modules.get(enc.runtime), "__version__", "?")
    return {"runtime": f"{enc.runtime} {version}", "python": platform.python_version(), "device": str(enc.device)}


def extract(encoder: Encoder | OnDemand, coll: Collection, out: str | os.PathLike, batch_size: int = 32,
            num_workers: int | None = None, quiet: bool = False,
            max_pixels: int = DEFAULT_MAX_PIXELS, checkpoint: str | None = None,
            previous: store.FeatureStore | None = None, exact_decode: bool = False,
            encode: ImageEncoding | None = None,
            ocr: OcrEngine | Callable[[], OcrEngine] | None = None,
            read_text: TextReading | None = None) -> ExtractResult:
    """Encode a collection and save features + manifest under ``out`` (atomically).

    With ``previous`` (features made by the same model), only new or changed images and
    new captions are encoded; removed rows are dropped. ``encoder`` may be an ``OnDemand``
    slot, opened only when something has to be encoded. ``checkpoint`` is recorded so a
    later search loads the same local weights by itself. The decoding mode (draft or
    exact, see ``encode_images``) is recorded too; ``previous`` image vectors made in the
    other mode are not reused. ``encode`` is where the images are encoded (``encode_images``,
    here, by default; an engine from ``engines`` runs it in shards, on a Ray cluster for one).
    ``ocr`` (an engine, or the function that opens one when an image needs reading) reads the text
    in the images into the OCR sidecar saved with the features; ``read_text`` is where (``read_texts``
    here by default). Without ``ocr`` an old sidecar in ``out`` is removed, as it no longer matches.
    """
    if batch_size < 1:
        raise InputError(f"--batch-size 至少为 1 / --batch-size must be at least 1, got {batch_size}")
    paths = [coll.resolve(p) for p in coll.images]
    stats = [p.stat() for p in paths]
    decode = "exact" if exact_decode else "draft"
    same_decode = previous is not None and previous.manifest.image_decode == decode
    reuse = _reusable(coll, paths, stats, previous) if same_decode else {}
    todo = [i for i in range(len(paths)) if i not in reuse]
    model = encoder if isinstance(encoder, OnDemand) else OnDemand(encoder)
    # text read here (not in Ray tasks): the probe looks at each picture as the model's decoding threads decode it
    probe = _ProbeDuringDecode(ocr) if ocr is not None and todo and read_text is None else None
    if probe is not None:
        ocr = probe.engine
    if todo:
        new_feats, new_kept, new_hashes, new_skipped = (encode or encode_images)(
            model.get(), [paths[i] for i in todo], batch_size, num_workers, quiet, max_pixels, exact_decode,
            **({"seen": probe} if probe is not None else {}))
    else:
        new_feats, new_kept, new_hashes, new_skipped = None, np.zeros(0, dtype=bool), [], []
    dim = _model_info(model, previous, checkpoint).dim
    all_feats = np.zeros((len(paths), dim), dtype=np.float32)
    hashes = [""] * len(paths)
    kept_mask = np.zeros(len(paths), dtype=bool)
    for i, (row, digest) in reuse.items():
        all_feats[i] = previous.image_features[row]
        hashes[i] = digest
        kept_mask[i] = True
    for j, i in enumerate(todo):
        all_feats[i] = new_feats[j]
        hashes[i] = new_hashes[j]
        kept_mask[i] = new_kept[j]
    skipped = [(todo[j], h, reason) for j, h, reason in new_skipped]
    keep = [i for i in range(len(paths)) if kept_mask[i]]
    if not keep:
        raise InputError(f"没有一张图片能读取 / no image in {coll.source} could be read; see the reasons logged above")
    image_feats = all_feats[keep]
    new_index = {old: new for new, old in enumerate(keep)}
    caption_ids = [c for c, img in enumerate(coll.caption_image) if img in new_index]
    captions = [coll.captions[c] for c in caption_ids]
    text_feats, encoded_captions = _caption_features(model, captions, previous, quiet, dim)
    images: list[store.ImageEntry] = [
        {"path": coll.images[old], "sha256": hashes[old], "size": stats[old].st_size,
         "mtime_ns": stats[old].st_mtime_ns, "captions": []} for old in keep]
    caption_entries: list[store.CaptionEntry] = []
    for c in caption_ids:
        img = new_index[coll.caption_image[c]]
        images[img]["captions"].append(coll.captions[c])
        caption_entries.append({"image": img, "text": coll.captions[c], "row": coll.caption_rows[c]})
    skipped_entries = [_skipped_entry(coll.images[i], coll.image_rows[i], reason, h) for i, h, reason in skipped]
    skipped_entries += [_skipped_entry(path, 0, reason) for path, reason in coll.skipped]
    for entry in skipped_entries:
        log.info("skipped %s: %s", entry["path"], entry["reason"])  # callers report it
    source = dict(coll.source)
    if "csv" in source:
        source["csv_sha256"] = sha256_file(source["csv"])
        source["csv"] = str(Path(source["csv"]).resolve())
    manifest = store.Manifest(
        model=_model_info(model, previous, checkpoint),
        source=source, root=coll.root, images=images, captions=caption_entries, skipped=skipped_entries,
        image_decode=decode,
        environment=_environment(model, previous))
    ocr_text, ocr_read = None, 0
    if ocr is not None:
        no_text = {todo[j] for j in probe.no_text} if probe is not None else set()
        ocr_text, ocr_read = _ocr_text(ocr, [paths[i] for i in keep], [hashes[i] for i in keep],
                                       [coll.images[i] for i in keep], previous, quiet, max_pixels, num_workers,
                                       read_text or read_texts, {n for n, i in enumerate(keep) if i in no_text})
    written = store.save(out, image_feats, text_feats, manifest,
                         sidecars={OCR_FILE: ocr_text.to_text} if ocr_text is not None else None)
    if ocr_text is None and (Path(out) / OCR_FILE).is_file():
        (Path(out) / OCR_FILE).unlink()
        log.info("removed %s: extracted without --ocr, the old text no longer matches the features", OCR_FILE)
    return ExtractResult(manifest=written, skipped=skipped_entries, encoded_images=int(new_kept.sum()),
                         reused_images=len(reuse), encoded_captions=encoded_captions,
                         ocr=ocr_text, ocr_read=ocr_read)


def _ocr_text(ocr: OcrEngine | Callable[[], OcrEngine], paths: list[Path], hashes: list[str], shown: list[str],
              previous: store.FeatureStore | None, quiet: bool, max_pixels: int, num_workers: int | None,
              read_text: TextReading, no_text: set[int] = frozenset()) -> tuple[OcrText, int]:
    """The sidecar for the kept images: lines of unchanged files reused, the rest read; (text, how many read).

    ``no_text``: positions whose probe, run on the picture decoded for the model, found no line of text.
    """
    from .models.ocr import engine_identity

    identity = engine_identity()
    old = None
    if previous is not None:
        try:
            old = read_ocr(previous.folder, previous.manifest.generation)
        except UserError as exc:   # a damaged or stale sidecar is read again, not trusted
            log.warning("%s", exc)
    known = reusable_lines(old, identity)
    todo = [i for i, digest in enumerate(hashes) if digest not in known and i not in no_text]
    found: dict[int, list[OcrLine] | None] = {i: [] for i in no_text if hashes[i] not in known}
    reasons: dict[int, str] = {}
    if todo:
        lines, why = read_text(ocr, [paths[i] for i in todo], quiet, max_pixels, num_workers)
        found.update(zip(todo, lines))
        reasons = {i: r for i, r in zip(todo, why) if r}
    # a failed image keeps no hash here, so the next --update tries it again
    images: list[OcrImage] = [{"sha256": "" if i in reasons else digest,
                               "lines": known[digest] if i not in found else found[i] or []}
                              for i, digest in enumerate(hashes)]
    failed = [{"path": shown[i], "reason": reason} for i, reason in sorted(reasons.items())]
    return OcrText(engine=identity, images=images, failed=failed), len(found)


def _skipped_entry(path: str, row: int, reason: str, sha256: str | None = None) -> store.SkippedEntry:
    """A manifest entry for an image left out; folder mode has no CSV line and a dead link no content, so no key."""
    entry: store.SkippedEntry = {"path": path}
    if row:
        entry["row"] = row
    if sha256 is not None:
        entry["sha256"] = sha256
    entry["reason"] = reason
    return entry


def _caption_features(model: OnDemand, captions: list[str], previous: store.FeatureStore | None,
                      quiet: bool, dim: int) -> tuple[np.ndarray, int]:
    """Caption vectors, reusing ``previous`` ones for identical texts; returns (features, how many encoded)."""
    known: dict[str, int] = {}
    previous_texts = previous.caption_features() if previous is not None else None
    if previous is not None and previous_texts.shape[0] == len(previous.manifest.captions):
        known = {c["text"]: row for row, c in enumerate(previous.manifest.captions)}
    todo = list(dict.fromkeys(t for t in captions if t not in known))
    uses = collections.Counter(captions)   # the bar counts captions, each distinct text is encoded once
    fresh: dict[str, np.ndarray] = {}
    with tqdm(total=len(captions), initial=len(captions) - sum(uses[t] for t in todo), desc="captions / 文本",
              unit="txt", disable=quiet or not todo) as bar:
        for start in range(0, len(todo), 256):
            chunk = todo[start:start + 256]
            fresh.update(zip(chunk, np.asarray(model.get().encode_texts(chunk), dtype=np.float32)))
            bar.update(sum(uses[t] for t in chunk))
    if not captions:
        return np.empty((0, dim), dtype=np.float32), 0
    rows = [fresh[t] if t in fresh else previous_texts[known[t]] for t in captions]
    return np.stack(rows), len(todo)
