"""Finding weights on disk, and failing fast and clearly when they are not there.

Owns: where each family caches downloads, whether a download host answers, the
offline error message, and file fingerprints. It must not build models.

The upstream loaders retry for 25-45 s before giving up on an unreachable hub, so we
look in the cache first and probe the host with a short timeout before handing over.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..core.errors import ModelUnavailableError
from ..core.files import read_json_map, remember_in_json_map
from ..core.hashing import fingerprint, sha256_file
from ..core.paths import user_cache_dir

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
MODELSCOPE_URL = "https://modelscope.cn/models"


def hf_endpoint() -> str:
    """Where Hugging Face downloads go: ``HF_ENDPOINT`` (a mirror, common in mainland China) or huggingface.co.

    Read from huggingface_hub itself, so the probe, the download and the message name one host.
    """
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def hf_file_url(repo_id: str, filename: str) -> str:
    """The address huggingface_hub downloads ``repo_id/filename`` from (revision main)."""
    return f"{hf_endpoint()}/{repo_id}/resolve/main/{filename}"


def offline_switch() -> bool:
    """True when the user said not to use the network (our switch or huggingface_hub's)."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("CLIP_RETRIEVAL_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when the server at ``url`` answers an HTTP request within ``timeout`` seconds.

    An HTTP answer of any status counts; a refused connection, a port that accepts but never
    answers (a black-holing firewall), DNS failure or a TLS failure do not. Proxies from the
    environment are honoured, as huggingface_hub honours them.
    """
    if offline_switch():
        return False
    request = urllib.request.Request(url.rstrip("/") + "/", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError) as exc:  # URLError, timeouts, resets and bad addresses are all OSError
        log.debug("probe of %s failed: %s", url, exc)
        return False


@contextmanager
def hub_offline(enabled: bool = True) -> Iterator[None]:
    """huggingface_hub and transformers read only the cache inside this block (no request, no retry)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or enabled
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def unavailable(model: str, looked_in: list[str], host: str, fetch: list[str] | None = None,
                also: list[str] | None = None) -> ModelUnavailableError:
    """The offline message, in Chinese and English: where we looked, the host probed, what to fetch, the way out."""
    places = ", ".join(looked_in) or "-"
    files = "; ".join(fetch or []) or "-"
    mirrors = "; ".join(also or [])
    zh_also = f"该权重也发布在：{mirrors}。" if mirrors else ""
    en_also = f" The weights are also published at: {mirrors}." if mirrors else ""
    return ModelUnavailableError(
        f"无法加载模型 {model} 的权重：本地缓存中没有（查找位置：{places}），且无法连接 {host}。"
        f"需要下载：{files}。{zh_also}可将环境变量 HF_ENDPOINT 设为可访问的镜像站后重试；"
        f"离线使用：在能联网的机器上下载权重文件，复制过来后用 --checkpoint PATH 指定，"
        f"或使用内置离线模型 --model demo。 / "
        f"Cannot load weights for {model}: not in the local cache (looked in: {places}) and "
        f"{host} is unreachable. Files to fetch: {files}.{en_also} Set HF_ENDPOINT to a mirror you can reach "
        f"and retry; to work offline, download the weights file on a connected "
        f"machine, copy it here and pass --checkpoint PATH, or use the bundled offline model "
        f"--model demo."
    )


def download_failed(model: str, url: str, exc: BaseException) -> ModelUnavailableError:
    """A download that started and broke: what failed, that nothing half-written was kept, and the way out."""
    return ModelUnavailableError(
        f"下载 {model} 的权重时中断（{url}：{type(exc).__name__}: {exc}）。未完成的文件没有留在缓存中；"
        f"重新运行同一命令即可重新下载。网络不稳定时可把 HF_ENDPOINT 设为镜像站，"
        f"或在别处下载后用 --checkpoint PATH 指定。 / "
        f"Downloading weights for {model} broke off ({url}: {type(exc).__name__}: {exc}). No partial file was "
        f"kept in the cache; rerun the same command to download again. On a flaky network set HF_ENDPOINT to "
        f"a mirror, or download the file elsewhere and pass --checkpoint PATH."
    )


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a weights file, remembered by (path, size, mtime) so searches stay cheap."""
    path = Path(path).resolve()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        digest = hashlib.sha256()
        for p in files:
            digest.update(p.name.encode())
            digest.update(file_fingerprint(p).encode())
        return fingerprint(digest.hexdigest())
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = user_cache_dir("fingerprints.json")
    cached = read_json_map(cache_file).get(key)
    if cached:
        return cached
    value = fingerprint(sha256_file(path))
    remember_in_json_map(cache_file, key, value)
    return value
