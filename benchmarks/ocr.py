"""``python -m benchmarks.ocr [--quick] [--json]``: the text in images, found, with the real OCR model.

Quality: screenshot-like pictures (chat bubbles, receipts, invoices, tickets, notices, signs on
photos; ``collection.textpictures``, rendered with the bundled CJK font at several sizes,
slightly rotated, noisy, JPEG) mixed with generated photos that carry no text, extracted with
the demo model and ``--ocr`` through ``api`` as a user would. Text queries are phrases written
on one picture each (a shop, a company, a train, a meeting place), a third of them in Traditional
characters and the codes in full-width forms, plus the kind words (发票, 火车票, ...); picture
queries are the demo benchmark's subjects and scene + subject pairs, whose answers are the
photos. recall@1/@5 (a relevant picture in the top k) for text queries with OCR fused into the
ranking, without OCR, and ``--ocr-only``; picture queries with and without fusion; the
character error rate of the recognised text (NFKC on both sides, spaces dropped).

Cost: OCR seconds per image for the photos and for the text pictures, and
``ocr_photo_overhead``: extraction speed with ``--ocr`` over speed without on the peer
benchmark's phone photos (``benchmarks.peers.make_photos``, 12 MP JPEGs, seeded ViT-B-32 weights:
the real model's cost), which hold no text.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FULL = {"texts": 312, "photos": 96, "timed_texts": 48, "phone_photos": 24, "phone_size": (4032, 3024),
        "overhead_model": "vit"}
QUICK = {"texts": 24, "photos": 16, "timed_texts": 6, "phone_photos": 4, "phone_size": (2016, 1512),
         "overhead_model": "demo"}
PICTURE_FUSION_TOLERANCE = 0.02


def _full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def text_queries(pictures) -> list[dict]:
    """One query per picture (its own phrase: as written, in Traditional, or its code in full-width), plus
    the kind words; ``relevant``: every picture whose written text holds the query once normalised."""
    import opencc

    from clip_retrieval.collection.textpictures import KIND_WORDS
    from clip_retrieval.query.textmatch import normalize_text

    s2t = opencc.OpenCC("s2t")
    truth = {p.name: normalize_text("".join(p.lines)) for p in pictures}
    queries = []
    for i, p in enumerate(pictures):
        if i % 3 == 1 and s2t.convert(p.key) != p.key:
            query, form = s2t.convert(p.key), "traditional"
        elif i % 3 == 2 and p.code:
            query, form = _full_width(p.code), "full-width"
        else:
            query, form = p.key, "simplified"
        queries.append({"query": query, "form": form, "for": p.name})
    for kind, word in KIND_WORDS.items():
        queries.append({"query": word, "form": "kind", "for": kind})
    for q in queries:
        norm = normalize_text(q["query"])
        q["relevant"] = sorted(name for name, text in truth.items() if norm in text)
    return [q for q in queries if q["relevant"]]


def picture_queries(photos) -> list[dict]:
    """The demo benchmark's canonical queries over the photos without text."""
    from clip_retrieval.collection.generated import SCENES, SUBJECTS

    zh = {s.key: s.zh for s in SUBJECTS}
    scene_zh = {s.key: s.zh for s in SCENES}
    queries = []
    for subject in SUBJECTS:
        queries.append({"query": subject.zh, "relevant": sorted(n for n, s, _ in photos if s == subject.key)})
        for scene in SCENES:
            queries.append({"query": f"{scene_zh[scene.key]}的{zh[subject.key]}",
                            "relevant": sorted(n for n, s, c in photos if s == subject.key and c == scene.key)})
    return [q for q in queries if q["relevant"]]


def recall(searcher, queries: list[dict], ocr: str, k: int = 5) -> dict:
    """recall@1 and recall@k over ``queries`` searched with ``ocr`` (fuse, off, only)."""
    at1 = atk = 0
    for q in queries:
        hits = [Path(h.image_path).name for h in searcher.search_text(q["query"], k=k, ocr=ocr).results]
        relevant = set(q["relevant"])
        at1 += bool(hits[:1]) and hits[0] in relevant
        atk += bool(relevant & set(hits))
    return {"recall@1": at1 / len(queries), f"recall@{k}": atk / len(queries)}


def _edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def character_error_rate(pictures, sidecar, manifest) -> float:
    """Edit distance over the length of the written text, summed over the text pictures."""
    def plain(text: str) -> str:
        return "".join(unicodedata.normalize("NFKC", text).split())

    row = {Path(entry["path"]).name: i for i, entry in enumerate(manifest.images)}
    errors = length = 0
    for p in pictures:
        truth = plain("".join(p.lines))
        read = plain("".join(line["text"] for line in sidecar.lines_of(row[p.name])))
        errors += _edit_distance(truth, read)
        length += len(truth)
    return errors / length


def ocr_seconds(paths: list[Path]) -> float:
    """Seconds per image of the OCR pass extraction runs (probe, and where it finds text, read)."""
    from clip_retrieval.extract import read_texts
    from clip_retrieval.models.ocr import open_ocr

    engine = open_ocr()
    read_texts(engine, paths[:1], quiet=True)      # sessions warm
    start = time.perf_counter()
    read_texts(engine, paths, quiet=True)
    return (time.perf_counter() - start) / len(paths)


