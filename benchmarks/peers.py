"""``python -m benchmarks.peers [--quick] [--json]``: ours against the newest peers, end to end, in one run.

The peers: rclip 4 (ONNX Runtime on the CPU, Python 3.12+), rom1504's clip-retrieval 2.45
(``clip-retrieval inference``, torch) and, while users still run it, rclip 3.3 as an
extra column. Every tool gets the same generated photos and the same weights: open_clip
ViT-B-32 with seeded random values (the cost of the real model), saved as a checkpoint
folder for us and for clip-retrieval (its ``open_clip:ARCH/CHECKPOINT`` form), and exported
to ONNX for rclip with the recipe of rclip's own ``scripts/convert_model.py`` (visual tower
and ``encode_text`` at 77 tokens, opset 18, dynamic batch, torch's MHA fast path off),
laid out in rclip's data folder as rclip 4 looks for it (model folder, tokenizer, the
model repository's notice files, so it never tries the hub). rclip preprocesses at
256 px; it is started with that constant set to the model's 224 px, its only change.
Each command runs as its own process, timed from start to exit, with the peak memory of
its whole process tree sampled from /proc. The tools take turns within one run, so
a machine shared with other work slows each about alike; repeat runs to see the noise.

Each peer lives in its own environment so it cannot change ours; this script installs
nothing. ``--rclip-python`` (or ``RCLIP_PYTHON``), ``--rclip3-python`` (``RCLIP3_PYTHON``)
and ``--clip-retrieval-python`` (``CLIP_RETRIEVAL_PYTHON``) point at each environment's
python. A peer that is not installed, or fails, is named with the reason; a full run
with no peer at all stops with the install lines, ``--quick`` then measures our side only.
Ratios are oriented so that above 1 means we are better; each ratio key is against the
best peer for that figure, and ``peers`` holds each peer's own.

The Chinese model is measured beside open_clip: Chinese-CLIP (``cn_clip:ViT-B-16``
structure, seeded random weights) one-shot queries on ONNX Runtime, and the same query
on the torch runtime it used before.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
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

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
ARCH = "ViT-B-32"
RCLIP_MODEL_SUBDIR = "ViT-B-32-256-datacomp_s34b_b86k"   # where rclip 3.x and 4.x look for their ONNX files
RCLIP_LEGAL_FILES = ("LICENSE", "OPENAI-CLIP-MIT.txt", "README.md", "THIRD_PARTY_NOTICES.md")  # rclip 4 needs them
INSTALL = {
    "rclip": "python3.12 -m venv ~/.rclip-venv && ~/.rclip-venv/bin/pip install 'rclip>=4,<5' "
             "(then --rclip-python ~/.rclip-venv/bin/python)",
    "rclip3": "python -m venv ~/.rclip3-venv && ~/.rclip3-venv/bin/pip install 'rclip>=3.3,<4' "
              "(then --rclip3-python ~/.rclip3-venv/bin/python)",
    "clip_retrieval": "python3.11 -m venv ~/.clip-retrieval-venv && ~/.clip-retrieval-venv/bin/pip install "
                      "'clip-retrieval==2.45.*' 'setuptools<81' && ~/.clip-retrieval-venv/bin/pip uninstall -y dataclasses "
                      "(then --clip-retrieval-python ~/.clip-retrieval-venv/bin/python)",
}
PEERS = ("rclip", "clip_retrieval", "rclip3")
PEER_LABEL = {"rclip": "rclip", "rclip3": "rclip 3", "clip_retrieval": "clip-retrieval"}
RCLIP_SHIM = ("import sys, rclip.utils.preprocess as p; p.IMAGE_SIZE = int(sys.argv.pop(1)); "
              "from rclip.main import main; sys.argv[0] = 'rclip'; main()")
CLIP_RETRIEVAL_SHIM = ("import sys, warnings; warnings.filterwarnings('ignore'); "
                       "from clip_retrieval.cli import main; sys.argv[0] = 'clip-retrieval'; main()")
NO_QUERY = ("clip-retrieval has no one-shot query command: `clip-retrieval back` is a server that loads "
            "an index first")
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
    """rclip's convert recipe (its ``scripts/convert_model.py``), applied to our checkpoint, in rclip 4's layout."""
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
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)          # the recipe's _disable_mha_fastpath
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for module, dummy, name in ((model.visual, torch.randn(1, 3, size, size), "visual.onnx"),
                                        (Textual(model).eval(), torch.zeros(1, 77, dtype=torch.long), "textual.onnx")):
                torch.onnx.export(module, (dummy,), str(target / name), input_names=["input"],
                                  output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                                  opset_version=18, dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    vocab = datadir / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
    vocab.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz", vocab)
    for name in RCLIP_LEGAL_FILES:      # rclip 4 downloads these from the hub unless they are present
        (datadir / name).write_text("Seeded random ViT-B-32 weights exported by benchmarks.peers.\n", encoding="utf-8")


def _probe_version(python: str, package: str) -> str | None:
    try:
        probe = subprocess.run([python, "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return probe.stdout.strip() if probe.returncode == 0 else None


def find_peer(peer: str, given: str | None) -> tuple[str | None, str]:
    """(python that imports the peer, its version) or (None, why it cannot run)."""
    env = {"rclip": "RCLIP_PYTHON", "rclip3": "RCLIP3_PYTHON", "clip_retrieval": "CLIP_RETRIEVAL_PYTHON"}[peer]
    package = "clip-retrieval" if peer == "clip_retrieval" else "rclip"
    candidates = [given, os.environ.get(env)]
    script = shutil.which("clip-retrieval" if peer == "clip_retrieval" else "rclip")
    if script and not given and not os.environ.get(env):
        with open(script, "rb") as fh:
            first = fh.readline().decode(errors="replace")
        if first.startswith("#!"):
            candidates.append(first[2:].strip().split()[0])
    wanted = {"rclip": "4.", "rclip3": "3.", "clip_retrieval": "2."}[peer]
    seen = []
    for python in filter(None, candidates):
        version = _probe_version(python, package)
        if version is None:
            seen.append(f"{python} does not import {package}")
        elif not version.startswith(wanted):
            seen.append(f"{package} {version} at {python}; this column drives {package} {wanted}x")
        else:
            return python, version
    return None, "; ".join(seen) or f"{package} not found (no --{peer.replace('_', '-')}-python, ${env} or script on PATH)"


# ---------------------------------------------------------------- the tools

class Ours:
    def __init__(self, weights: Path, cache: Path, model: str = f"open_clip:{ARCH}", env: dict | None = None):
        self.weights, self.model = weights, model
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), CLIP_RETRIEVAL_CACHE=str(cache), **(env or {}))

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "clip_retrieval", *args]

    def index(self, photos: Path, out: Path, update: bool = False) -> dict:
        cmd = self._cli("extract", "--images", str(photos), "--model", self.model,
                        "--checkpoint", str(self.weights), "--out", str(out), "--quiet",
                        "--rules", str(ROOT / "rules" / "expansions.yaml"), *(["--update"] if update else []))
        return run_measured(cmd, ROOT, self.env)

    def query(self, features: Path, text: str, env: dict | None = None) -> dict:
        cmd = self._cli("search", "--features", str(features), "-q", text, "-k", "10",
                        "--rules", str(ROOT / "rules" / "expansions.yaml"), "--quiet")
        return run_measured(cmd, ROOT, dict(self.env, **(env or {})))


class Rclip:
    """rclip 3 or 4: it indexes the current folder, then answers the query it was given (no index-only mode)."""

    def __init__(self, python: str, models: Path, image_size: int):
        self.python, self.models, self.image_size = python, models, image_size

    def _env(self, datadir: Path) -> dict:
        datadir.mkdir(parents=True, exist_ok=True)
        for name in (RCLIP_MODEL_SUBDIR, "tokenizer", *RCLIP_LEGAL_FILES):
            link = datadir / name
            if not link.exists():
                link.symlink_to(self.models / name, target_is_directory=(self.models / name).is_dir())
        return dict(os.environ, RCLIP_DATADIR=str(datadir), HF_HUB_OFFLINE="1")

    def index(self, photos: Path, state: Path) -> dict:
        cmd = [self.python, "-c", RCLIP_SHIM, str(self.image_size), "-f", "-t", "10", QUERY_OTHER]
        return run_measured(cmd, photos, self._env(state))

    def update(self, photos: Path, state: Path) -> dict:
        return self.index(photos, state)

    def query(self, photos: Path, state: Path, text: str) -> dict:
        cmd = [self.python, "-c", RCLIP_SHIM, str(self.image_size), "--no-indexing", "-f", "-t", "10", text]
        return run_measured(cmd, photos, self._env(state))

    def vectors(self, state: Path) -> tuple[list[str], np.ndarray]:
        """The image paths and vectors in its database (float32 blobs in SQLite)."""
        import sqlite3

        with contextlib.closing(sqlite3.connect(state / "db.sqlite3")) as db:
            rows = db.execute("SELECT filepath, vector FROM images WHERE deleted IS NOT 1").fetchall()
        return [r[0] for r in rows], np.stack([np.frombuffer(r[1], np.float32) for r in rows])


class ClipRetrieval:
    """``clip-retrieval inference`` over a folder of images, text off (the folder has no captions). It has no
    incremental mode: re-indexing is a full run.

    Its defaults are set for a GPU: batch 256, which it also encodes twice as a warm-up (512 images and
    512 texts, a minute of CPU before the first photo) and 4 reader processes. It gets our batch size
    (32) and one reader process per usable core instead, which only makes it faster.
    """

    def __init__(self, python: str, weights: Path):
        self.python = python
        self.model = f"open_clip:{ARCH}/{weights / 'open_clip_model.safetensors'}"

    def index(self, photos: Path, state: Path) -> dict:
        shutil.rmtree(state, ignore_errors=True)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        cmd = [self.python, "-c", CLIP_RETRIEVAL_SHIM, "inference", "--input_dataset", str(photos),
               "--output_folder", str(state), "--clip_model", self.model, "--enable_text", "False",
               "--batch_size", "32", "--num_prepro_workers", str(cores)]
        env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
        return run_measured(cmd, photos, env)

    def update(self, photos: Path, state: Path) -> dict:
        return self.index(photos, state)

    def query(self, photos: Path, state: Path, text: str) -> dict:
        raise Unsupported(NO_QUERY)

    def vectors(self, state: Path) -> tuple[list[str], np.ndarray]:
        """The image paths and vectors of its last run (its metadata is parquet, read in its own environment)."""
        script = ("import sys, json, pyarrow.parquet as pq; "
                  "print(json.dumps(pq.read_table(sys.argv[1]).column('image_path').to_pylist()))")
        done = subprocess.run([self.python, "-c", script, str(state / "metadata" / "metadata_0.parquet")],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        return json.loads(done.stdout), np.load(state / "img_emb" / "img_emb_0.npy").astype(np.float32)


class Unsupported(Exception):
    """A figure the peer has no command for (named with the reason, never left out silently)."""


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


# figure -> (our key, the peer key suffix): time and memory, lower is better for both
FIGURES = {
    "index_big": ("ours_index_big_s", "index_big_s"),
    "index_small": ("ours_index_small_s", "index_small_s"),
    "query_table": ("ours_query_table_s", "query_table_s"),
    "query_other": ("ours_query_other_s", "query_other_s"),
    "update": ("ours_update_s", "update_s"),
    "index_memory": ("ours_index_peak_mb", "index_peak_mb"),
    "query_memory": ("ours_query_peak_mb", "query_peak_mb"),
}


class PeerRun:
    """One peer in the run: measures what it can, remembers why it could not measure the rest."""

    def __init__(self, name: str, tool, version: str, res: dict, progress):
        self.name, self.tool, self.version, self.res, self.progress = name, tool, version, res, progress
        self.not_measured: dict[str, str] = {}
        self.failed: str | None = None

    def measure(self, figure: str, fn):
        """``fn()``'s result, or None with the reason kept (a peer's failure ends only that peer)."""
        if self.failed:
            self.not_measured[figure] = self.failed
            return None
        try:
            return fn()
        except Unsupported as exc:
            self.not_measured[figure] = str(exc)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            self.failed = f"failed while measuring {figure}: {str(exc).strip().splitlines()[-1][:300]}"
            self.not_measured[figure] = self.failed
            self.progress(f"{PEER_LABEL[self.name]} {self.failed}")
        return None


def run(sizes: dict, work: Path, pythons: dict, progress) -> dict:
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

    peers: dict[str, PeerRun] = {}
    if pythons.get("rclip") or pythons.get("rclip3"):
        progress("exporting the same weights for rclip (its convert recipe)")
        export_for_rclip(weights, work / "rclip_models")
    for name in PEERS:
        python, version = pythons.get(name), pythons.get(f"{name}_version")
        if not python:
            continue
        tool = (ClipRetrieval(python, weights) if name == "clip_retrieval"
                else Rclip(python, work / "rclip_models", _image_size(weights)))
        peer = peers[name] = PeerRun(name, tool, version, res, progress)
        progress(f"{PEER_LABEL[name]} {version}: its own first use")
        peer.measure("first_use", lambda: tool.index(one, work / f"{name}_first"))

    progress("fixed cost: indexing one photo")
    ours_one = best_of(sizes["repeats"], lambda: ours.index(one, work / f"out_one_{time.monotonic_ns()}"))
    res["ours_fixed_s"] = ours_one["wall_s"]
    for name, peer in peers.items():
        m = peer.measure("fixed", lambda: best_of(sizes["repeats"],
                                                  lambda: peer.tool.index(one, work / f"{name}_one_{time.monotonic_ns()}")))
        if m:
            res[f"{name}_fixed_s"] = m["wall_s"]

    for size, folder, count in (("big", big, sizes["big"]), ("small", small, sizes["small"])):
        progress(f"indexing {count} {size} photos")
        # the tools take turns, each run into a fresh folder; the median run of each counts
        runs: dict[str, list[dict]] = {"ours": [], **{name: [] for name in peers}}
        for i in range(sizes["index_repeats"]):
            runs["ours"].append(ours.index(folder, work / f"out_{size}" if i == 0 else work / f"out_{size}_{i}"))
            for name, peer in peers.items():
                m = peer.measure(f"index_{size}", lambda: peer.tool.index(folder, work / f"{name}_{size}_{i}"))
                if m:
                    runs[name].append(m)
        for tool, measured in runs.items():
            if not measured:
                continue
            m = median_run(measured)
            res.update({f"{tool}_index_{size}_s": m["wall_s"], f"{tool}_index_{size}_peak_mb": m["peak_mb"],
                        f"{tool}_index_{size}_cpu_s_per_image": m["cpu_s"] / count,
                        f"{tool}_index_{size}_images_per_s_excl_load":
                            count / max(m["wall_s"] - res.get(f"{tool}_fixed_s", 0), 1e-9)})
    for name, peer in peers.items():        # the same weights: the same vectors for the same photos
        if f"{name}_index_small_s" in res:
            res[f"{name}_cosine_to_ours"] = _same_vectors(peer.tool, work / f"{name}_small_0", work / "out_small")

    progress("one-shot queries in fresh processes")
    for key, text in (("table", QUERY_IN_TABLE), ("other", QUERY_OTHER)):
        o = best_of(sizes["repeats"], lambda: ours.query(work / "out_small", text))
        res.update({f"ours_query_{key}_s": o["wall_s"], f"ours_query_{key}_peak_mb": o["peak_mb"]})
        for name, peer in peers.items():
            r = peer.measure(f"query_{key}", lambda: best_of(sizes["repeats"],
                                                             lambda: peer.tool.query(small, work / f"{name}_small_0", text)))
            if r:
                res.update({f"{name}_query_{key}_s": r["wall_s"], f"{name}_query_{key}_peak_mb": r["peak_mb"]})
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
    for name, peer in peers.items():
        r = peer.measure("update", lambda: peer.tool.update(small, work / f"{name}_small_0"))
        if r:
            res.update({f"{name}_update_s": r["wall_s"], f"{name}_update_peak_mb": r["peak_mb"]})

    progress("Chinese-CLIP beside open_clip: one-shot queries")
    res.update(cn_clip_queries(sizes, work, one, progress))

    progress("decode-plus-model bound")
    res.update(extraction_bound(sizes, big_paths, weights, work / "cache"))

    for tool in ("ours", *peers):
        res[f"{tool}_index_peak_mb"] = max((res.get(f"{tool}_index_{s}_peak_mb") or 0 for s in ("big", "small")),
                                           default=0) or None
        res[f"{tool}_query_peak_mb"] = max((res.get(f"{tool}_query_{k}_peak_mb") or 0 for k in ("table", "other")),
                                           default=0) or None
    res["peers"] = {}
    for name in PEERS:
        if name not in peers:
            res["peers"][name] = {"version": None, "ran": False, "reason": pythons.get(f"{name}_why")}
            continue
        peer = peers[name]
        ratios = {f"{fig}_ratio": _ratio(res.get(f"{name}_{key}"), res.get(ours_key))
                  for fig, (ours_key, key) in FIGURES.items()}
        res["peers"][name] = {"version": peer.version, "ran": peer.failed is None, "reason": peer.failed,
                              "ratios": ratios, "not_measured": peer.not_measured}
    # the headline ratios: against the best peer for each figure (rclip 3 only when no newer peer has the figure)
    res["best_peer"] = {}
    for fig, (ours_key, key) in FIGURES.items():
        measured = {n: res[f"{n}_{key}"] for n in peers if res.get(f"{n}_{key}") and n != "rclip3"}
        if not measured and res.get(f"rclip3_{key}"):
            measured = {"rclip3": res[f"rclip3_{key}"]}
        best = min(measured, key=measured.get) if measured else None
        res[f"{fig}_ratio"] = _ratio(measured[best], res.get(ours_key)) if best else None
        res["best_peer"][fig] = best
    return res


def _same_vectors(tool, state: Path, ours_out: Path) -> float | None:
    """The lowest cosine between a peer's vector and ours for the same photo (the weights are the same)."""
    from clip_retrieval.features import store

    try:
        paths, theirs = tool.vectors(state)
    except (RuntimeError, OSError, ValueError, ImportError) as exc:
        log.warning("cannot read %s's vectors: %s", type(tool).__name__, exc)
        return None
    feats = store.load(ours_out, with_text=False)
    mine = {Path(e["path"]).name: v for e, v in zip(feats.manifest.images, np.asarray(feats.image_features))}
    pairs = [(mine[Path(p).name], t) for p, t in zip(paths, theirs) if Path(p).name in mine]
    if not pairs:
        return None
    a, b = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


