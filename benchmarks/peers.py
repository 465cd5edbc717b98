"""``python -m benchmarks.peers [--quick] [--json]``: ours against rclip, end to end, in one run.

Both tools get the same generated photos and the same weights: open_clip ViT-B-32 with
seeded random values (the cost of the real model), saved as a checkpoint folder for us
and exported to ONNX for rclip with the recipe of rclip's own ``scripts/convert_model.py``
(visual tower and ``encode_text`` at 77 tokens, opset 18, dynamic batch). rclip 3.x
preprocesses at 256 px; it is started with that constant set to the model's 224 px,
which is its only change. Each command runs as its own process, timed from start to
exit, with the peak memory of its whole process tree sampled from /proc.

rclip lives in its own environment so it cannot change ours; this script installs
nothing. Point ``--rclip-python`` (or ``RCLIP_PYTHON``) at that environment's python;
without one, ``--quick`` measures our side only and the full run stops with the install
line. Ratios are oriented so that above 1 means we are better.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ARCH = "ViT-B-32"
RCLIP_MODEL_SUBDIR = "ViT-B-32-256-datacomp_s34b_b86k"   # where rclip 3.x looks for its ONNX files
INSTALL = ("python -m venv ~/.rclip-venv && ~/.rclip-venv/bin/pip install 'rclip>=3.3,<4' && "
           "RCLIP_PYTHON=~/.rclip-venv/bin/python python -m benchmarks.peers")
RCLIP_SHIM = ("import sys, rclip.utils.preprocess as p; p.IMAGE_SIZE = int(sys.argv.pop(1)); "
              "from rclip.main import main; sys.argv[0] = 'rclip'; main()")
QUERY_IN_TABLE = "金毛"
QUERY_OTHER = "窗边的台灯"          # no word of the rules table in it
QUERY_SEGMENTED = "桌上的咖啡杯"    # holds a table word (咖啡), so it is segmented
FULL = {"big": 96, "big_size": (4032, 3024), "small": 500, "small_size": (640, 480), "repeats": 3,
        "index_repeats": 3,
        "bound_photos": 16, "naive_photos": 8}
QUICK = {"big": 8, "big_size": (2016, 1512), "small": 40, "small_size": (640, 480), "repeats": 1,
         "index_repeats": 1,
         "bound_photos": 4, "naive_photos": 2}


# ---------------------------------------------------------------- measuring a process

def _tree_rss(root: int) -> int:
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * page
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def run_measured(cmd: list[str], cwd: Path, env: dict) -> dict:
    """Wall seconds, CPU seconds and peak memory (whole process tree) of one command."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                if sys.platform.startswith("linux"):
                    peak[0] = max(peak[0], _tree_rss(proc.pid))
                done.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{stderr[-3000:]}")
    # ru_maxrss is not used: it counts the benchmark's own pages that the child held before exec
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mb": peak[0] / 2 ** 20,
            "stdout": stdout}


def best_of(repeats: int, fn) -> dict:
    """``fn`` run ``repeats`` times: the median run (see ``median_run``)."""
    return median_run([fn() for _ in range(repeats)])


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time (the peak memory is the largest seen)."""
    runs = sorted(runs, key=lambda r: r["wall_s"])
    chosen = dict(runs[len(runs) // 2])
    chosen["peak_mb"] = max(r["peak_mb"] for r in runs)
    return chosen


# ---------------------------------------------------------------- the inputs

def make_photos(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """JPEGs that compress like photos: a drawn scene upscaled plus sensor-like noise."""
    import random

    from PIL import Image

    from clip_retrieval.collection.generated import SCENES, SUBJECTS, render

    folder.mkdir(parents=True, exist_ok=True)
    rng, noise_rng = random.Random(seed), np.random.default_rng(seed)
    noise = noise_rng.normal(0, 6, (size[1], size[0], 1)).astype(np.int16)
    paths = []
    for i in range(count):
        small = render(SUBJECTS[i % len(SUBJECTS)], SCENES[i % len(SCENES)], rng, size=max(64, size[1] // 8))
        big = np.asarray(small.resize(size, Image.BICUBIC), dtype=np.int16)
        shifted = np.roll(noise, (i * 7919) % size[1], axis=0)
        path = folder / f"photo_{i:04d}.jpg"
        Image.fromarray(np.clip(big + shifted, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def build_weights(work: Path) -> Path:
    """Seeded random ViT-B-32 as an open_clip checkpoint folder (what ``--checkpoint`` loads)."""
    import open_clip

    from clip_retrieval.models.openclip import build_model, save_checkpoint_dir

    cfg = open_clip.get_model_config(ARCH)
    folder = work / "weights"
    save_checkpoint_dir(build_model(cfg, seed=0), cfg, folder, languages=["en"])
    return folder


def export_for_rclip(weights: Path, datadir: Path) -> None:
    """rclip's convert recipe (scripts/convert_model.py), applied to our checkpoint."""
    import warnings

    import open_clip
    import torch

    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{weights}")
    model.eval()
    target = datadir / RCLIP_MODEL_SUBDIR
    target.mkdir(parents=True, exist_ok=True)

    class Textual(torch.nn.Module):
        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, x):
            return self.clip.encode_text(x)

    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module, dummy, name in ((model.visual, torch.randn(1, 3, size, size), "visual.onnx"),
                                    (Textual(model).eval(), torch.zeros(1, 77, dtype=torch.long), "textual.onnx")):
            torch.onnx.export(module, (dummy,), str(target / name), input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=18,
                              dynamo=False)
    vocab = datadir / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
    vocab.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz", vocab)


