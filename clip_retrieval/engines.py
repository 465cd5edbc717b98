"""Where extraction's image encoding runs: here, shard by shard, or in Ray tasks across a cluster.

One pipeline, several places to run it (as rom1504/clip-retrieval's distributors differ only in
where the runner runs): every engine plans the same shards (``shards.plan``), runs the same
per-shard function (``encode_shard``: ``extract.encode_images`` over the shard's files, then the
shard written atomically to the journal) and puts the results back together in plan order, so
the features saved are those of a single-machine run. A rerun after a crash, a Ctrl-C or a lost
node encodes only the shards the journal lacks.

Owns: the engine names, connecting to Ray (a running cluster by address or ``RAY_ADDRESS``,
else a local instance started and stopped here), how many Ray tasks run at once and with
which resources (one GPU each when the cluster has GPUs), and the encoder each Ray worker
opens (through ``models.open_encoder``, the factory every command uses). It must not
decide what goes into the manifest (``extract``) or know the features format (``store``).
Ray is imported only when the Ray engine runs.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import socket
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from tqdm import tqdm

from . import __version__
from .collection.dataset import DEFAULT_MAX_PIXELS
from .core.extras import require
from .core.errors import ClusterError, InputError, UserError
from .extract import encode_images, image_bar, read_texts, text_bar
from .features.shards import DEFAULT_SHARD_SIZE, Decoding, Shard, ShardJournal, ShardResult, assemble, plan

if TYPE_CHECKING:
    import numpy as np

    from .models import Encoder

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
# Ray retries a task whose worker or node died this many times (system failures only: a bad
# input raised by the task is not retried); the journal makes any retry cheap.
TASK_RETRIES = 4


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs to encode a shard exactly as this machine would (sent to each Ray task)."""

    model: str
    checkpoint: str | None
    device: str
    batch_size: int
    num_workers: int | None
    exact_decode: bool
    tool_version: str = __version__


def encode_shard(encoder: Encoder, shard: Shard, journal: ShardJournal, decoding: Decoding,
                 settings: WorkerSettings, bar: tqdm | None = None, node: str = "") -> ShardResult:
    """The one per-shard function every engine runs: encode the shard's files, then save the shard atomically."""
    feats, kept, hashes, skipped = encode_images(encoder, [Path(p) for p in shard.paths], settings.batch_size,
                                                 settings.num_workers, True, decoding.max_pixels,
                                                 settings.exact_decode, bar=bar)
    result = ShardResult(features=feats, kept=kept, hashes=hashes, skipped=skipped)
    journal.write(shard, result, decoding, node)
    return result


class Runner(Protocol):
    """Runs ``encode_shard`` for each shard somewhere; every shard is in the journal when it returns."""

    def run(self, encoder: Encoder, shards: Sequence[Shard], journal: ShardJournal, decoding: Decoding,
            settings: WorkerSettings, bar: tqdm, seen: Callable | None = None) -> None: ...


class InProcessRunner:
    """The shards in this process as one continuous pipeline, each saved the moment its last image is encoded.

    One ``encode_images`` call over all the shards' files keeps decoding ahead across shard
    boundaries (no restart per shard), so small shards cost a file write each and nothing more;
    an interrupted run keeps every shard finished before it."""

    def run(self, encoder: Encoder, shards: Sequence[Shard], journal: ShardJournal, decoding: Decoding,
            settings: WorkerSettings, bar: tqdm, seen: Callable | None = None) -> None:
        ends = list(itertools.accumulate(len(s.paths) for s in shards))
        place = [s.start + j for s in shards for j in range(len(s.paths))]   # this run's position -> the plan's
        saved = 0
        node = socket.gethostname()

        def save_finished(done: int, so_far: tuple) -> None:
            nonlocal saved
            feats, kept, hashes, skipped = so_far
            while saved < len(shards) and ends[saved] <= done:
                end = ends[saved]
                start = end - len(shards[saved].paths)
                mine = [(i - start, h, r) for i, h, r in sorted(skipped) if start <= i < end]
                journal.write(shards[saved], ShardResult(features=feats[start:end].copy(), kept=kept[start:end].copy(),
                                                         hashes=hashes[start:end], skipped=mine), decoding, node)
                saved += 1

        encode_images(encoder, [Path(p) for s in shards for p in s.paths], settings.batch_size,
                      settings.num_workers, True, decoding.max_pixels, settings.exact_decode, bar=bar,
                      after_batch=save_finished, seen=None if seen is None else (lambda i, img: seen(place[i], img)))

    def read_text(self, ocr, blocks: list[list[Path]], quiet: bool, max_pixels: int,
                  num_workers: int | None) -> tuple[list, list[str]]:
        return read_texts(ocr, [p for block in blocks for p in block], quiet, max_pixels, num_workers)