CN_CLIP_QUICK = {   # a small Chinese-CLIP for --quick (the full run builds cn_clip:ViT-B-16's structure)
    "embed_dim": 64, "image_resolution": 64, "vision_layers": 2, "vision_width": 64, "vision_patch_size": 16,
    "vision_head_width": 32, "vocab_size": 21128, "text_attention_probs_dropout_prob": 0.0, "text_hidden_act": "gelu",
    "text_hidden_dropout_prob": 0.0, "text_hidden_size": 64, "text_initializer_range": 0.02,
    "text_intermediate_size": 128, "text_max_position_embeddings": 64, "text_num_attention_heads": 2,
    "text_num_hidden_layers": 2, "text_type_vocab_size": 2,
}


def cn_clip_queries(sizes: dict, work: Path, one: Path, progress) -> dict:
    """One-shot Chinese-CLIP queries in fresh processes: the ONNX path, and the torch path it replaced."""
    import torch

    from clip_retrieval.models.cnclip import build_model

    if sizes is QUICK:
        torch.manual_seed(0)
        model, info = build_model(CN_CLIP_QUICK), CN_CLIP_QUICK
    else:
        from cn_clip.clip import utils as cn_utils

        torch.manual_seed(0)
        model, info = cn_utils.create_model(cn_utils._MODEL_INFO["ViT-B-16"]["struct"]), None
    checkpoint = work / "cn_clip.pt"
    torch.save({"state_dict": model.state_dict(), **({"model_info": info} if info else {})}, checkpoint)
    del model
    ours = Ours(checkpoint, work / "cache", model="cn_clip:ViT-B-16")
    first = ours.index(one, work / "cn_out")
    res = {"ours_cn_clip_first_use_s": first["wall_s"],
           "cn_clip_model": "a small Chinese-CLIP (quick run)" if info else "the cn_clip:ViT-B-16 structure"}
    for key, text in (("table", QUERY_IN_TABLE), ("other", QUERY_OTHER), ("segmented", QUERY_SEGMENTED)):
        o = best_of(sizes["repeats"], lambda: ours.query(work / "cn_out", text))
        res.update({f"ours_cn_clip_query_{key}_s": o["wall_s"], f"ours_cn_clip_query_{key}_peak_mb": o["peak_mb"]})
    progress("the same Chinese-CLIP query on the torch runtime (the path before the export)")
    t = ours.query(work / "cn_out", QUERY_OTHER, env={"CLIP_RETRIEVAL_RUNTIME": "torch"})
    res.update({"ours_cn_clip_query_other_torch_s": t["wall_s"], "ours_cn_clip_query_other_torch_peak_mb": t["peak_mb"]})
    return res