def find_rclip(given: str | None) -> tuple[str | None, str]:
    """(python that imports rclip, its version) or (None, why)."""
    candidates = [given, os.environ.get("RCLIP_PYTHON")]
    script = shutil.which("rclip")
    if script:
        with open(script, "rb") as fh:
            first = fh.readline().decode(errors="replace")
        if first.startswith("#!"):
            candidates.append(first[2:].strip().split()[0])
    for python in filter(None, candidates):
        probe = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('rclip'))"],
                               capture_output=True, text=True)
        if probe.returncode == 0:
            version = probe.stdout.strip()
            if not version.startswith("3."):
                return None, f"rclip {version} at {python}; this benchmark drives rclip 3.x"
            return python, version
    return None, "rclip not found"


# ---------------------------------------------------------------- the two tools

class Ours:
    def __init__(self, weights: Path, cache: Path):
        self.weights = weights
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), CLIP_RETRIEVAL_CACHE=str(cache))

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "clip_retrieval", *args]

    def index(self, photos: Path, out: Path, update: bool = False) -> dict:
        cmd = self._cli("extract", "--images", str(photos), "--model", f"open_clip:{ARCH}",
                        "--checkpoint", str(self.weights), "--out", str(out), "--quiet",
                        "--rules", str(ROOT / "rules" / "expansions.yaml"), *(["--update"] if update else []))
        return run_measured(cmd, ROOT, self.env)

    def query(self, features: Path, text: str) -> dict:
        cmd = self._cli("search", "--features", str(features), "-q", text, "-k", "10",
                        "--rules", str(ROOT / "rules" / "expansions.yaml"), "--quiet")
        return run_measured(cmd, ROOT, self.env)


class Rclip:
    def __init__(self, python: str, models: Path, image_size: int):
        self.python, self.models, self.image_size = python, models, image_size

    def _env(self, datadir: Path) -> dict:
        datadir.mkdir(parents=True, exist_ok=True)
        for name in (RCLIP_MODEL_SUBDIR, "tokenizer"):
            link = datadir / name
            if not link.exists():
                link.symlink_to(self.models / name, target_is_directory=True)
        return dict(os.environ, RCLIP_DATADIR=str(datadir), HF_HUB_OFFLINE="1")

    def index(self, photos: Path, datadir: Path) -> dict:
        """rclip indexes the current folder, then answers the query it was given (it has no index-only mode)."""
        cmd = [self.python, "-c", RCLIP_SHIM, str(self.image_size), "-f", "-t", "10", QUERY_OTHER]
        return run_measured(cmd, photos, self._env(datadir))

    def query(self, photos: Path, datadir: Path, text: str) -> dict:
        cmd = [self.python, "-c", RCLIP_SHIM, str(self.image_size), "--no-indexing", "-f", "-t", "10", text]
        return run_measured(cmd, photos, self._env(datadir))


# ---------------------------------------------------------------- item 4: the decode-plus-model bound