def _chunks(paths: list[Path], size: int) -> list[list[Path]]:
    return [paths[start:start + size] for start in range(0, len(paths), size)]


class ShardedEngine:
    """Plan, skip what the journal holds, run the rest through a runner, assemble; ``encode`` is ``encode_images``'s stand-in."""

    def __init__(self, out: str | os.PathLike, runner: Runner, shard_size: int | None, model: str,
                 checkpoint: str | None, device: str):
        self.journal = ShardJournal(out)
        self.runner = runner
        self.shard_size = shard_size
        self.model, self.checkpoint, self.device = model, checkpoint, device
        self.planned = self.resumed = 0

    def encode(self, encoder: Encoder, paths: list[Path], batch_size: int = 32, num_workers: int | None = None,
               quiet: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS, exact_decode: bool = False,
               seen: Callable | None = None) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[int, str, str]]]:
        """``seen(position in paths, picture)``: as ``encode_images``' (this process's runner only)."""
        decoding = Decoding(fingerprint=encoder.fingerprint, dim=encoder.dim,
                            image_size=None if exact_decode else encoder.image_size, max_pixels=max_pixels)
        size = self.shard_size or local_shard_size(len(paths), batch_size)
        shards = plan(paths, [p.stat() for p in paths], decoding, size)
        done = self.journal.finished(shards, decoding)
        todo = [s for s in shards if s.index not in done]
        self.planned, self.resumed = len(shards), len(done)
        if done:
            log.info("resuming: %d of %d shards already encoded in %s", len(done), len(shards), self.journal.folder)
        settings = WorkerSettings(self.model, self.checkpoint, self.device, batch_size, num_workers, exact_decode)
        with image_bar(len(paths), quiet, initial=sum(len(s.paths) for s in shards if s.index in done)) as bar:
            if todo:
                self.runner.run(encoder, todo, self.journal, decoding, settings, bar, seen)
        results = {s.index: self.journal.read(s, decoding) for s in shards}
        return assemble(shards, results, len(paths), decoding.dim)

    def read_text(self, ocr, paths: list[Path], quiet: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                  num_workers: int | None = None) -> tuple[list, list[str]]:
        """``extract.read_texts``' stand-in: the OCR of the images, in blocks of the shard size, where the
        runner runs (Ray tasks each open their own OCR engine). Not journaled: text is cheap to read again."""
        return self.runner.read_text(ocr, _chunks(paths, self.shard_size or DEFAULT_SHARD_SIZE), quiet, max_pixels,
                                     num_workers)

    def finish(self) -> None:
        """The features are saved: the journal has done its job."""
        self.journal.clear()

    def summary(self) -> dict:
        return {"planned": self.planned, "resumed": self.resumed} if self.planned else {}


def local_shard_size(images: int, batch_size: int) -> int:
    """The local engine's shard: about a hundredth of the run in whole batches, one batch to 1000 images.

    Small enough that a Ctrl-C loses at most a few batches, large enough that a million images
    make a thousand journal files, not a million."""
    batches = math.ceil(max(1, images) / 100 / max(1, batch_size))
    return max(batch_size, min(DEFAULT_SHARD_SIZE, batches * batch_size))