def _image_size(weights: Path) -> int:
    cfg = json.loads((weights / "open_clip_config.json").read_text(encoding="utf-8"))["model_cfg"]
    return int(cfg["vision_cfg"]["image_size"])


ROWS = [
    ("index {big} JPEGs of {big_size}, process start to end (s)", "index_big_s", "index_big_ratio", "lower"),
    ("same, excluding fixed start-up and model load (img/s)", "index_big_images_per_s_excl_load", None, "higher"),
    ("index {small} JPEGs of {small_size}, end to end (s)", "index_small_s", "index_small_ratio", "lower"),
    ("same, excluding fixed start-up and model load (img/s)", "index_small_images_per_s_excl_load", None, "higher"),
    ("CPU seconds per small image", "index_small_cpu_s_per_image", None, "lower"),
    ("peak memory while indexing {big} photos, all processes (MB)", "index_big_peak_mb", None, "lower"),
    ("peak memory while indexing {small} photos, all processes (MB)", "index_small_peak_mb", None, "lower"),
    ("peak memory while indexing, either folder (MB)", "index_peak_mb", "index_memory_ratio", "lower"),
    ("one-shot query, phrase in the rules table (s)", "query_table_s", "query_table_ratio", "lower"),
    ("one-shot query, phrase not in the table (s)", "query_other_s", "query_other_ratio", "lower"),
    ("peak memory of a one-shot query (MB)", "query_peak_mb", "query_memory_ratio", "lower"),
    ("re-index after 1% of {small} files changed (s)", "update_s", "update_ratio", "lower"),
]