def extraction_bound(sizes: dict, photos: list[Path], weights: Path, cache: Path) -> dict:
    """Our pipeline against the model alone plus decoding, both measured here, and naive loops.

    The naive loop of the target is the seed's (issue 3): the torch encoder, every pixel
    decoded, one photo per call. The same loop over our ONNX Runtime sessions is printed
    beside it: it shows what batching, draft decoding and overlap alone are worth.

    On C cores the best any pipeline can do is keep every core busy: per image, the model's
    batched wall time plus the decode CPU time shared over C cores.
    """
    os.environ["CLIP_RETRIEVAL_CACHE"] = str(cache)
    from clip_retrieval.collection.dataset import open_image
    from clip_retrieval.extract import encode_images
    from clip_retrieval.models import open_encoder

    enc = open_encoder(f"open_clip:{ARCH}", str(weights), "cpu")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    sample = photos[:sizes["bound_photos"]]
    start = time.process_time()
    pixels = [enc.preprocess(open_image(p, enc.image_size)) for p in sample]
    decode_cpu = (time.process_time() - start) / len(sample)
    batch = np.stack((pixels * (32 // len(pixels) + 1))[:32])
    enc.encode_images(batch)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        enc.encode_images(batch)
        times.append(time.perf_counter() - start)
    model_s = min(times) / len(batch)
    bound_s = model_s + decode_cpu / cores
    start = time.perf_counter()
    encode_images(enc, photos, batch_size=32, quiet=True)
    extract_s = (time.perf_counter() - start) / len(photos)
    same_runtime_s = _one_at_a_time(enc, photos[:sizes["naive_photos"]])
    from clip_retrieval.models import load_encoder

    seed_s = _one_at_a_time(load_encoder(f"open_clip:{ARCH}", str(weights), device="cpu"),
                            photos[:sizes["naive_photos"]])
    return {"model_images_per_s": 1 / model_s, "decode_cpu_ms_per_image": decode_cpu * 1000,
            "bound_images_per_s": 1 / bound_s, "extract_images_per_s": 1 / extract_s,
            "naive_images_per_s": 1 / seed_s, "extract_vs_bound_ratio": bound_s / extract_s,
            "extract_vs_naive_speedup": seed_s / extract_s,
            "naive_same_runtime_images_per_s": 1 / same_runtime_s,
            "extract_vs_naive_same_runtime_speedup": same_runtime_s / extract_s, "bound_cores": cores}


def _one_at_a_time(encoder, photos: list[Path]) -> float:
    """Seconds per photo of the seed's loop: PIL decodes every pixel, one photo per model call."""
    from PIL import Image

    with Image.open(photos[0]) as img:       # first call outside the timing: lazy setup
        encoder.encode_images(encoder.preprocess(img.convert("RGB"))[None])
    start = time.perf_counter()
    for p in photos:
        with Image.open(p) as img:
            encoder.encode_images(encoder.preprocess(img.convert("RGB"))[None])
    return (time.perf_counter() - start) / len(photos)


# ---------------------------------------------------------------- the run

def _ratio(theirs: float | None, ours: float | None) -> float | None:
    return theirs / ours if theirs and ours else None


def run(sizes: dict, work: Path, rclip_python: str | None, progress) -> dict:
    res: dict = {}
    big = work / "big"
    small = work / "small"
    progress("generating photos")
    big_paths = make_photos(big, sizes["big"], sizes["big_size"])
    make_photos(small, sizes["small"], sizes["small_size"], seed=1)
    one = work / "one"
    make_photos(one, 1, sizes["small_size"], seed=2)
    progress("building the shared weights")
    weights = build_weights(work)
    ours = Ours(weights, work / "cache")
    progress("our first use of the model (ONNX export and rules table, once per weights)")
    first = ours.index(one, work / "out_first")
    res["ours_first_use_s"] = first["wall_s"]
    rclip = None
    if rclip_python:
        progress("exporting the same weights for rclip (its convert recipe)")
        export_for_rclip(weights, work / "rclip_models")
        rclip = Rclip(rclip_python, work / "rclip_models", _image_size(weights))
        rclip.index(one, work / "rclip_first")     # rclip's own first use (sessions, numpy caches)

    progress("fixed cost: indexing one photo")
    ours_one = best_of(sizes["repeats"], lambda: ours.index(one, work / f"out_one_{time.monotonic_ns()}"))
    res["ours_fixed_s"] = ours_one["wall_s"]
    if rclip:
        rclip_one = best_of(sizes["repeats"], lambda: rclip.index(one, work / f"rclip_one_{time.monotonic_ns()}"))
        res["rclip_fixed_s"] = rclip_one["wall_s"]

    for name, folder, count in (("big", big, sizes["big"]), ("small", small, sizes["small"])):
        progress(f"indexing {count} {name} photos")
        # the tools take turns, each run into a fresh folder; the median run of each counts
        runs: dict[str, list[dict]] = {"ours": [], "rclip": []}
        for i in range(sizes["index_repeats"]):
            runs["ours"].append(ours.index(folder, work / f"out_{name}" if i == 0 else work / f"out_{name}_{i}"))
            if rclip:
                runs["rclip"].append(rclip.index(folder, work / f"rclip_{name}_{i}"))
        for tool, measured in runs.items():
            if not measured:
                continue
            m = median_run(measured)
            res.update({f"{tool}_index_{name}_s": m["wall_s"], f"{tool}_index_{name}_peak_mb": m["peak_mb"],
                        f"{tool}_index_{name}_cpu_s_per_image": m["cpu_s"] / count,
                        f"{tool}_index_{name}_images_per_s_excl_load":
                            count / max(m["wall_s"] - res[f"{tool}_fixed_s"], 1e-9)})

    progress("one-shot queries in fresh processes")
    for key, text in (("table", QUERY_IN_TABLE), ("other", QUERY_OTHER)):
        o = best_of(sizes["repeats"], lambda: ours.query(work / "out_small", text))
        res.update({f"ours_query_{key}_s": o["wall_s"], f"ours_query_{key}_peak_mb": o["peak_mb"]})
        if rclip:
            r = best_of(sizes["repeats"], lambda: rclip.query(small, work / "rclip_small_0", text))
            res.update({f"rclip_query_{key}_s": r["wall_s"], f"rclip_query_{key}_peak_mb": r["peak_mb"]})
    o = best_of(sizes["repeats"], lambda: ours.query(work / "out_small", QUERY_SEGMENTED))
    res.update({"ours_query_segmented_s": o["wall_s"], "ours_query_segmented_peak_mb": o["peak_mb"]})

    progress("re-indexing after 1% changed")
    from PIL import Image

    changed = sorted(small.glob("*.jpg"))[:max(1, sizes["small"] // 100)]
    for path in changed:
        with Image.open(path) as img:
            rotated = img.rotate(90)
        rotated.save(path, quality=90)
    o = ours.index(small, work / "out_small", update=True)
    res.update({"ours_update_s": o["wall_s"], "ours_update_peak_mb": o["peak_mb"]})
    if rclip:
        r = rclip.index(small, work / "rclip_small_0")
        res.update({"rclip_update_s": r["wall_s"], "rclip_update_peak_mb": r["peak_mb"]})

    progress("decode-plus-model bound")
    res.update(extraction_bound(sizes, big_paths, weights, work / "cache"))

    res.update({
        "index_big_ratio": _ratio(res.get("rclip_index_big_s"), res["ours_index_big_s"]),
        "index_small_ratio": _ratio(res.get("rclip_index_small_s"), res["ours_index_small_s"]),
        "query_table_ratio": _ratio(res.get("rclip_query_table_s"), res["ours_query_table_s"]),
        "query_other_ratio": _ratio(res.get("rclip_query_other_s"), res["ours_query_other_s"]),
        "update_ratio": _ratio(res.get("rclip_update_s"), res["ours_update_s"]),
        "index_memory_ratio": _ratio(
            max(res.get("rclip_index_big_peak_mb") or 0, res.get("rclip_index_small_peak_mb") or 0),
            max(res["ours_index_big_peak_mb"], res["ours_index_small_peak_mb"])),
        "query_memory_ratio": _ratio(
            max(res.get("rclip_query_table_peak_mb") or 0, res.get("rclip_query_other_peak_mb") or 0),
            max(res["ours_query_table_peak_mb"], res["ours_query_other_peak_mb"])),
    })
    return res


def _image_size(weights: Path) -> int:
    cfg = json.loads((weights / "open_clip_config.json").read_text(encoding="utf-8"))["model_cfg"]
    return int(cfg["vision_cfg"]["image_size"])


ROWS = [
    ("index {big} JPEGs of {big_size}, process start to end (s)", "ours_index_big_s", "rclip_index_big_s",
     "index_big_ratio", "speed"),
    ("same, excluding fixed start-up and model load (img/s)", "ours_index_big_images_per_s_excl_load",
     "rclip_index_big_images_per_s_excl_load", None, "higher"),
    ("index {small} JPEGs of {small_size}, end to end (s)", "ours_index_small_s", "rclip_index_small_s",
     "index_small_ratio", "speed"),
    ("same, excluding fixed start-up and model load (img/s)", "ours_index_small_images_per_s_excl_load",
     "rclip_index_small_images_per_s_excl_load", None, "higher"),
    ("CPU seconds per small image", "ours_index_small_cpu_s_per_image", "rclip_index_small_cpu_s_per_image", None,
     "lower"),
    ("peak memory while indexing {big} photos, all processes (MB)", "ours_index_big_peak_mb",
     "rclip_index_big_peak_mb", None, "lower"),
    ("peak memory while indexing {small} photos, all processes (MB)", "ours_index_small_peak_mb",
     "rclip_index_small_peak_mb", "index_memory_ratio", "lower"),
    ("one-shot query, phrase in the rules table (s)", "ours_query_table_s", "rclip_query_table_s",
     "query_table_ratio", "speed"),
    ("one-shot query, phrase not in the table (s)", "ours_query_other_s", "rclip_query_other_s",
     "query_other_ratio", "speed"),
    ("one-shot query holding a table word, segmented (s)", "ours_query_segmented_s", "rclip_query_other_s",
     None, "lower"),
    ("peak memory of a one-shot query (MB)", "ours_query_other_peak_mb", "rclip_query_other_peak_mb",
     "query_memory_ratio", "lower"),
    ("re-index after 1% of {small} files changed (s)", "ours_update_s", "rclip_update_s", "update_ratio", "speed"),
]


def print_table(res: dict, sizes: dict) -> None:
    fmt = {"big": sizes["big"], "small": sizes["small"], "big_size": "x".join(map(str, sizes["big_size"])),
           "small_size": "x".join(map(str, sizes["small_size"]))}
    print("| measurement | ours | rclip | ours vs rclip (>1: we are better) |")
    print("|---|---|---|---|")
    for label, ours_key, rclip_key, ratio_key, better in ROWS:
        o, r = res.get(ours_key), res.get(rclip_key)
        ratio = res.get(ratio_key) if ratio_key else None
        if ratio is None and o and r:
            ratio = o / r if better == "higher" else r / o
        shown = lambda v: "-" if v is None else f"{v:.3g}"
        print(f"| {label.format(**fmt)} | {shown(o)} | {shown(r)} | {shown(ratio)} |")
    print()
    print(f"our first use of the model (ONNX export + rules table, once per weights): {res['ours_first_use_s']:.1f} s")
    print(f"fixed cost of one run (one photo): ours {res['ours_fixed_s']:.2f} s"
          + (f", rclip {res['rclip_fixed_s']:.2f} s" if "rclip_fixed_s" in res else ""))
    print(f"extraction: pipeline {res['extract_images_per_s']:.2f} img/s, model alone {res['model_images_per_s']:.2f} img/s, "
          f"decode {res['decode_cpu_ms_per_image']:.1f} ms CPU/img, decode-plus-model bound "
          f"{res['bound_images_per_s']:.2f} img/s on {res['bound_cores']} cores, seed's one-at-a-time torch loop "
          f"{res['naive_images_per_s']:.2f} img/s, the same loop on our ONNX sessions "
          f"{res['naive_same_runtime_images_per_s']:.2f} img/s")
    print(f"extract_vs_bound_ratio {res['extract_vs_bound_ratio']:.3f} (target >= 0.9), "
          f"extract_vs_naive_speedup {res['extract_vs_naive_speedup']:.2f} (target >= 3, full run), "
          f"extract_vs_naive_same_runtime_speedup {res['extract_vs_naive_same_runtime_speedup']:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few small photos, same keys (default: off)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table (default: off)")
    parser.add_argument("--rclip-python", help="python of the environment where rclip 3.x is installed "
                                               "(default: $RCLIP_PYTHON, else the interpreter of `rclip` on PATH)")
    parser.add_argument("--keep", help="keep the photos, features and models in this folder (default: a temp folder)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    rclip_python, version = find_rclip(args.rclip_python)
    if rclip_python is None:
        message = f"benchmarks.peers: {version}; install it in its own environment: {INSTALL}"
        if not args.quick:
            print(message, file=sys.stderr)
            return 2
        print(message + " (quick run: measuring our side only)", file=sys.stderr)

    def progress(step: str) -> None:
        print(f"... {step}", file=sys.stderr, flush=True)

    work_ctx = tempfile.TemporaryDirectory(prefix="clip_retrieval_peers_") if not args.keep else None
    work = Path(args.keep or work_ctx.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        res = run(sizes, work, rclip_python, progress)
        res["benchmark_s"] = time.perf_counter() - start
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()
    res.update({"quick": args.quick, "rclip_version": version if rclip_python else None,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"})
    if args.json:
        print(json.dumps(res))
    else:
        print_table(res, sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