def quality(sizes: dict, work: Path, progress) -> dict:
    from clip_retrieval import api
    from clip_retrieval.collection.textpictures import make_photos_without_text, make_text_pictures

    folder = work / "collection"
    progress(f"drawing {sizes['texts']} pictures with text and {sizes['photos']} photos without")
    pictures = make_text_pictures(folder, sizes["texts"], seed=0)
    photos = make_photos_without_text(folder, sizes["photos"], seed=0)
    progress("extract --ocr (demo model)")
    start = time.perf_counter()
    result = api.extract_features(images=folder, model="demo", out=work / "features", quiet=True, ocr=True)
    extract_s = time.perf_counter() - start
    searcher = api.open_searcher(work / "features", device="cpu")
    texts, picture = text_queries(pictures), picture_queries(photos)
    progress(f"{len(texts)} text queries and {len(picture)} picture queries, three ways")
    res = {"text_pictures": len(pictures), "photos_without_text": len(photos),
           "images_with_text_found": result.ocr.with_text, "ocr_failed": len(result.ocr.failed),
           "text_queries": len(texts), "picture_queries": len(picture),
           "text_query_forms": {f: sum(q["form"] == f for q in texts) for f in ("simplified", "traditional",
                                                                                 "full-width", "kind")},
           "extract_with_ocr_s": extract_s}
    for ocr in ("fuse", "off", "only"):
        for key, value in recall(searcher, texts, ocr).items():
            res[f"text_{key}_{ocr}"] = value
    for ocr in ("fuse", "off"):
        for key, value in recall(searcher, picture, ocr).items():
            res[f"picture_{key}_{ocr}"] = value
    res["picture_recall@5_change_with_fusion"] = res["picture_recall@5_fuse"] - res["picture_recall@5_off"]
    res["picture_fusion_within_tolerance"] = all(
        abs(res[f"picture_{k}_fuse"] - res[f"picture_{k}_off"]) <= PICTURE_FUSION_TOLERANCE
        for k in ("recall@1", "recall@5"))
    res["cer"] = character_error_rate(pictures, searcher.ocr_text, searcher.store.manifest)
    progress("timing OCR per image")
    res["ocr_s_per_photo"] = ocr_seconds([folder / name for name, _, _ in photos])
    res["ocr_s_per_screenshot"] = ocr_seconds([folder / p.name for p in pictures[:sizes["timed_texts"]]])
    return res


def overhead(sizes: dict, work: Path, progress) -> dict:
    """Extraction speed with --ocr over speed without, on phone photos with no text (best of two runs each)."""
    from benchmarks.peers import build_weights, make_photos
    from clip_retrieval import api

    progress(f"{sizes['phone_photos']} phone photos {sizes['phone_size'][0]}x{sizes['phone_size'][1]}")
    photos = work / "phone"
    make_photos(photos, sizes["phone_photos"], sizes["phone_size"])
    if sizes["overhead_model"] == "vit":
        progress("seeded ViT-B-32 weights (the real model's cost), exported once")
        model, checkpoint = "open_clip:ViT-B-32", str(build_weights(work))
    else:
        model, checkpoint = "demo", None
    api.extract_features(images=photos, model=model, checkpoint=checkpoint, out=work / "warm", quiet=True,
                         device="cpu")      # the export and first sessions, outside the timing

    def timed(ocr: bool, n: int) -> float:
        start = time.perf_counter()
        api.extract_features(images=photos, model=model, checkpoint=checkpoint, out=work / f"phone_{ocr}_{n}",
                             quiet=True, device="cpu", ocr=ocr)
        return time.perf_counter() - start

    progress("extracting the phone photos with and without --ocr")
    without = min(timed(False, n) for n in range(2))
    with_ocr = min(timed(True, n) for n in range(2))
    count = sizes["phone_photos"]
    return {"overhead_model": model, "phone_photos": count, "phone_size": list(sizes["phone_size"]),
            "extract_images_per_s": count / without, "extract_ocr_images_per_s": count / with_ocr,
            "ocr_photo_overhead": without / with_ocr}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 24 text pictures, 16 photos, the demo model for the overhead "
                             "(default: off, 312 + 96 and seeded ViT-B-32)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table (default: off)")
    parser.add_argument("--keep", help="keep the pictures and features in this folder (default: a temp folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    sizes = QUICK if args.quick else FULL

    def progress(step: str) -> None:
        print(f"... {step}", file=sys.stderr, flush=True)

    work_ctx = tempfile.TemporaryDirectory(prefix="clip_retrieval_ocr_") if not args.keep else None
    work = Path(args.keep or work_ctx.name)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CLIP_RETRIEVAL_CACHE", str(work / "cache"))
    random.seed(0)
    try:
        start = time.perf_counter()
        res = {"quick": args.quick, **quality(sizes, work, progress), **overhead(sizes, work, progress)}
        res["benchmark_s"] = time.perf_counter() - start
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()
    res["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    if args.json:
        print(json.dumps(res, ensure_ascii=False))
    else:
        width = max(len(k) for k in res)
        for key, value in res.items():
            print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