def print_table(res: dict, sizes: dict) -> None:
    fmt = {"big": sizes["big"], "small": sizes["small"], "big_size": "x".join(map(str, sizes["big_size"])),
           "small_size": "x".join(map(str, sizes["small_size"]))}
    ran = [n for n in PEERS if res["peers"][n].get("version")]
    shown = lambda v: "-" if v is None else f"{v:.3g}"
    head = " | ".join(f"{PEER_LABEL[n]} {res['peers'][n]['version']} | ours vs it" for n in ran)
    print(f"| measurement | ours | {head + ' | ' if head else ''}ours vs best peer (>1: we are better) |")
    print("|---|---|" + "---|---|" * len(ran) + "---|")
    for label, key, ratio_key, better in ROWS:
        o = res.get(f"ours_{key}")
        cells = []
        for n in ran:
            r = res.get(f"{n}_{key}")
            ratio = (o / r if better == "higher" else r / o) if o and r else None
            cells += [shown(r), shown(ratio)]
        best = res.get(ratio_key) if ratio_key else None
        print(f"| {label.format(**fmt)} | {shown(o)} | {' | '.join(cells) + ' | ' if cells else ''}{shown(best)} |")
    print()
    for n in PEERS:
        peer = res["peers"][n]
        if not peer.get("version"):
            print(f"{PEER_LABEL[n]}: not run: {peer['reason']}")
        else:
            for fig, why in peer.get("not_measured", {}).items():
                print(f"{PEER_LABEL[n]} {peer['version']}: {fig} not measured: {why}")
    for n in ran:
        if res.get(f"{n}_cosine_to_ours") is not None:
            print(f"same weights: lowest cosine between {PEER_LABEL[n]}'s image vector and ours, same photo: "
                  f"{res[f'{n}_cosine_to_ours']:.6f}")
    print(f"best peer per figure: {', '.join(f'{k} {PEER_LABEL.get(v, v)}' for k, v in res['best_peer'].items() if v)}")
    print(f"our first use of the model (ONNX export + rules table, once per weights): {res['ours_first_use_s']:.1f} s")
    print(f"fixed cost of one run (one photo): ours {res['ours_fixed_s']:.2f} s"
          + "".join(f", {PEER_LABEL[n]} {res[f'{n}_fixed_s']:.2f} s" for n in ran if f"{n}_fixed_s" in res))
    print(f"one-shot query holding a table word, segmented: ours {res['ours_query_segmented_s']:.2f} s")
    print(f"Chinese-CLIP ({res['cn_clip_model']}) one-shot query on ONNX Runtime: in the table "
          f"{res['ours_cn_clip_query_table_s']:.2f} s, not in it {res['ours_cn_clip_query_other_s']:.2f} s "
          f"({res['ours_cn_clip_query_other_peak_mb']:.0f} MB), segmented {res['ours_cn_clip_query_segmented_s']:.2f} s; "
          f"the same on torch {res['ours_cn_clip_query_other_torch_s']:.2f} s "
          f"({res['ours_cn_clip_query_other_torch_peak_mb']:.0f} MB); first use (export) "
          f"{res['ours_cn_clip_first_use_s']:.1f} s")
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
    parser.add_argument("--rclip-python", help="python of the environment where rclip 4.x is installed "
                                               "(default: $RCLIP_PYTHON, else the interpreter of `rclip` on PATH)")
    parser.add_argument("--rclip3-python", help="python of an environment with rclip 3.x, an extra column "
                                                "(default: $RCLIP3_PYTHON; none: no column)")
    parser.add_argument("--clip-retrieval-python", help="python of the environment where clip-retrieval 2.x is "
                                                        "installed (default: $CLIP_RETRIEVAL_PYTHON, else the "
                                                        "interpreter of `clip-retrieval` on PATH)")
    parser.add_argument("--keep", help="keep the photos, features and models in this folder (default: a temp folder)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    pythons: dict = {}
    given = {"rclip": args.rclip_python, "rclip3": args.rclip3_python, "clip_retrieval": args.clip_retrieval_python}
    for name in PEERS:
        python, what = find_peer(name, given[name])
        if python:
            pythons.update({name: python, f"{name}_version": what})
        else:
            pythons[f"{name}_why"] = f"{what}; install it in its own environment: {INSTALL[name]}"
            if name != "rclip3" or args.rclip3_python:
                print(f"benchmarks.peers: {PEER_LABEL[name]} not run: {pythons[f'{name}_why']}", file=sys.stderr)
    if not any(pythons.get(n) for n in PEERS):
        if not args.quick:
            print("benchmarks.peers: no peer to compare with", file=sys.stderr)
            return 2
        print("benchmarks.peers: quick run: measuring our side only", file=sys.stderr)

    def progress(step: str) -> None:
        print(f"... {step}", file=sys.stderr, flush=True)

    work_ctx = tempfile.TemporaryDirectory(prefix="clip_retrieval_peers_") if not args.keep else None
    work = Path(args.keep or work_ctx.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        res = run(sizes, work, pythons, progress)
        res["benchmark_s"] = time.perf_counter() - start
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()
    res.update({"quick": args.quick, "rclip_version": res["peers"]["rclip"]["version"],
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"})
    if args.json:
        print(json.dumps(res))
    else:
        print_table(res, sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
