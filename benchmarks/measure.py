"""The measurements behind ``python -m benchmarks``; each returns a dict of figures.

Models are open_clip ViT-B-32 with seeded random weights (the same cost as pretrained
ones) and the bundled demo model; photos are generated 4032x3024 JPEGs with sensor-like
noise; vectors are clustered unit vectors like real embeddings.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clip_retrieval import api
from clip_retrieval.features import store
from clip_retrieval.index import faiss as ann
from clip_retrieval.collection.dataset import open_image
from clip_retrieval.collection.generated import SCENES, SUBJECTS, make_collection, render
from clip_retrieval.models.openclip import random_encoder
from clip_retrieval.extract import encode_images
from clip_retrieval.index.exact import exact_topk
from clip_retrieval.search import pool

ROOT = Path(__file__).resolve().parent.parent
FULL = {"photos": 96, "naive_photos": 16, "photo_size": (4032, 3024), "vectors": 1_000_000,
        "cached_vectors": 100_000, "update_rows": 200, "repeats": 20}
QUICK = {"photos": 8, "naive_photos": 4, "photo_size": (2016, 1512), "vectors": 50_000,
         "cached_vectors": 20_000, "update_rows": 100, "repeats": 5}
FIVE_WAY = ["金毛", "金毛犬", "golden retriever", "a golden retriever dog", "a photo of a golden retriever"]

_encoder = None


def _vit_b32():
    global _encoder
    if _encoder is None:
        _encoder = random_encoder("ViT-B-32", seed=0)
    return _encoder


def _p50(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_photos(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """Phone-sized JPEGs: a drawn scene upscaled, with noise so they compress like photos (~3 MB)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, noise = random.Random(0), np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = render(SUBJECTS[i % len(SUBJECTS)], SCENES[i % len(SCENES)], rng, size=size[1] // 8)
        big = small.resize(size, Image.BICUBIC)
        arr = np.asarray(big, dtype=np.int16) + noise.normal(0, 6, (size[1], size[0], 1)).astype(np.int16)
        path = folder / f"photo_{i:03d}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def extraction(sizes: dict, work: str) -> dict:
    """Pipeline (draft decode in workers, overlapped) against the model alone, a one-at-a-time loop,
    and the same pipeline with exact decoding: its speed and the smallest cosine between the two."""
    enc = _vit_b32()
    paths = make_photos(Path(work) / "photos", sizes["photos"], sizes["photo_size"])
    pixels = torch.stack([enc.preprocess(open_image(p, enc.image_size)) for p in paths[:32]])
    batch = pixels.repeat((32 + len(pixels) - 1) // len(pixels), 1, 1, 1)[:32]
    model_s = _p50(lambda: enc.encode_images(batch), 2 if sizes is FULL else 1) / len(batch)
    start = time.perf_counter()
    draft, *_ = encode_images(enc, paths, batch_size=32, quiet=True)
    pipeline_s = (time.perf_counter() - start) / len(paths)
    start = time.perf_counter()
    exact, *_ = encode_images(enc, paths, batch_size=32, quiet=True, exact_decode=True)
    exact_s = (time.perf_counter() - start) / len(paths)

    def naive():
        for p in paths[:sizes["naive_photos"]]:
            enc.encode_images(enc.preprocess(Image.open(p).convert("RGB"))[None])

    naive_s = _p50(naive, 1) / sizes["naive_photos"]
    return {"model_images_per_s": 1 / model_s, "extract_images_per_s": 1 / pipeline_s,
            "naive_images_per_s": 1 / naive_s, "extract_vs_model_ratio": model_s / pipeline_s,
            "extract_vs_naive_speedup": naive_s / pipeline_s, "exact_decode_images_per_s": 1 / exact_s,
            "draft_vs_exact_speedup": exact_s / pipeline_s,
            "draft_vs_exact_min_cosine": float((draft * exact).sum(-1).min()),
            "draft_vs_exact_photos": len(paths)}


def text_latency(sizes: dict, work: str) -> dict:
    """A 5-way expanded query: one trimmed batch against each phrasing padded to 77 tokens, one by one."""
    enc = _vit_b32()
    model, tokenizer = enc.model, enc.tokenize

    def naive():
        with torch.inference_mode():
            vecs = [torch.nn.functional.normalize(model.encode_text(tokenizer([t])), dim=-1)[0] for t in FIVE_WAY]
        return pool(torch.stack(vecs), [1.0] * len(vecs))

    def ours():
        return pool(enc.encode_texts(FIVE_WAY), [1.0] * len(FIVE_WAY))

    diff = float(np.abs(naive() - ours()).max())
    naive_ms = _p50(naive, sizes["repeats"]) * 1000
    ours_ms = _p50(ours, sizes["repeats"]) * 1000
    return {"naive_expanded_query_ms": naive_ms, "expanded_query_ms": ours_ms,
            "expanded_query_ratio": ours_ms / naive_ms, "trimmed_vs_padded_max_diff": diff}


def clustered(n: int, d: int = 512, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(16, n // 500), d)).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        x = centres[rng.integers(0, len(centres), m)] + 0.7 * rng.standard_normal((m, d)).astype(np.float32)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def vector_search(sizes: dict, work: str) -> dict:
    """Exact numpy scan (and torch.topk for comparison) and FAISS ANN at the benchmark size."""
    x = clustered(sizes["vectors"])
    rng = np.random.default_rng(1)
    queries = x[rng.integers(0, len(x), 50)] + 0.05 * rng.standard_normal((50, x.shape[1])).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    buf = np.empty(len(x), dtype=np.float32)
    exact_ms = _p50(lambda: exact_topk(x, queries[0], 10, buf), sizes["repeats"]) * 1000
    tx, tq = torch.from_numpy(x), torch.from_numpy(queries[0])
    torch_ms = _p50(lambda: torch.topk(tx @ tq, 10), sizes["repeats"]) * 1000
    truth = [set(exact_topk(x, q, 10, buf)[0].tolist()) for q in queries]
    out = {"exact_1m_p50_ms": exact_ms, "torch_topk_1m_p50_ms": torch_ms, "vectors": len(x)}
    for fp16 in (False, True):
        built = ann.build(x, kind="auto", fp16=fp16)
        times, recall = [], []
        for q, t in zip(queries, truth):
            start = time.perf_counter()
            ids, _ = built.search(q[None], 10)
            times.append(time.perf_counter() - start)
            recall.append(len(set(ids[0].tolist()) & t) / 10)
        tag = "ann_1m_fp16" if fp16 else "ann_1m"
        import faiss
        out[f"{tag}_index_mb"] = len(faiss.serialize_index(built.index)) / 1e6
        out.update({f"{tag}_p50_ms": statistics.median(times) * 1000, f"{tag}_recall_at_10": float(np.mean(recall)),
                    f"{tag}_build_s": built.meta["build_seconds"], f"{tag}_kind": built.meta["kind"]})
        del built
    return out


def cached_query(sizes: dict, work: str) -> dict:
    """Warm latency of a query answered from the expansion cache over many image vectors."""
    folder = Path(work) / "cached"
    x = torch.from_numpy(clustered(sizes["cached_vectors"], 512, seed=3))
    manifest = store.Manifest(model=store.ModelInfo(name="open_clip:bench", fingerprint="sha256:bench", dim=512,
                                                    languages=["zh", "en"]),
                              root=Path(work), images=[{"path": f"{i}.jpg", "sha256": ""} for i in range(len(x))])
    store.save(folder, x, torch.empty(0, 512), manifest)
    from clip_retrieval.query.expansion import load_rules
    table = load_rules(ROOT / "rules" / "expansions.yaml")
    phrases = [p.text for p in table.expand("金毛").phrases]
    vectors = torch.nn.functional.normalize(torch.randn(len(phrases), 512, generator=torch.Generator().manual_seed(0)), dim=-1)
    store.save_expansion_cache(folder, phrases, vectors, "sha256:bench", table.sha256)

    def never():
        raise AssertionError("a cached query loaded the model")

    from clip_retrieval.search import Searcher
    searcher = Searcher(store.load(folder, with_text=False), never, table,
                        cache=store.load_expansion_cache(folder, "sha256:bench", table.sha256))
    ms = _p50(lambda: searcher.search_text("金毛", k=10), sizes["repeats"] * 5) * 1000
    return {"cached_query_ms": ms, "cached_query_vectors": len(x)}


def update(sizes: dict, work: str) -> dict:
    """extract --update with 1% of rows changed, against a full rebuild of the same collection."""
    enc = _vit_b32()
    per_pair = max(1, sizes["update_rows"] // 32)
    csv = make_collection(Path(work) / "update", per_pair=per_pair, seed=5, fmt="jpg")
    out = Path(work) / "update_out"
    start = time.perf_counter()
    rules = ROOT / "rules" / "expansions.yaml"  # as the CLI does: the expansion cache is part of a full build
    api.extract_features(csv=csv, out=out, encoder=enc, quiet=True, rules=rules)
    full_s = time.perf_counter() - start
    rows = csv.read_text(encoding="utf-8").splitlines()[1:]
    changed = max(1, len(rows) // 100)
    for row in rows[:changed]:
        path = csv.parent / row.split(",")[0]
        Image.open(path).rotate(90).save(path)
    start = time.perf_counter()
    result = api.extract_features(csv=csv, out=out, encoder=enc, quiet=True, rules=rules, update=True)
    update_s = time.perf_counter() - start
    assert result.encoded_images == changed
    return {"full_extract_s": full_s, "update_1pct_s": update_s, "update_vs_full_ratio": update_s / full_s,
            "update_rows": len(rows)}


def cold_start(sizes: dict, work: str) -> dict:
    """Process start to printed result: python -m scripts.search_demo --query 金毛 on the demo features."""
    out = Path(work) / "demo"
    api.extract_features(csv=ROOT / "data" / "captions.csv", model="demo", out=out, quiet=True,
                         rules=ROOT / "rules" / "expansions.yaml")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "scripts.search_demo", "--features", str(out), "--query", "金毛"]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    shutil.rmtree(out, ignore_errors=True)
    return {"cold_start_s": statistics.median(times)}


def _resolve_every_entry(feats: store.FeatureStore, path: Path, sha256: str) -> set[int]:
    """The image-query exclusion as it was before issue 11: one resolve() per indexed image (the baseline)."""
    target = str(path.resolve())
    return {i for i, entry in enumerate(feats.manifest.images)
            if entry.get("sha256") == sha256 or str(feats.manifest.image_file(i).resolve()) == target}


def scale_cliffs(sizes: dict, work: str) -> dict:
    """What used to grow without bound with the collection: the image query's self-exclusion and dedup.

    Baselines are the old code measured in the same run on a slice (20k, or n/5) and scaled linearly
    (exclusion) or quadratically (the exact dedup join); memory is the join's score block.
    """
    from clip_retrieval import dedup

    n = sizes["vectors"]
    root = Path(work) / "scale"
    (root / "images").mkdir(parents=True, exist_ok=True)
    query = root / "images" / "query.png"
    query.write_bytes(b"not indexed")
    entries = [{"path": f"images/{i // 1000:04d}/{i:07d}.jpg", "sha256": f"{i:064x}", "captions": []} for i in range(n)]
    manifest = store.Manifest(model=store.ModelInfo(name="demo", fingerprint="x", dim=4, languages=["zh"]),
                              root=root, images=entries)
    feats = store.FeatureStore(folder=root, manifest=manifest, image_features=torch.zeros(n, 4), text_features=None)
    start = time.perf_counter()
    feats.same_image(query, "f" * 64)
    first_ms = (time.perf_counter() - start) * 1000
    query_ms = _p50(lambda: feats.same_image(query, "f" * 64), sizes["repeats"]) * 1000
    sample = min(20_000, n // 5)
    small = store.FeatureStore(folder=root, image_features=torch.zeros(sample, 4), text_features=None,
                               manifest=store.Manifest(model=manifest.model, root=root, images=entries[:sample]))
    start = time.perf_counter()
    _resolve_every_entry(small, query, "f" * 64)
    old_ms = (time.perf_counter() - start) * 1000 * n / sample
    out = {"scale_entries": n, "image_query_exclusion_ms": query_ms, "image_query_exclusion_first_ms": first_ms,
           "image_query_exclusion_before_ms_est": old_ms, "image_query_exclusion_speedup": old_ms / query_ms}

    x = torch.from_numpy(clustered(n))
    x[n // 2:n // 2 + 100] = x[:100]   # 100 planted duplicates
    start = time.perf_counter()
    groups = dedup.near_duplicate_groups(x, threshold=0.95)
    dedup_s = time.perf_counter() - start
    start = time.perf_counter()
    dedup.near_duplicate_groups(x[:sample], threshold=0.95, method="exact")
    exact_s = (time.perf_counter() - start) * (n / sample) ** 2
    out.update({"dedup_s": dedup_s, "dedup_groups": len(groups), "dedup_exact_join_s_est": exact_s,
                "dedup_speedup": exact_s / dedup_s,
                "dedup_score_block_mb": dedup.exact_block_rows(n) * n * 4 / 1e6,
                "dedup_score_block_before_mb": 4096 * n * 4 / 1e6})
    return out


STEPS = [extraction, text_latency, cached_query, update, cold_start, vector_search, scale_cliffs]
