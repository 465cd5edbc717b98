"""Finding weights on disk, and failing fast and clearly when they are not there.

Owns: where each family caches downloads, whether a download host answers, the
offline error message, and file fingerprints. It must not build models.

The upstream loaders retry for 25-45 s before giving up on an unreachable hub, so we
look in the cache first and probe the host with a short timeout before handing over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock

from ..errors import ModelUnavailableError
from ..hashing import sha256_file
from ..store import write_atomic

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
HF_HOST = "huggingface.co"


def host_reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to ``host`` opens within ``timeout`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("CLIP_RETRIEVAL_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def url_host(url: str) -> str:
    return urlparse(url).hostname or url


def unavailable(model: str, looked_in: list[str], host: str) -> ModelUnavailableError:
    """The offline message, in Chinese and English, with the way out."""
    places = ", ".join(looked_in)
    return ModelUnavailableError(
        f"无法加载模型 {model} 的权重：本地缓存中没有（查找位置：{places}），且无法连接 {host}。"
        f"离线使用：在能联网的机器上下载权重文件，复制过来后用 --checkpoint PATH 指定，"
        f"或使用内置离线模型 --model demo。 / "
        f"Cannot load weights for {model}: not in the local cache (looked in: {places}) and "
        f"{host} is unreachable. To work offline, download the weights file on a connected "
        f"machine, copy it here and pass --checkpoint PATH, or use the bundled offline model "
        f"--model demo."
    )


def user_cache_dir() -> Path:
    """The tool's own cache folder (weights fingerprints, the filtered dictionary); CLIP_RETRIEVAL_CACHE moves it."""
    root = os.environ.get("CLIP_RETRIEVAL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "clip_retrieval")
    return Path(root)


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a weights file, remembered by (path, size, mtime) so searches stay cheap."""
    path = Path(path).resolve()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        digest = hashlib.sha256()
        for p in files:
            digest.update(p.name.encode())
            digest.update(file_fingerprint(p).encode())
        return "sha256:" + digest.hexdigest()[:16]
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = user_cache_dir() / "fingerprints.json"
    cached: dict[str, str] = {}
    try:
        cached = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    if key in cached:
        return cached[key]
    value = "sha256:" + sha256_file(path)[:16]
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(cache_file) + ".lock", timeout=10):
            try:
                cached = json.loads(cache_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                cached = {}
            cached[key] = value
            write_atomic(cache_file, lambda tmp: tmp.write_text(json.dumps(cached), encoding="utf-8"))
    except OSError as exc:
        log.debug("fingerprint cache not written: %s", exc)
    return value
