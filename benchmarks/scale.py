"""``python -m benchmarks.scale [--quick] [--json]``: search at scale and extraction throughput across Ray workers.

Query side: synthetic 512-d feature folders (clustered unit vectors, a manifest of nested photo
paths with Chinese captions) written through ``store.save``, the writer extraction uses; each
one-shot query (``clipsou search``) and each ``extract --update`` with nothing changed runs
in a fresh process, timed end to end, with that process's peak memory (its ``ru_maxrss``). The
model is a small open_clip network with 512-d output and seeded random weights, so the figures
are the features format's, not a large model's.

Extraction side: the same photos extracted by the local engine, by Ray with 1 worker and by Ray
with 2 workers on a local 2-node cluster (``ray.cluster_utils.Cluster``, one CPU per node), each
a fresh ``clipsou extract`` process. ``--quick`` uses small sizes (same keys; the row
counts are in ``scale_rows``) for CI's smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FULL = {"rows": {"10k": 10_000, "100k": 100_000, "1m": 1_000_000}, "photos": 64}
QUICK = {"rows": {"10k": 1_000, "100k": 3_000, "1m": 10_000}, "photos": 8}
MODEL_512 = {"embed_dim": 512,
             "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
MODEL = "open_clip:bench512"


def _model(work: Path) -> tuple[Path, object]:
    from clip_retrieval.models.openclip import build_model, save_checkpoint_dir
    from clip_retrieval.models import open_encoder

    folder = save_checkpoint_dir(build_model(MODEL_512, seed=0), MODEL_512, work / "model512", languages=["zh", "en"])
    return folder, open_encoder(MODEL, str(folder), "cpu")


def synthetic_folder(out: Path, n: int, encoder, checkpoint: Path) -> Path:
    """n images (empty files, so --update can stat them) under nested folders, with captions, saved by store.save."""
    from clip_retrieval.features import store

    root = out / "collection"
    rng = np.random.default_rng(n)
    centres = rng.standard_normal((max(8, n // 500), 512)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.7 * rng.standard_normal((n, 512)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    images, rows = [], ["image_path,caption"]
    for i in range(n):
        path = f"photos/{2015 + i % 10}/{i % 12 + 1:02d}/album_{i // 500:05d}/IMG_{i:07d}.jpg"
        full = root / path
        full.parent.mkdir(parents=True, exist_ok=True)
        full.touch()
        st = full.stat()
        caption = f"第{i}张照片：{['海边的金毛', '雪地里的哈士奇', '沙发上的灰猫', '公园里的小孩'][i % 4]}"
        images.append({"path": path, "sha256": f"{i:064x}", "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                       "captions": [caption]})
        rows.append(f"{path},{caption}")
    csv = root / "captions.csv"
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    from clip_retrieval.core.hashing import sha256_file

    manifest = store.Manifest(
        model=store.ModelInfo(name=MODEL, fingerprint=encoder.fingerprint, dim=512, languages=["en", "zh"],
                              checkpoint=str(checkpoint)),
        root=root, images=images, captions=[{"image": i, "text": e["captions"][0], "row": i + 2}
                                            for i, e in enumerate(images)],
        source={"csv": str(csv.resolve()), "csv_sha256": sha256_file(csv)})
    texts = np.asarray(encoder.encode_texts([e["captions"][0] for e in images[:1]]), dtype=np.float32)
    store.save(out / "features", x, np.repeat(texts, n, axis=0), manifest)
    return out / "features"


# A small launcher reports its child's peak memory: a child forked straight from this process would
# count this process's own memory (torch included) in its ru_maxrss until it execs.
_LAUNCH = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
           "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); t = time.perf_counter() - t; "
           "print(r.returncode, t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def _timed(args: list[str]) -> tuple[float, float]:
    """Seconds and peak memory (MB) of one fresh ``clipsou`` process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    ran = subprocess.run([sys.executable, "-c", _LAUNCH, sys.executable, "-m", "clip_retrieval", *args], cwd=ROOT,
                         env=env, capture_output=True, text=True)
    code, seconds, peak_kb = ran.stdout.split()
    if code != "0":
        raise RuntimeError(f"clipsou {' '.join(args)} failed: {ran.stderr[-2000:]}")
    return float(seconds), int(peak_kb) / 1024


def query_side(sizes: dict, work: Path) -> dict:
    checkpoint, encoder = _model(work)
    results: dict = {"scale_rows": sizes["rows"]}
    for first, (label, n) in enumerate(sizes["rows"].items()):
        folder = synthetic_folder(work / label, n, encoder, checkpoint)
        if first == 0:   # the user cache's one-time work (word file, expansion cache) is not a query's cost
            _timed(["search", "金毛", "--features", str(folder), "--checkpoint", str(checkpoint), "--model", MODEL,
                    "--quiet", "--log-dir", str(work / label / "logs")])
        results[f"one_shot_query_s_{label}"], results[f"query_memory_mb_{label}"] = _timed(
            ["search", "金毛", "--features", str(folder), "--checkpoint", str(checkpoint), "--model", MODEL,
             "--quiet", "--log-dir", str(work / label / "logs")])
        results[f"noop_update_s_{label}"], _ = _timed(
            ["extract", "--update", "--csv", str(work / label / "collection" / "captions.csv"), "--model", MODEL,
             "--checkpoint", str(checkpoint), "--out", str(folder), "--quiet", "--device", "cpu"])
    results["scale_query_ratio_1m_vs_10k"] = results["one_shot_query_s_1m"] / results["one_shot_query_s_10k"]
    return results


def extraction_side(sizes: dict, work: Path) -> dict:
    from ray import cluster_utils

    from benchmarks.measure import make_photos

    checkpoint, _ = _model(work)
    photos = make_photos(work / "photos" / "images", sizes["photos"], (2016, 1512))
    csv = work / "photos" / "captions.csv"
    csv.write_text("image_path,caption\n" + "".join(f"images/{p.name},照片\n" for p in photos), encoding="utf-8")
    base = ["extract", "--csv", str(csv), "--model", MODEL, "--checkpoint", str(checkpoint), "--quiet",
            "--device", "cpu", "--rules", str(ROOT / "rules" / "expansions.yaml")]
    local_s, _ = _timed([*base, "--out", str(work / "x_local")])
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        shard = str(max(1, sizes["photos"] // 8))
        ray = ["--engine", "ray", "--ray-address", cluster.address, "--shard-size", shard]
        one_s, _ = _timed([*base, *ray, "--workers", "1", "--out", str(work / "x_ray1")])
        two_s, _ = _timed([*base, *ray, "--workers", "2", "--out", str(work / "x_ray2")])
    finally:
        cluster.shutdown()
    n = sizes["photos"]
    return {"extract_local_images_per_s": n / local_s, "extract_ray_1_worker_images_per_s": n / one_s,
            "extract_ray_2_workers_images_per_s": n / two_s, "ray_2_vs_1_worker_speedup": one_s / two_s,
            "ray_vs_local_ratio": local_s / two_s, "extract_photos": n}


def measure(quick: bool, work: str) -> dict:
    sizes = QUICK if quick else FULL
    return {**query_side(sizes, Path(work) / "query"), **extraction_side(sizes, Path(work) / "extract")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, same keys (seconds, for CI)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clip_retrieval_scale_") as work:
        os.environ.setdefault("CLIP_RETRIEVAL_CACHE", str(Path(work) / "cache"))
        results = {"quick": args.quick, **measure(args.quick, work)}
    if args.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            print(f"{key:<40}  {value:.4g}" if isinstance(value, float) else f"{key:<40}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