def make_engine(name: str, out: str | os.PathLike, model: str, checkpoint: str | None, device: str,
                shard_size: int | None = None, ray_address: str | None = None, workers: int | None = None,
                encoder_given: bool = False) -> ShardedEngine:
    """The engine a user named. Local extraction is sharded too (``local_shard_size`` unless ``shard_size``
    is given), so a rerun after a Ctrl-C or a crash encodes only what was not finished.

    Checked before anything is read or loaded, so a missing Ray or a bad option fails at once.
    """
    if name not in ENGINES:
        raise InputError(f"未知的引擎 {name!r} / unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
    if workers is not None and workers < 1:
        raise InputError(f"--workers 至少为 1 / --workers must be at least 1, got {workers}")
    if shard_size is not None and shard_size < 1:
        raise InputError(f"--shard-size 至少为 1 / --shard-size must be at least 1, got {shard_size}")
    if name == "local":
        if ray_address or workers is not None:
            raise InputError("--ray-address 和 --workers 只用于 --engine ray / --ray-address and --workers need "
                             "--engine ray")
        return ShardedEngine(out, InProcessRunner(), shard_size, model, checkpoint, device)
    require("ray")      # absent: the install hint, as for every optional library
    if encoder_given:
        raise InputError("Ray 引擎在每个工作进程里加载模型，请传 model= 和 checkpoint=，不要传 encoder= / the Ray engine "
                         "loads the model in each worker: pass model= and checkpoint=, not encoder=")
    return ShardedEngine(out, RayRunner(ray_address, workers), shard_size or DEFAULT_SHARD_SIZE, model,
                         checkpoint, device)


# ---------------------------------------------------------------------------------------
# Ray


class RayRunner:
    """Each shard a Ray task (retried by Ray when its worker or node dies), at most ``workers`` at a time."""

    def __init__(self, address: str | None, workers: int | None):
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.workers = workers

    def run(self, encoder: Encoder, shards: Sequence[Shard], journal: ShardJournal, decoding: Decoding,
            settings: WorkerSettings, bar: tqdm, seen: Callable | None = None) -> None:
        """``seen`` is not called: the pictures are decoded in the tasks, not here."""
        import ray
        from ray.exceptions import RayError, RayTaskError

        started = self._connect(ray)
        running: dict = {}
        try:
            gpus = int(ray.cluster_resources().get("GPU", 0))
            nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
            workers = self.workers or gpus or max(1, nodes)
            device = "cuda" if gpus else ("cpu" if settings.device == "auto" else settings.device)
            task = ray.remote(_encode_shard_task).options(
                num_cpus=1, num_gpus=1 if gpus else 0, scheduling_strategy="SPREAD", max_retries=TASK_RETRIES)
            worker_settings = WorkerSettings(**{**settings.__dict__, "device": device})
            log.info("Ray: %d workers on %d nodes (%d GPUs), %d shards", workers, nodes, gpus, len(shards))
            pending = deque(shards)
            out = str(journal.folder.parent)
            while pending or running:
                while pending and len(running) < workers:
                    shard = pending.popleft()
                    running[task.remote(shard, out, decoding, worker_settings)] = shard
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    shard = running.pop(ref)
                    try:
                        node = ray.get(ref)
                    except RayTaskError as exc:   # the task's own error: a UserError is the user's, as here
                        if isinstance(exc.cause, UserError):
                            raise exc.cause from None
                        raise
                    except RayError as exc:   # nodes or workers lost more often than Ray retries a task
                        raise ClusterError(
                            f"Ray 集群丢失了分片 {shard.index} 的任务 {TASK_RETRIES + 1} 次；已完成的分片保留，重新运行同一命令即可"
                            f"继续 / the Ray cluster lost the task of shard {shard.index} {TASK_RETRIES + 1} times "
                            f"({type(exc).__name__}); the {len(journal.finished(shards, decoding))} shards finished "
                            f"are kept in {journal.folder}: run the same command again to go on from there") from exc
                    if not journal.path_of(shard).is_file():
                        raise InputError(
                            f"节点 {node} 写入的分片在本机看不到：--out 必须在所有节点共享的文件系统上 / shard {shard.index} "
                            f"was written by node {node} but is not in {journal.folder} on this machine: --out must "
                            f"be a folder every node sees (a shared filesystem path)")
                    bar.update(len(shard.paths))
        except BaseException:
            for ref in running:   # Ctrl-C or a failure: stop the rest; the shards written stay for the rerun
                ray.cancel(ref, force=True)
            raise
        finally:
            if started:
                ray.shutdown()

    def read_text(self, ocr, blocks: list[list[Path]], quiet: bool, max_pixels: int,
                  num_workers: int | None) -> tuple[list, list[str]]:
        """Each block a Ray task (one CPU, retried like the encoding's), results back in order."""
        import ray

        started = self._connect(ray)
        lines: list = []
        reasons: list[str] = []
        try:
            task = ray.remote(_read_text_task).options(num_cpus=1, scheduling_strategy="SPREAD",
                                                       max_retries=TASK_RETRIES)
            refs = [task.remote([str(p) for p in block], max_pixels) for block in blocks]
            with text_bar(sum(map(len, blocks)), quiet) as bar:
                for ref, block in zip(refs, blocks):
                    block_lines, block_reasons = ray.get(ref)
                    lines += block_lines
                    reasons += block_reasons
                    bar.update(len(block))
        finally:
            if started:
                ray.shutdown()
        return lines, reasons

    def _connect(self, ray) -> bool:
        """Join the cluster at the address, else start a local Ray; True when this run must shut it down."""
        if ray.is_initialized():
            return False
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
        if self.address:
            try:
                ray.init(address=self.address, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise InputError(f"无法连接 Ray 集群 {self.address} / cannot join the Ray cluster at {self.address} "
                                 f"({exc}); start it with `ray start --head` on the head machine, or give "
                                 f"--ray-address HOST:PORT of a running one") from exc
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, **quiet)
        return True


@functools.lru_cache(maxsize=1)
def _worker_encoder(model: str, checkpoint: str | None, device: str) -> Encoder:
    """The encoder of this Ray worker process, opened once for all the shards it is given."""
    from .models import open_encoder

    return open_encoder(model, checkpoint, device)


def _encode_shard_task(shard: Shard, out: str, decoding: Decoding, settings: WorkerSettings) -> str:
    """A Ray task: open this node's encoder, check it is the driver's, encode and save the shard; returns the node."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    host = f"{socket.gethostname()} ({node[:12]})"
    if settings.tool_version != __version__:
        raise InputError(f"节点 {host} 上的 clip_retrieval 版本不同 / node {host} runs clip_retrieval {__version__}, "
                         f"the driver {settings.tool_version}: install the same version on every node")
    if shard.paths and not any(os.path.exists(p) for p in shard.paths):
        raise InputError(f"节点 {host} 看不到图片 / node {host} sees none of the images of shard {shard.index} "
                         f"(e.g. {shard.paths[0]}): images must be on a filesystem every node sees, "
                         f"at the same path")
    encoder = _worker_encoder(settings.model, settings.checkpoint, settings.device)
    if encoder.fingerprint != decoding.fingerprint:
        raise InputError(f"节点 {host} 上的模型权重不同 / node {host} loads {settings.model} with weights "
                         f"{encoder.fingerprint}, the driver {decoding.fingerprint}: give every node the same "
                         f"weights (--checkpoint on a shared path)")
    encode_shard(encoder, shard, ShardJournal(out), decoding, settings, node=host)
    return host


@functools.lru_cache(maxsize=1)
def _worker_ocr():
    """The OCR engine of this Ray worker process, opened once for all its blocks (one thread: one CPU a task)."""
    from .models.ocr import open_ocr

    return open_ocr(threads=1)


def _read_text_task(paths: list[str], max_pixels: int) -> tuple[list, list[str]]:
    """A Ray task: the OCR of one block of images, read on this node."""
    return read_texts(_worker_ocr(), [Path(p) for p in paths], True, max_pixels, 1)
